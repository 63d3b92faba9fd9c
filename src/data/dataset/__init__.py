"""Datasets that read images from disk: OpenOOD-style image lists, and the RGB image loader."""

from src.data.dataset.image_file import ImageDecodeError, load_rgb_image
from src.data.dataset.imglist import ImageListDataset, ImageListError, read_image_list, write_image_list

__all__ = [
    "ImageDecodeError",
    "ImageListDataset",
    "ImageListError",
    "load_rgb_image",
    "read_image_list",
    "write_image_list",
]
