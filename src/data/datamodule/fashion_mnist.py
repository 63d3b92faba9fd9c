"""Fashion-MNIST datamodules: the real IDX files, CIFAR-10's splits and transforms adapted to 28×28 grey.

Reads torchvision's ``FashionMNIST`` on-disk format (``<data_dir>/FashionMNIST/raw/``, the original
IDX files; ``src/data/prepare/fashion_mnist_data.py`` installs them from Debian's ``dataset-fashion-mnist``).
Choices beside the CIFAR-10 datamodule they mirror:

- splits: the official 60,000 training images are split by ``val_split`` (0.2 → 48,000 / 12,000)
  with the run seed, exactly as CIFAR's 50,000; the official 10,000 test images are the test set.
- channels: the grey images are expanded to three equal channels (``ToRGB``, the first step of
  every transform) and normalised with the grey statistics of the training set replicated per
  channel. The CIFAR ResNet stem (3×3 conv, no max-pool; ``src/model/encoder.py``) and every OOD
  preprocessor then apply unchanged; the cost is the first convolution's three input channels.
- size: ``input_height`` 28, the native size (the CIFAR stem keeps 28 → 28 → 14 → 7 → 4 maps).
- SSL views: ``fashion_mnist_ssl_transform`` (CIFAR's, with ``crop_min_scale`` 0.2 instead of 0.08
  and the colour-only steps dropped; see its docstring). Supervised / finetune transforms: CIFAR's.
- subsets and classes: ``train_per_class`` / ``test_per_class`` keep a seeded per-class subset
  (seed ``subset_seed``, the same draw as the OOD lists of ``prepare_ood_protocols``), and
  ``classes`` keeps only those classes, relabelled 0..K-1 in the order given
  (``dataset=fashion_mnist_split`` trains on classes 0–5, the open-set split's ID classes).
- ``augment_on_device`` (true, false, or "auto" = on when CUDA is available; the config's default auto,
  the constructor's false), as CIFAR:
  for the ssl task type the splits become uint8 ``TensorDataset``s of the grey images
  (``[N, 1, 28, 28]``, the same subsets, labels and split indices), the loaders keep them resident on
  the training device (``DeviceBatchLoader``), and ``DeviceSSLAugment`` with ``fashion_mnist_views``
  makes the three views there (grey expanded to three channels first, as ``ToRGB``; the parameter
  distributions of ``fashion_mnist_ssl_transform``). On a machine without CUDA "auto" is the CPU path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from src.data.augment.device_views import DeviceSSLAugment, fashion_mnist_views
from src.data.augment.transforms import fashion_mnist_ssl_transform
from src.data.datamodule.base import (
    DATAMODULES,
    BaseDataModule,
    check_compile_augment,
    resolve_augment_on_device,
    split_train_val,
)
from src.data.dataset.fashion_mnist_images import FashionMNISTDataset
from src.data.prepare.fashion_mnist_data import CLASSES, NORMALIZE, install_raw, load_split, subset_indices, verify_raw


def optional_count(value: Any, key: str) -> int | None:
    """``value`` as a positive int, or None for "all" (None, or the strings null / none / all).

    DVC renders a ``null`` param as ``None`` on the command line, which Hydra reads as a string;
    both spellings mean "all" here.

    Raises:
        ValueError: anything else (the message names ``key``).
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none", "all")):
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key}={value!r} must be a positive integer, or null for all images")
    return int(value)


