"""The base of the training datamodules: task types, loaders, the train/val split.

A datamodule is built from the ``dataset`` config node: every key but ``_target_`` is a
constructor argument, and keys a datamodule does not use (``name``, ``num_classes``,
``flatten_dim``, ``subset``, and ``resize_height`` outside the ImageNet family) are accepted
and ignored (D-Q23).

Batches (PyTorch default collate), for a batch size B and image side H:

- ssl task type: ``[[V1, V2, V3], Y]``, each Vi float32 (B, 3, H, H), Y int64 (B,); V1/V2 are
  augmented views, V3 the un-augmented finetune view.
- every other task type: ``[X, Y]``, X float32 (B, 3, H, H), Y int64 (B,).

A datamodule that sets ``device_augment`` (CIFAR and Fashion-MNIST with ``augment_on_device``) has
loaders that yield ``[X_uint8, Y]``; its ``on_after_batch_transfer`` hook turns them into the ssl layout
above on the training device (``src/data/augment/device_views.py``). Its splits are uint8 tensors, and
its loaders are ``DeviceBatchLoader``s: the split resident on the training device, batches by on-device
index sampling (``src/data/datamodule/device_loader.py``); a multi-device run keeps DataLoaders.

Views a phase does not read are not built: ``read_views((2,))`` (the offline finetune, which reads
only V3) leaves V1 and V2 out of the batches, as None in the layout, when ``skip_unread_views`` allows
it (see ``BaseDataModule``).
"""

from __future__ import annotations

import abc
import logging
import numbers
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset, random_split
from torchvision import transforms as T

from src.data.augment.transforms import MultiViewTransform, SupervisedTransform, cifar_ssl_transform
from src.data.datamodule.device_loader import DeviceBatchLoader
from src.utils.registry import Registry

if TYPE_CHECKING:
    from src.data.augment.device_views import DeviceSSLAugment

log = logging.getLogger(__name__)

#: the positions of the three SSL views in ``[[V1, V2, V3], Y]``
ALL_VIEWS: tuple[int, int, int] = (0, 1, 2)

# Config task name (`dataset.task`, i.e. `train.name`) -> task type; the type picks the transforms.
TASK_TYPES: dict[str, str] = {
    "ssl": "ssl",
    "ssl_bayes_h": "ssl",
    "ssl_bayes_z": "ssl",
    "ssl_bayes_h_and_z": "ssl",
    "ssl_bayes_hierarchical": "ssl",
    "supervised": "supervised",
    "semi_supervised": "semi_supervised",
    "linear_classification": "linear_classification",
}


def task_type(task: str) -> str:
    """The task type (ssl, supervised, semi_supervised, linear_classification) of config task ``task``.

    Raises:
        ValueError: ``task`` is not a known task name.
    """
    if task not in TASK_TYPES:
        raise ValueError(f"dataset.task={task!r} is not a known task; use one of {sorted(TASK_TYPES)}")
    return TASK_TYPES[task]


def split_train_val(
    train_source: Dataset[Any], val_source: Dataset[Any], val_split: int | float, seed: int
) -> tuple[Subset[Any], Subset[Any]]:
    """Split N samples into train and val: train from ``train_source``, val from ``val_source``.

    Both sources must hold the same N samples (in practice the same dataset built with the
    train and with the val transform). Each is passed to ``random_split`` with a generator
    seeded by ``seed``, so both see the same ``randperm(N)``: the first ``train_len`` permuted
    indices form train (taken from ``train_source``) and the rest form val (from
    ``val_source``), two disjoint index sets.

    Args:
        train_source, val_source: datasets of equal length N.
        val_split: an int is the absolute val size; a float f gives ``int(f * N)``.
        seed: split seed (the run seed, so the partition changes with it).

    Returns:
        (train subset of length N - val_len, val subset of length val_len).

    Raises:
        TypeError: ``val_split`` is neither an int nor a float.
        ValueError: the sources differ in length, or the val size is outside [0, N].
    """
    n = len(train_source)  # type: ignore[arg-type]
    if len(val_source) != n:  # type: ignore[arg-type]
        raise ValueError(f"train and val sources must have the same length, got {n} and {len(val_source)}")  # type: ignore[arg-type]
    # bool is an int subclass; `val_split: true` is a config mistake, not a count of 1.
    if isinstance(val_split, bool) or not isinstance(val_split, numbers.Real):
        raise TypeError(
            f"dataset.val_split must be an int (absolute count) or a float (fraction), got {val_split!r} "
            f"of type {type(val_split).__name__}"
        )
    val_len = int(val_split) if isinstance(val_split, numbers.Integral) else int(val_split * n)
    if not 0 <= val_len <= n:
        raise ValueError(f"dataset.val_split={val_split!r} gives {val_len} val samples, outside [0, {n}]")
    lengths = [n - val_len, val_len]
    train_ds, _ = random_split(train_source, lengths, generator=torch.Generator().manual_seed(seed))
    _, val_ds = random_split(val_source, lengths, generator=torch.Generator().manual_seed(seed))
    return train_ds, val_ds


