"""Datasets that read images from disk: OpenOOD-style image lists."""

from src.data.dataset.imglist import ImageListDataset, ImageListError, read_image_list, write_image_list

__all__ = ["ImageListDataset", "ImageListError", "read_image_list", "write_image_list"]
