"""Batches of a uint8 split resident on the training device, made by on-device index sampling.

With ``augment_on_device`` the SSL views are computed on the accelerator from uint8 images
(``src/data/augment/device_views.py``). ``DeviceBatchLoader`` feeds them without a DataLoader: the
split's images ``[N, C, H, W]`` (uint8) and labels ``[N]`` (int64) are moved to the device once,
and each batch is an ``index_select`` of a permutation drawn on the device. There are no per-sample
``__getitem__`` calls, no collation, no workers and no host-to-device copy per batch.

Semantics, those of ``DataLoader(dataset, batch_size, shuffle, drop_last)`` over the same samples:

- every sample is yielded exactly once per epoch (the last ``N mod B`` dropped with ``drop_last``);
- ``len(loader)`` is ``N // B`` with ``drop_last``, else ``ceil(N / B)`` (Lightning reads it for
  its progress display and ``limit_*_batches``);
- with ``shuffle`` the order is ``randperm(N)`` drawn from a generator on the device seeded by
  ``(seed, epoch)``: the same seed and epoch give the same order, whatever ran before (a resumed run
  continues with the orders of an uninterrupted one). Without ``shuffle`` the order is 0..N-1.

The epoch is the one Lightning passes to ``set_epoch`` (through ``loader.sampler``, as it does for a
DataLoader's sampler) before each epoch; without such a call each new iteration takes the next epoch.

The shuffle stream is not the CPU path's (``RandomSampler`` draws from torch's global generator),
so one seed gives another, equally distributed, order (docs/deviations.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed for ``(seed, epoch)``: distinct pairs give unrelated seeds (NumPy's
    ``SeedSequence`` hashing), so run seed s at epoch e+1 does not repeat run seed s+1 at epoch e."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch)]).generate_state(2, np.uint64)[0] >> 1)


class DeviceBatchLoader:
    """An iterable of ``[images_uint8, labels]`` batches sampled on the device (see the module docstring).

    Args:
        images: uint8 [N, C, H, W] (any device; moved to the loader's device on first use).
        labels: int64 [N].
        batch_size: B.
        shuffle: a new seeded permutation per epoch; False keeps the order 0..N-1.
        drop_last: drop the last incomplete batch.
        seed: the run seed (the permutations' seed together with the epoch).
        device: the device, or a callable returning it at the first iteration (the datamodule's
            training device, known only once a Trainer is attached).

    Raises:
        ValueError: images and labels differ in length, images are not uint8 [N, C, H, W], or B < 1.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        seed: int,
        device: torch.device | str | Callable[[], torch.device] = "cpu",
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"DeviceBatchLoader needs uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"DeviceBatchLoader: {images.shape[0]} images but labels of shape {tuple(labels.shape)}")
        if batch_size < 1:
            raise ValueError(f"DeviceBatchLoader: batch_size must be positive, got {batch_size}")
        self.images = images
        self.labels = labels
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self._device = device
        self._next_epoch = 0

    #: no batch sampler: Lightning's checks of a loader's sampler then read ``sampler``
    batch_sampler = None

    @property
    def sampler(self) -> DeviceBatchLoader:
        """The loader itself: Lightning calls ``loader.sampler.set_epoch(epoch)`` before every epoch."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """The epoch of the next iteration (its permutation's seed)."""
        self._next_epoch = int(epoch)

    @property
    def device(self) -> torch.device:
        return torch.device(self._device() if callable(self._device) else self._device)

    def __len__(self) -> int:
        n = self.images.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _on_device(self) -> tuple[Tensor, Tensor]:
        """Images and labels on the loader's device: copied there once, then kept."""
        device = self.device
        if self.images.device != device:
            self.images = self.images.to(device)
            self.labels = self.labels.to(device)
        return self.images, self.labels

    def order(self, epoch: int) -> Tensor | None:
        """The epoch's permutation of 0..N-1 on the device (int64), or None without ``shuffle``."""
        if not self.shuffle:
            return None
        device = self.device
        generator = torch.Generator(device=device).manual_seed(epoch_seed(self.seed, epoch))
        return torch.randperm(self.images.shape[0], generator=generator, device=device)

    def __iter__(self) -> Iterator[list[Tensor]]:
        epoch, self._next_epoch = self._next_epoch, self._next_epoch + 1
        images, labels = self._on_device()
        order = self.order(epoch)
        n, b = images.shape[0], self.batch_size
        for i in range(len(self)):
            start, stop = i * b, min((i + 1) * b, n)
            if order is None:  # a contiguous slice: a view, no copy
                yield [images[start:stop], labels[start:stop]]
            else:
                index = order[start:stop]
                yield [images.index_select(0, index), labels.index_select(0, index)]
