"""CIFAR-10 / CIFAR-100 datamodules.

The data is torchvision's on-disk format: ``<data_dir>/cifar-10-batches-py/`` (``data_batch_1`` …
``data_batch_5``, ``test_batch``, ``batches.meta``) or ``<data_dir>/cifar-100-python/`` (``train``,
``test``, ``meta``). Unlike the reference, nothing is downloaded unless ``download=true`` is
set; without it, missing files raise a ``FileNotFoundError`` that names what to put where.

Splits: the official 50,000 training images are split by ``val_split`` (0.2 → 40,000 / 10,000)
with the run seed (``split_train_val``); the official 10,000 test images are the test set.

``augment_on_device`` (true, false, or "auto" = on when CUDA is available; the configs' default is
auto, the constructor's false, so code that builds a datamodule directly chooses the path) moves
the 3-view SSL transform of the ssl task type to the training device: the train, val and test
sets become in-memory uint8 ``TensorDataset``s (``[N, 3, 32, 32]`` images, int64 labels, the same
split indices), the loaders (``DeviceBatchLoader``: the split resident on the device, batches by
on-device index sampling) yield ``[X_uint8, Y]``, and the base class's
``on_after_batch_transfer`` hook makes ``[[V1, V2, V3], Y]`` from them with
``DeviceSSLAugment`` (same parameter distributions as ``cifar_ssl_transform``; see
``src/data/augment/device_views.py``). On a machine without CUDA "auto" is the CPU path. All three splits move because on the CPU path all three use the
3-view transform: the SSL val loss and the online/offline finetuners' val and test
accuracies then see the same views as training. Other task types ignore the option.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset
from torchvision.datasets import CIFAR10, CIFAR100

from src.data.augment.device_views import DeviceSSLAugment
from src.data.augment.transforms import CIFAR10_NORMALIZE, CIFAR100_NORMALIZE
from src.data.datamodule.base import (
    DATAMODULES,
    BaseDataModule,
    check_compile_augment,
    resolve_augment_on_device,
    split_train_val,
)


@DATAMODULES.register("cifar10")
class CIFAR10DataModule(BaseDataModule):
    """CIFAR-10: 32×32 RGB, 10 classes (torchvision label order).

    Constructor arguments are those of ``BaseDataModule``, plus ``augment_on_device`` (bool or
    "auto"; see the module docstring) and ``compile_augment`` (``torch.compile`` the device views'
    ops; see ``DeviceSSLAugment``). With ``download=True``, ``prepare_data`` lets torchvision
    fetch and extract the archive when the files are missing or corrupt; otherwise the files
    must already be on disk.

    Raises:
        ValueError: ``augment_on_device`` is not true, false or "auto".
    """

    dataset_cls: type[CIFAR10] = CIFAR10
    display_name = "CIFAR-10"
    mean = CIFAR10_NORMALIZE["mean"]
    std = CIFAR10_NORMALIZE["std"]

    def __init__(
        self, *args: Any, augment_on_device: bool | str = False, compile_augment: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        # Only the ssl task type has the 3-view transform that moves; the others keep their CPU transforms.
        self.augment_on_device = resolve_augment_on_device(augment_on_device) and self.task_type == "ssl"
        if self.augment_on_device:
            self.device_augment = DeviceSSLAugment(
                self.input_height, self.mean, self.std, compiled=check_compile_augment(compile_augment)
            )

    @property
    def dataset_folder(self) -> Path:
        """``<data_dir>/<torchvision base folder>``, e.g. ``data/datasets/cifar10/cifar-10-batches-py``."""
        return self.data_dir / self.dataset_cls.base_folder

    def required_files(self) -> list[str]:
        """File names torchvision reads inside ``dataset_folder`` (train batches, test batch, meta)."""
        names = [name for name, _md5 in self.dataset_cls.train_list + self.dataset_cls.test_list]
        return [*names, self.dataset_cls.meta["filename"]]

    def _how_to_obtain(self) -> str:
        cls = self.dataset_cls
        return (
            f"To obtain it, rerun with dataset.download=true on a machine with network access (torchvision "
            f"fetches {cls.url}), or download {cls.filename} elsewhere and extract it into {self.data_dir}."
        )

    def prepare_data(self) -> None:
        """Download if allowed; otherwise check that every file is present.

        Raises:
            FileNotFoundError: files are missing and ``download`` is False.
        """
        if self.download:
            # torchvision skips the download when the files pass its md5 check.
            for train in (True, False):
                self.dataset_cls(str(self.data_dir), train=train, download=True)
            return
        missing = [name for name in self.required_files() if not (self.dataset_folder / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{self.display_name} not found at {self.dataset_folder}: missing {', '.join(missing)}. "
                f"Expected layout (torchvision format, the extracted {self.dataset_cls.filename}): "
                f"{self.dataset_folder}/{{{', '.join(self.required_files())}}}. " + self._how_to_obtain()
            )

    def _dataset(self, train: bool, transform: Callable[[Any], Any] | None) -> CIFAR10:
        try:
            return self.dataset_cls(str(self.data_dir), train=train, transform=transform, download=False)
        except RuntimeError as err:
            # torchvision's message ("not found or corrupted") says neither where nor which check failed.
            raise RuntimeError(
                f"{self.display_name} files in {self.dataset_folder} failed torchvision's md5 check "
                f"({err}). Replace them with a fresh extraction of {self.dataset_cls.filename}. "
                + self._how_to_obtain()
            ) from err

    def _uint8_dataset(self, train: bool) -> TensorDataset:
        """The split as uint8 images [N, 3, H, W] (torchvision's HWC array, channels first) and int64 labels."""
        dataset = self._dataset(train, None)
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
        return TensorDataset(images, torch.as_tensor(dataset.targets, dtype=torch.int64))

    def setup(self, stage: str | None = None) -> None:
        """fit / validate / None: the seeded train/val split; test / None: the official test set.

        ``prepare_data`` runs first, every time, as in the reference (D-Q21). With
        ``augment_on_device`` the splits are uint8 ``TensorDataset``s with the same indices.
        """
        self.prepare_data()
        if self.augment_on_device:
            if stage in (None, "fit", "validate"):
                full = self._uint8_dataset(True)
                self.train_ds, self.val_ds = split_train_val(full, full, self.val_split, self.seed)
            if stage in (None, "test"):
                self.test_ds = self._uint8_dataset(False)
            return
        if stage in (None, "fit", "validate"):
            # Two copies of the 50k set, one per transform, split with the same seed (disjoint indices).
            train_full = self._dataset(True, self.transform("train"))
            val_full = self._dataset(True, self.transform("val"))
            self.train_ds, self.val_ds = split_train_val(train_full, val_full, self.val_split, self.seed)
        if stage in (None, "test"):
            self.test_ds = self._dataset(False, self.transform("test"))


@DATAMODULES.register("cifar100")
class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 with its 100 fine labels; the same splits as CIFAR-10 (no config uses it in the paper)."""

    dataset_cls: type[CIFAR10] = CIFAR100
    display_name = "CIFAR-100"
    mean = CIFAR100_NORMALIZE["mean"]
    std = CIFAR100_NORMALIZE["std"]