@DATAMODULES.register("fashion_mnist")
@DATAMODULES.register("fashion_mnist_split")
class FashionMNISTDataModule(BaseDataModule):
    """Fashion-MNIST: 28×28 grey expanded to RGB, 10 classes (or ``classes``), torchvision label order.

    Constructor arguments are those of ``BaseDataModule``, plus:

    Args:
        classes: original class ids to keep, relabelled 0..K-1 in this order; None keeps all ten.
        train_per_class: images per class kept from the training set (None: all 6,000).
        test_per_class: images per class kept from the test set (None: all 1,000).
        subset_seed: seed of the per-class subsets (the data seed, not the run seed).
        crop_min_scale: lower area scale of the SSL views' RandomResizedCrop.
        source_dir: a folder with the four original files to install from (default: Debian's).
        augment_on_device: true, false or "auto" (see the module docstring).
        compile_augment: ``torch.compile`` the device views' ops (see ``DeviceSSLAugment``).

    With ``download=True`` a missing dataset may also be fetched by torchvision.

    Raises:
        ValueError: ``classes`` is empty, repeats a class or names one outside 0–9, or
            ``augment_on_device`` is not true, false or "auto".
    """

    display_name = "Fashion-MNIST"
    mean = NORMALIZE["mean"]
    std = NORMALIZE["std"]

    def __init__(
        self,
        *args: Any,
        classes: Sequence[int] | None = None,
        train_per_class: int | None = None,
        test_per_class: int | None = None,
        subset_seed: int = 1997,
        crop_min_scale: float = 0.2,
        source_dir: str | None = None,
        augment_on_device: bool | str = False,
        compile_augment: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("input_height", 28)
        super().__init__(*args, **kwargs)
        chosen = tuple(range(len(CLASSES))) if classes is None else tuple(int(c) for c in classes)
        if not chosen or len(set(chosen)) != len(chosen) or not all(0 <= c < len(CLASSES) for c in chosen):
            raise ValueError(
                f"dataset.classes={list(classes) if classes is not None else classes!r} must list distinct class "
                f"ids in 0..9 ({', '.join(f'{i}: {n}' for i, n in enumerate(CLASSES))}), or be null for all ten"
            )
        self.classes = chosen
        self.train_per_class = optional_count(train_per_class, "dataset.train_per_class")
        self.test_per_class = optional_count(test_per_class, "dataset.test_per_class")
        self.subset_seed = int(subset_seed)
        self.crop_min_scale = float(crop_min_scale)
        self.source_dir = source_dir
        # Only the ssl task type has the 3-view transform that moves; the others keep their CPU transforms.
        self.augment_on_device = resolve_augment_on_device(augment_on_device) and self.task_type == "ssl"
        if self.augment_on_device:
            view1, view2 = fashion_mnist_views(self.crop_min_scale)
            compiled = check_compile_augment(compile_augment)
            self.device_augment = DeviceSSLAugment(self.input_height, self.mean, self.std, view1, view2, compiled)

    def get_transform(self, stage: str) -> Callable[[Any], Any]:
        if self.task_type == "ssl":
            return fashion_mnist_ssl_transform(self.input_height, self.mean, self.std, self.crop_min_scale)
        return super().get_transform(stage)

    def prepare_data(self) -> None:
        """Install the raw files from Debian's package (or ``source_dir``, or a download when allowed).

        Raises:
            FileNotFoundError: no source holds the files; the message says how to obtain them.
        """
        try:
            verify_raw(self.data_dir)
        except (FileNotFoundError, ValueError):
            install_raw(self.data_dir, self.source_dir, self.download)

    def _dataset(
        self, train: bool, per_class: int | None, transform: Callable[[Any], Any] | None
    ) -> FashionMNISTDataset:
        images, labels = load_split(self.data_dir, train)
        indices = subset_indices(labels, self.classes, per_class, self.subset_seed)
        label_map = {c: i for i, c in enumerate(self.classes)}
        return FashionMNISTDataset(images, labels, indices, label_map, transform)

    def _uint8_dataset(self, train: bool, per_class: int | None) -> TensorDataset:
        """The kept images as uint8 [M, 1, 28, 28] and their training labels (int64), in the order of
        ``_dataset`` (the same subset and relabelling, so the same split indices select the same images)."""
        dataset = self._dataset(train, per_class, None)
        images = torch.from_numpy(np.ascontiguousarray(dataset.images)).unsqueeze(1)
        return TensorDataset(images, torch.from_numpy(dataset.targets))

    def setup(self, stage: str | None = None) -> None:
        """fit / validate / None: the seeded train/val split; test / None: the official test set.

        With ``augment_on_device`` the splits are uint8 ``TensorDataset``s with the same indices.
        """
        self.prepare_data()
        if self.augment_on_device:
            if stage in (None, "fit", "validate"):
                full = self._uint8_dataset(True, self.train_per_class)
                self.train_ds, self.val_ds = split_train_val(full, full, self.val_split, self.seed)
            if stage in (None, "test"):
                self.test_ds = self._uint8_dataset(False, self.test_per_class)
            return
        if stage in (None, "fit", "validate"):
            train_full = self._dataset(True, self.train_per_class, self.transform("train"))
            val_full = self._dataset(True, self.train_per_class, self.transform("val"))
            self.train_ds, self.val_ds = split_train_val(train_full, val_full, self.val_split, self.seed)
        if stage in (None, "test"):
            self.test_ds = self._dataset(False, self.test_per_class, self.transform("test"))