def _true_false_auto(value: bool | str, key: str) -> bool | None:
    """True, False, or None for "auto"; anything else is an error naming ``key``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    raise ValueError(f"{key} must be true, false or auto, got {value!r}")


def resolve_augment_on_device(value: bool | str) -> bool:
    """The ``dataset.augment_on_device`` option: true, false, or "auto" (on when CUDA is available).

    Raises:
        ValueError: any other value.
    """
    choice = _true_false_auto(value, "dataset.augment_on_device")
    return torch.cuda.is_available() if choice is None else choice


def uint8_split(dataset: Dataset[Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(images uint8 [N, C, H, W], labels [N]) of a split held as a uint8 ``TensorDataset`` or a ``Subset``
    of one (the device path's splits), in the dataset's order; None for any other dataset."""
    indices = None
    if isinstance(dataset, Subset):
        dataset, indices = dataset.dataset, torch.as_tensor(dataset.indices, dtype=torch.int64)
    if not isinstance(dataset, TensorDataset) or len(dataset.tensors) != 2 or dataset.tensors[0].dtype != torch.uint8:
        return None
    images, labels = dataset.tensors
    if indices is not None:
        images, labels = images.index_select(0, indices), labels.index_select(0, indices)
    return images, labels


def check_compile_augment(value: Any) -> bool:
    """The ``dataset.compile_augment`` option (a bool: ``torch.compile`` of the device views' ops).

    Raises:
        ValueError: not true or false.
    """
    if not isinstance(value, bool):
        raise ValueError(f"dataset.compile_augment must be true or false, got {value!r}")
    return value


#: the training datamodules by ``dataset.name``; configs name them by ``dataset._target_``. A new dataset
#: is one datamodule class with ``@DATAMODULES.register("<name>")`` (stack it for aliases).
DATAMODULES: Registry[type[BaseDataModule]] = Registry("datamodule", config_key="dataset")


