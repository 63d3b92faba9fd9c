"""Fashion-MNIST images held in memory, as PIL grey images through a transform (the training datamodule's sets)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset


class FashionMNISTDataset(Dataset):
    """Selected images of one split as PIL grey images through ``transform``, labels remapped.

    Args:
        images: uint8 [N, 28, 28] (the whole split).
        labels: int64 [N].
        indices: the samples to keep (len M).
        label_map: original class -> training label.
        transform: applied to the PIL image (mode ``L``).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        indices: np.ndarray,
        label_map: dict[int, int],
        transform: Callable[[Any], Any] | None,
    ) -> None:
        self.images = images[indices]
        self.targets = np.asarray([label_map[int(c)] for c in labels[indices]], dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = Image.fromarray(self.images[index])  # uint8 [28, 28]: mode L
        return (self.transform(image) if self.transform is not None else image), int(self.targets[index])
