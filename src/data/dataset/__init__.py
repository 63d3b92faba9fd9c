"""Datasets read from disk: OpenOOD-style image lists, RGB image files, the official splits of the
transfer datasets, embedding files, and Fashion-MNIST images held in memory."""

from src.data.dataset.embeddings import EMBEDDING_SPLITS, EmbeddingWriter, load_embeddings, save_embeddings
from src.data.dataset.fashion_mnist_images import FashionMNISTDataset
from src.data.dataset.image_file import ImageDecodeError, load_rgb_image
from src.data.dataset.imglist import ImageListDataset, ImageListError, read_image_list, write_image_list
from src.data.dataset.transfer_splits import Flowers102Split, SUN397Split

__all__ = [
    "EMBEDDING_SPLITS",
    "EmbeddingWriter",
    "FashionMNISTDataset",
    "Flowers102Split",
    "ImageDecodeError",
    "ImageListDataset",
    "ImageListError",
    "SUN397Split",
    "load_embeddings",
    "load_rgb_image",
    "read_image_list",
    "save_embeddings",
    "write_image_list",
]
