"""Linear-probe / transfer-learning datamodules and their registry ``TRANSFER_DATAMODULES``.

The image datamodules (one per transfer dataset, registered by the ``dataset`` name of the
linear-probing config) read the official splits (``load_splits``); ``None`` marks a split the
dataset does not have:

=============  ============================  =========================  ===========================
dataset        train                         val                        test
=============  ============================  =========================  ===========================
SUN397         partition 1 ``Training_01``   –                          partition 1 ``Testing_01``
flowers-102    ``setid.mat`` ``trnid``       ``setid.mat`` ``valid``    – (``tstid`` is never used, D-Q5)
imagenet       ``train/<wnid>/``             ``val/<wnid>/``            –
demo           ``train_demo.txt``            ``val_demo.txt``           ``test_demo.txt``
=============  ============================  =========================  ===========================

``PrecomputedRepresentationsDatamodule`` reads the embedding files of any of them
(``src/data/dataset/embeddings.py``).

The probe protocol (``probe_splits``, used by ``PrecomputedRepresentationsDatamodule`` and by
the image datamodules when given ``test_mode``): without a test split, test := val and val :=
None, so Flowers-102 and ImageNet report on their official val split (D-Q5); outside test mode a
missing val split is a stratified 20 % of train drawn with NumPy's global RNG (D-Q38).

Nothing is ever downloaded: missing data raises ``FileNotFoundError`` naming the path, the
expected layout and where to get it (D-Q13).
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from torchvision.datasets import ImageFolder

from src.data.augment.transforms import IMAGENET_NORMALIZE, FinetuneViewTransform, Normalization
from src.data.datamodule.imagenet import ImageNetDataModule
from src.data.dataset.embeddings import EMBEDDING_SPLITS, load_embeddings
from src.data.dataset.image_file import load_rgb_image
from src.data.dataset.imglist import ImageListDataset
from src.data.dataset.transfer_splits import Flowers102Split, SUN397Split
from src.data.prepare.demo_data import ID_NAME as DEMO_ID_NAME
from src.data.prepare.demo_data import read_protocol
from src.utils.registry import Registry

#: side of the squash-resized probe images (D-Q7)
PROBE_IMAGE_SIZE = 224
#: share of train held out as val outside test mode
VAL_FRACTION = 0.2

Splits = dict[str, Dataset[Any] | None]

#: the image datamodules by the linear-probing config's ``dataset``; a new transfer dataset is one
#: ``BaseLinearProbingDatamodule`` subclass with ``@TRANSFER_DATAMODULES.register("<dataset>")``
TRANSFER_DATAMODULES: Registry[type[BaseLinearProbingDatamodule]] = Registry(
    "linear-probe dataset", config_key="linear_probing.dataset", name_keys=("dataset",)
)


def probe_transform(image_size: int = PROBE_IMAGE_SIZE, normalize: Normalization = IMAGENET_NORMALIZE) -> Callable:
    """The probe transform of every transfer dataset (D-Q7).

    Squash-resize to (image_size, image_size) → ToTensor → Normalize(ImageNet mean/std); no crop,
    no augmentation, for train and evaluation alike.

    Returns:
        A callable mapping a PIL image to float32 (3, image_size, image_size).
    """
    return FinetuneViewTransform(input_size=image_size, normalize=normalize)


def dataset_targets(dataset: Dataset[Any]) -> np.ndarray:
    """Integer labels of ``dataset`` (``TensorDataset`` labels, ``targets`` of the image datasets, subsets)."""
    if isinstance(dataset, Subset):
        return dataset_targets(dataset.dataset)[np.asarray(dataset.indices)]
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].numpy()
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise TypeError(f"{type(dataset).__name__} exposes no labels (`targets`), so it cannot be stratified")
    return np.asarray(targets)


def probe_splits(
    train: Dataset[Any] | None, val: Dataset[Any] | None, test: Dataset[Any] | None, test_mode: bool
) -> tuple[Dataset[Any], Dataset[Any] | None, Dataset[Any]]:
    """The (train, val, test) sets of a probe run.

    1. No test split: test := val, val := None (Flowers-102 and ImageNet report on val, D-Q5).
    2. ``test_mode``: stop (no validation; the DVC stages).
    3. Otherwise a missing val is ``train_test_split(test_size=0.2, stratify=labels)`` of train with
       no ``random_state``, so NumPy's global RNG (seeded 1537 by the caller) decides (D-Q38);
       train becomes the other 80 %.

    Raises:
        ValueError: there is no train split, or neither a val nor a test split.
    """
    if train is None:
        raise ValueError("the probe needs a train split")
    if test is None:
        test, val = val, None
    if test is None:
        raise ValueError("the probe needs a test or a val split to report on")
    if not test_mode and val is None:
        labels = dataset_targets(train)
        train_idx, val_idx = train_test_split(np.arange(len(labels)), test_size=VAL_FRACTION, stratify=labels)
        train, val = Subset(train, train_idx.tolist()), Subset(train, val_idx.tolist())
    return train, val, test


class BaseLinearProbingDatamodule(pl.LightningDataModule, abc.ABC):
    """Loaders over a transfer dataset's splits.

    ``setup`` loads the official splits once (a second call, e.g. Lightning's before ``test``,
    reuses them: the reference re-loaded every file, which only costs memory). With
    ``test_mode`` None the splits stay as ``load_splits`` returns them (what pre-embedding
    embeds); with a bool the probe protocol ``probe_splits`` is applied, so every loader
    Lightning asks for exists (fixes D-Q32).

    Loaders: ``batch_size``; train shuffled, val/test not; **no** ``drop_last``; pinned memory on
    GPU hosts; persistent workers when ``num_workers > 0``. A loader of a missing split is None.

    Args:
        data_dir: dataset root (``data/datasets`` for SUN397 and Flowers-102, the ImageNet or
            demo root otherwise).
        batch_size: B of every loader.
        num_workers: DataLoader workers.
        task: ``multiclass`` or ``multilabel`` (stored; the datasets are multiclass).
        num_classes: C; defaults to the dataset's own class count.
        image_size: side of the squash-resized images (224 by default, D-Q7).
        test_mode: see above.
    """

    #: C of the dataset
    default_num_classes: int = 0
    #: the splits ``load_splits`` returns (not None), known without touching the data
    official_splits: tuple[str, ...] = EMBEDDING_SPLITS

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        batch_size: int,
        num_workers: int = 0,
        task: str = "multiclass",
        num_classes: int | None = None,
        image_size: int | None = None,
        test_mode: bool | None = None,
    ) -> None:
        super().__init__()
        if task not in ("multiclass", "multilabel"):
            raise ValueError(f"task must be 'multiclass' or 'multilabel', got {task!r}")
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or int(batch_size) <= 0:
            raise ValueError(
                f"batch_size must be a positive integer, got {batch_size!r}; set batch_size in the linear-probing "
                "config (e.g. batch_size: 256)"
            )
        self.data_dir = Path(data_dir)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.persistent_workers = self.num_workers > 0
        self.task = task
        self.num_classes = int(num_classes) if num_classes is not None else self.default_num_classes
        self.image_size = int(image_size) if image_size is not None else PROBE_IMAGE_SIZE
        self.test_mode = test_mode
        self.train_ds: Dataset[Any] | None = None
        self.val_ds: Dataset[Any] | None = None
        self.test_ds: Dataset[Any] | None = None
        self._loaded = False

    @property
    def transforms(self) -> Callable:
        """The probe transform (``probe_transform``; spelled ``tranforms`` in the reference)."""
        return probe_transform(self.image_size)

    @abc.abstractmethod
    def load_splits(self) -> Splits:
        """``{"train": …, "val": …, "test": …}``, None for a split the dataset does not have."""

    def prepare_data(self) -> None:
        """Nothing to download (see the module docstring); ``setup`` checks the files."""

    def setup(self, stage: str | None = None) -> None:
        if self._loaded:
            return
        splits = self.load_splits()
        train, val, test = (splits.get(name) for name in EMBEDDING_SPLITS)
        if self.test_mode is not None:
            train, val, test = probe_splits(train, val, test, self.test_mode)
        self.train_ds, self.val_ds, self.test_ds = train, val, test
        self._loaded = True

    def _loader(self, dataset: Dataset[Any] | None, shuffle: bool) -> DataLoader[Any] | None:
        if dataset is None:
            return None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.persistent_workers,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader[Any] | None:  # type: ignore[override]
        return self._loader(self.train_ds, shuffle=True)

    def val_dataloader(self) -> DataLoader[Any] | None:  # type: ignore[override]
        return self._loader(self.val_ds, shuffle=False)

    def test_dataloader(self) -> DataLoader[Any] | None:  # type: ignore[override]
        return self._loader(self.test_ds, shuffle=False)

    def split_loaders(self) -> dict[str, DataLoader[Any]]:
        """The loaders of the splits that exist, in the order train, val, test (after ``setup``)."""
        loaders = {
            "train": self.train_dataloader(),
            "val": self.val_dataloader(),
            "test": self.test_dataloader(),
        }
        return {name: loader for name, loader in loaders.items() if loader is not None}


@TRANSFER_DATAMODULES.register("SUN397")
class SUN397Datamodule(BaseLinearProbingDatamodule):
    """SUN397 partition 1: train = ``Training_01``, test = ``Testing_01``, no val (D-Q6)."""

    default_num_classes = 397
    official_splits = ("train", "test")

    def load_splits(self) -> Splits:
        return {
            "train": SUN397Split(self.data_dir, "train", transform=self.transforms),
            "val": None,
            "test": SUN397Split(self.data_dir, "test", transform=self.transforms),
        }


@TRANSFER_DATAMODULES.register("flowers-102")
class Flowers102Datamodule(BaseLinearProbingDatamodule):
    """Flowers-102: train = official train (1,020), val = official val (1,020); test unused (D-Q5)."""

    default_num_classes = 102
    official_splits = ("train", "val")

    def load_splits(self) -> Splits:
        return {
            "train": Flowers102Split(self.data_dir, "train", transform=self.transforms),
            "val": Flowers102Split(self.data_dir, "val", transform=self.transforms),
            "test": None,
        }


@TRANSFER_DATAMODULES.register("imagenet")
class ImagenetDatamodule(BaseLinearProbingDatamodule):
    """ImageNet from ``<data_dir>/{train,val}/<wnid>/`` (ImageFolder labels, the same wnids checked)."""

    default_num_classes = 1000
    official_splits = ("train", "val")

    def load_splits(self) -> Splits:
        # reuses the training datamodule's layout check: same messages, same wnid-equality guard (D-Q3)
        ImageNetDataModule(self.data_dir, task="linear_classification").check_layout()
        return {
            "train": ImageFolder(str(self.data_dir / "train"), transform=self.transforms, loader=load_rgb_image),
            "val": ImageFolder(str(self.data_dir / "val"), transform=self.transforms, loader=load_rgb_image),
            "test": None,
        }


@TRANSFER_DATAMODULES.register("demo")
class DemoLinearProbingDatamodule(BaseLinearProbingDatamodule):
    """The embedded demo (``src/data/prepare/demo_data.py``): its train / val / test ID lists.

    The demo models are pretrained on ``image_size``-pixel digits with the demo's own
    statistics, so the probe transform squash-resizes to that size (unless ``image_size`` is
    given) and normalises with the demo's mean/std (both from ``protocol.json``), instead of
    224 px and ImageNet statistics.
    """

    default_num_classes = 8

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        batch_size: int,
        num_workers: int = 0,
        task: str = "multiclass",
        num_classes: int | None = None,
        image_size: int | None = None,
        test_mode: bool | None = None,
    ) -> None:
        super().__init__(data_dir, batch_size, num_workers, task, num_classes, image_size, test_mode)
        self._explicit_size = image_size is not None

    def load_splits(self) -> Splits:
        protocol = read_protocol(self.data_dir)
        if not self._explicit_size:
            self.image_size = int(protocol["image_size"])
        transform = probe_transform(self.image_size, protocol["normalize"])
        lists = self.data_dir / "benchmark_imglist" / DEMO_ID_NAME
        return {
            split: ImageListDataset(self.data_dir / "images_classic", lists / protocol["id"][split], transform)
            for split in EMBEDDING_SPLITS
        }


class PrecomputedRepresentationsDatamodule(BaseLinearProbingDatamodule):
    """Embedding files ``<data_dir>/{train,val,test}.pt`` (``src/data/dataset/embeddings.py``) with the probe protocol.

    Batches are ``[Z, Y]``: Z float32 [B, D] (or [B, M, D] for Bayes-H), Y int64 [B]. A missing
    file is a missing split. The tensors are memory-mapped, not read into memory.

    Args:
        data_dir: the folder of the embedding files (``data/embeddings/<dataset>/<model>``).
        batch_size, num_workers, task, num_classes: as the base class.
        test_mode: True: no validation (the DVC stages); False: val = stratified 20 % of train.

    Raises (on ``setup``):
        FileNotFoundError: ``data_dir`` holds no train file.
        ValueError: labels outside [0, num_classes).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        batch_size: int,
        num_workers: int = 0,
        task: str = "multiclass",
        num_classes: int | None = None,
        test_mode: bool = False,
    ) -> None:
        super().__init__(data_dir, batch_size, num_workers, task, num_classes, test_mode=bool(test_mode))

    def load_splits(self) -> Splits:
        if not (self.data_dir / "train.pt").is_file():
            raise FileNotFoundError(
                f"no embeddings in {self.data_dir}: train.pt is missing; run pre_embed_datasets.py with "
                f"--target-dir {self.data_dir} first"
            )
        splits: Splits = {}
        for name in EMBEDDING_SPLITS:
            path = self.data_dir / f"{name}.pt"
            splits[name] = load_embeddings(path) if path.is_file() else None
            ds = splits[name]
            if ds is not None and self.task == "multiclass" and self.num_classes:
                labels = ds.tensors[1]  # type: ignore[attr-defined]
                if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                    raise ValueError(
                        f"{path}: labels span [{int(labels.min())}, {int(labels.max())}] but num_classes="
                        f"{self.num_classes}; the embeddings and the probe config belong to different datasets"
                    )
        return splits

    @property
    def repr_shape(self) -> tuple[int, ...]:
        """Shape of one representation, (D,) or (M, D) (after ``setup``)."""
        if self.train_ds is None:
            raise RuntimeError("call setup() first")
        sample = self.train_ds[0][0]
        return tuple(sample.shape)


def get_transfer_learning_datamodule(
    dataset_dir: str | os.PathLike[str],
    dataset: str,
    batch_size: int,
    num_workers: int = 0,
    image_size: int | None = None,
    test_mode: bool | None = None,
) -> BaseLinearProbingDatamodule:
    """The image datamodule registered as ``dataset`` in ``TRANSFER_DATAMODULES``.

    Raises:
        ValueError: an unknown dataset name (a ``RegistryError`` that lists the known ones).
    """
    return TRANSFER_DATAMODULES.get(dataset)(
        dataset_dir, batch_size, num_workers, image_size=image_size, test_mode=test_mode
    )