class BaseDataModule(pl.LightningDataModule, abc.ABC):
    """Loaders, transforms and bookkeeping shared by the training datamodules.

    Subclasses set the class attributes ``mean`` / ``std`` (normalisation statistics) and
    implement ``setup`` to fill ``train_ds``, ``val_ds`` and ``test_ds``.

    Args:
        data_dir: dataset root on disk.
        task: config task name (``dataset.task``); see ``TASK_TYPES``.
        val_split: val size for datasets without an official val split (int count or float fraction).
        batch_size: B for all three loaders.
        shuffle: shuffle the train loader (val/test never shuffle).
        num_workers: DataLoader workers.
        drop_last: drop the last incomplete batch, in the val and test loaders too (D-Q4).
        persistent_workers: keep workers alive between epochs; only used when ``num_workers > 0``.
        input_height: image side H.
        seed: seed of the train/val split.
        pin_memory: pin host memory; only used when CUDA is available.
        download: allow a download of datasets that torchvision can fetch (CIFAR); never needed otherwise.
        skip_unread_views: whether ``read_views`` may leave unread SSL views out of the batches: true,
            false (always build all three, the reference), or "auto": on the device path, and on the CPU
            path only with ``num_workers > 0``, where the views are drawn from the workers' own random
            streams, so leaving some out changes no number. With ``num_workers=0`` the CPU transforms
            draw from the main process's global stream, which the later epochs' shuffling and the
            model's own draws share: skipping them there changes those streams (docs/deviations.md).
        **kwargs: further config keys, accepted and ignored (D-Q23).

    Raises:
        TypeError: ``batch_size`` is not an integer.
        ValueError: unknown ``task``, a non-positive ``batch_size``, or ``skip_unread_views`` not
            true, false or auto.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    #: the SSL views on the device (set by subclasses with ``augment_on_device``); None: transforms on the CPU
    device_augment: DeviceSSLAugment | None = None

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        task: str,
        val_split: int | float = 0.2,
        batch_size: int = 256,
        shuffle: bool = True,
        num_workers: int = 0,
        drop_last: bool = True,
        persistent_workers: bool = False,
        input_height: int = 32,
        seed: int = 1997,
        pin_memory: bool = False,
        download: bool = False,
        skip_unread_views: bool | str = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.task_type = task_type(task)
        # bool is an int subclass and a float would be silently truncated: both are config mistakes.
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
            raise TypeError(
                f"dataset.batch_size must be an integer, got {batch_size!r} of type {type(batch_size).__name__}; "
                "set e.g. dataset.batch_size=256"
            )
        if batch_size <= 0:
            raise ValueError(f"dataset.batch_size must be positive, got {batch_size}; set e.g. dataset.batch_size=256")
        self.data_dir = Path(data_dir)
        self.task = task
        self.val_split = val_split
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.num_workers = int(num_workers)
        self.drop_last = bool(drop_last)
        self.persistent_workers = bool(persistent_workers)
        self.input_height = int(input_height)
        self.seed = int(seed)
        self.pin_memory = bool(pin_memory)
        self.download = bool(download)
        self.skip_unread_views = _true_false_auto(skip_unread_views, "dataset.skip_unread_views")
        #: the SSL views the consumer reads (positions in [V1, V2, V3]); see ``read_views``
        self.views_read: tuple[int, ...] = ALL_VIEWS
        # Kept only for inspection; no datamodule reads them (D-Q23).
        self.ignored_kwargs = dict(kwargs)
        self.train_ds: Dataset[Any] | None = None
        self.val_ds: Dataset[Any] | None = None
        self.test_ds: Dataset[Any] | None = None

    @abc.abstractmethod
    def setup(self, stage: str | None = None) -> None:
        """Build ``train_ds``/``val_ds`` (stage fit, validate or None) and ``test_ds`` (test or None)."""

    # ------------------------------------------------------------------ transforms

    @property
    def normalize(self) -> dict[str, tuple[float, ...]]:
        """``{"mean": mean, "std": std}`` of the dataset."""
        return {"mean": tuple(self.mean), "std": tuple(self.std)}

    def normalize_fn(self) -> T.Normalize:
        """A ``Normalize`` module with the dataset's statistics (unused by the pipeline, kept from the reference)."""
        return T.Normalize(mean=list(self.mean), std=list(self.std))

    def get_transform(self, stage: str) -> Callable[[Any], Any]:
        """The transform of split ``stage`` (``train``, ``val`` or ``test``).

        ssl task type: the 3-view SSL transform for every split (``cifar_ssl_transform``); otherwise
        ``SupervisedTransform`` in train mode for ``train`` only.
        """
        if self.task_type == "ssl":
            return cifar_ssl_transform(self.input_height, self.mean, self.std)
        return SupervisedTransform(train=stage == "train", input_height=self.input_height, normalize=self.normalize)

    def read_views(self, views: tuple[int, ...]) -> None:
        """Declare which SSL views the consumer reads (positions 0, 1, 2 of ``[V1, V2, V3]``).

        Call before ``setup``. Where ``skip_unread_views`` allows it (``views_skipped``), the other
        views are not computed and are None in the batches; the layout stays ``[[V1, V2, V3], Y]``.
        The offline finetune calls ``read_views((2,))``.

        Raises:
            ValueError: a position outside 0..2, or no position.
        """
        views = tuple(sorted({int(v) for v in views}))
        if not views or not set(views) <= set(ALL_VIEWS):
            raise ValueError(f"read_views takes positions in 0..2 of [V1, V2, V3], got {views}")
        self.views_read = views

    @property
    def views_skipped(self) -> bool:
        """Whether the batches leave out the views outside ``views_read`` (see ``skip_unread_views``)."""
        if self.views_read == ALL_VIEWS or self.task_type != "ssl":
            return False
        if self.skip_unread_views is not None:
            return self.skip_unread_views
        return self.device_augment is not None or self.num_workers > 0

    def transform(self, stage: str) -> Callable[[Any], Any]:
        """``get_transform(stage)``, keeping only the read views of a multi-view transform when
        ``views_skipped`` (the batch then holds those views only, put back in place by
        ``on_after_batch_transfer``)."""
        transform = self.get_transform(stage)
        if self.views_skipped and isinstance(transform, MultiViewTransform):
            return MultiViewTransform([transform.transforms[i] for i in self.views_read])
        return transform

    # ------------------------------------------------------------------ loaders

    def training_device(self) -> torch.device:
        """The device the attached Trainer trains on (its strategy's root device), else the CPU."""
        strategy = getattr(self.trainer, "strategy", None)
        return strategy.root_device if strategy is not None else torch.device("cpu")

    def _device_loader(self, dataset: Dataset[Any], split: str, shuffle: bool) -> DeviceBatchLoader | None:
        """A ``DeviceBatchLoader`` over a uint8 split (device path), or None to keep a DataLoader."""
        tensors = uint8_split(dataset)
        if tensors is None:
            return None
        world_size = int(getattr(self.trainer, "world_size", 1) or 1)
        if world_size > 1:
            if split == "train":
                log.info(
                    "augment_on_device with %d devices: the splits are loaded by DataLoaders (Lightning shards them "
                    "by rank); the single-device path keeps them resident on the device",
                    world_size,
                )
            return None
        images, labels = tensors
        return DeviceBatchLoader(
            images, labels, self.batch_size, shuffle, self.drop_last, self.seed, device=self.training_device
        )

    def _loader(self, dataset: Dataset[Any] | None, split: str, shuffle: bool) -> DataLoader[Any] | DeviceBatchLoader:
        if dataset is None:
            stage = "test" if split == "test" else "fit"
            raise RuntimeError(
                f"{type(self).__name__}: the {split} set does not exist; "
                f"call setup({stage!r}) before {split}_dataloader()"
            )
        if self.device_augment is not None:
            device_loader = self._device_loader(dataset, split, shuffle)
            if device_loader is not None:
                return device_loader
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            drop_last=self.drop_last,
            # torch raises for persistent workers without workers; pinning needs a GPU.
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader[Any] | DeviceBatchLoader:
        """Train loader: shuffled per config, ``drop_last`` per config."""
        return self._loader(self.train_ds, "train", self.shuffle)

    def val_dataloader(self) -> DataLoader[Any] | DeviceBatchLoader:
        """Val loader: never shuffled; ``drop_last`` per config (D-Q4)."""
        return self._loader(self.val_ds, "val", False)

    def test_dataloader(self) -> DataLoader[Any] | DeviceBatchLoader:
        """Test loader: never shuffled; ``drop_last`` per config (D-Q4)."""
        return self._loader(self.test_ds, "test", False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """``[X_uint8, Y]`` → ``[[V1, V2, V3], Y]`` with ``device_augment``, after Lightning moved the batch.

        Runs for every loader of a Trainer (fit, validate, test); without ``device_augment``, or
        for a batch that is not uint8 images, the batch passes unchanged. Lightning calls this
        hook instead of a LightningModule's own (no module of the project defines one).

        With ``views_skipped`` only the views of ``views_read`` are made (device path) or present
        (CPU path: the transform made only those); the others are None in ``[[V1, V2, V3], Y]``.
        """
        skipped = self.views_skipped
        if self.device_augment is not None:
            return self.device_augment.augment_batch(batch, self.views_read if skipped else ALL_VIEWS)
        if skipped and isinstance(batch, (list, tuple)) and len(batch) == 2 and isinstance(batch[0], (list, tuple)):
            views: list[Any] = [None, None, None]
            for position, view in zip(self.views_read, batch[0], strict=True):
                views[position] = view
            return [views, batch[1]]
        return batch

    # ------------------------------------------------------------------ sizes

    def check_batches(self, splits: tuple[str, ...] = ("train", "val")) -> None:
        """Fail early when a set split would yield no batch at all.

        With ``drop_last`` a split smaller than the batch size gives an empty loader: training
        would do nothing, and the val metrics that early stopping and checkpointing monitor
        (``val_online_acc``) would never exist, which Lightning reports only after the first epoch.

        Raises:
            ValueError: a split has no sample, or fewer than ``batch_size`` with ``drop_last``; the
                message names the split, the sizes and the keys to change.
        """
        for split in splits:
            dataset = getattr(self, f"{split}_ds", None)
            if dataset is None:
                continue
            n = len(dataset)  # type: ignore[arg-type]
            if n == 0 or (self.drop_last and n < self.batch_size):
                raise ValueError(
                    f"the {split} split of {type(self).__name__} ({self.data_dir}) has {n} samples, fewer than "
                    f"dataset.batch_size={self.batch_size} with dataset.drop_last={self.drop_last}, so it yields no "
                    f"batch (and no {split} metrics for early stopping); lower dataset.batch_size, set "
                    "dataset.drop_last=false, or give the split more data (dataset.val_split, a larger subset)"
                )

    @property
    def num_training_samples(self) -> int:
        """N_train, the length of the train set.

        Raises:
            AttributeError: ``setup('fit')`` has not run (as in the reference, an AttributeError).
        """
        if self.train_ds is None:
            raise AttributeError(
                f"{type(self).__name__}.num_training_samples needs the train set; call setup('fit') first"
            )
        return len(self.train_ds)  # type: ignore[arg-type]

    @property
    def train_iters_per_epoch(self) -> int:
        """Train batches per epoch: floor(N_train / B) with ``drop_last``, else ceil(N_train / B)."""
        n = self.num_training_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)
