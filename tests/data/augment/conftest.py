"""Helpers of the augmentation tests: image-like uint8 batches, PIL round trips, one intra-op thread."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import functional as TF


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """One intra-op thread (as tests/downstream): these small batches gain nothing from two, and a busy
    second core makes two-thread OpenMP kernels an order of magnitude slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def uint8_images(n: int, size: int = 32, seed: int = 0) -> Tensor:
    """Smooth colour gradients with texture and noise, uint8 [n, 3, size, size] (image-like statistics)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    images = []
    for _ in range(n):
        c = torch.rand(3, 4, generator=g)[..., None, None]
        img = c[:, 0] + c[:, 1] * xx + c[:, 2] * yy + 0.3 * torch.sin(6.28 * (3 * c[:, 3] + 1) * xx * yy)
        img = img + 0.1 * torch.randn(3, size, size, generator=g)
        img = (img - img.amin()) / (img.amax() - img.amin())
        images.append((img * 255).round().to(torch.uint8))
    return torch.stack(images)


def to_pil(x: Tensor) -> Image.Image:
    return Image.fromarray(x.permute(1, 2, 0).numpy())


def from_pil(image: Image.Image) -> Tensor:
    """PIL RGB → float [3, H, W] in [0, 1] (ToTensor)."""
    return TF.to_tensor(image)


def per_sample(fn: Any, x: Tensor, *args: Tensor) -> Tensor:
    """Apply a torchvision single-image op with the sample's own scalar arguments."""
    return torch.stack([fn(x[b], *[a[b].tolist() for a in args]) for b in range(x.shape[0])])
