"""Linear-probe / transfer-learning data: image datasets, embedding files and their datamodules.

Spec: data_evaluation.md §2.5 (SUN397), §2.6 (Flowers-102), §4.6 (probe transform), §7
(datamodules), §10 (embedding files), Quirks Q5–Q7, Q13–Q15, Q38.

Official splits (``load_splits``) per dataset; ``None`` marks a split the dataset does not have:

=============  ============================  =========================  ===========================
dataset        train                         val                        test
=============  ============================  =========================  ===========================
SUN397         partition 1 ``Training_01``   –                          partition 1 ``Testing_01``
flowers-102    ``setid.mat`` ``trnid``       ``setid.mat`` ``valid``    – (``tstid`` is never used, Q5)
imagenet       ``train/<wnid>/``             ``val/<wnid>/``            –
demo           ``train_demo.txt``            ``val_demo.txt``           ``test_demo.txt``
=============  ============================  =========================  ===========================

The probe protocol (``probe_splits``, used by ``PrecomputedRepresentationsDatamodule`` and by
the image datamodules when given ``test_mode``): without a test split, test := val and val :=
None, so Flowers-102 and ImageNet report on their official val split (Q5); outside test mode a
missing val split is a stratified 20 % of train drawn with NumPy's global RNG (Q38).

Embedding files (``<target_dir>/{train,val,test}.pt``) hold the plain dict
``{"reps": float32 [N, D] or [N, M, D], "labels": int64 [N]}`` written with ``torch.save``.
Deviation from the reference, which pickled a ``TensorDataset``: a ``TensorDataset`` does not
load with ``torch.load(..., weights_only=True)``, a dict of tensors does. ``load_embeddings``
returns the ``TensorDataset`` the reference's loader saw, and also reads the reference's files
(``TensorDataset`` is allow-listed for that one load).

Nothing is ever downloaded: missing data raises ``FileNotFoundError`` naming the path, the
expected layout and where to get it (the reference downloaded Flowers-102 in its constructor, Q13).
"""

from __future__ import annotations

import abc
import logging
import os
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from sklearn.model_selection import train_test_split
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from torchvision.datasets import ImageFolder

from src.data.augment.transforms import IMAGENET_NORMALIZE, FinetuneViewTransform, Normalization
from src.data.datamodule.imagenet import ImageNetDataModule
from src.data.dataset.image_file import load_rgb_image
from src.data.dataset.imglist import ImageListDataset
from src.data.prepare.demo_data import ID_NAME as DEMO_ID_NAME
from src.data.prepare.demo_data import read_protocol
from src.utils.io import atomic_write

log = logging.getLogger(__name__)

#: side of the squash-resized probe images (§4.6)
PROBE_IMAGE_SIZE = 224
#: embedding file names, in the order they are written (§10)
EMBEDDING_SPLITS = ("train", "val", "test")
#: share of train held out as val outside test mode (§7.3 step 4)
VAL_FRACTION = 0.2
# Missing files named in an error message; the rest are counted.
_MAX_LISTED = 5

Splits = dict[str, Dataset[Any] | None]


def probe_transform(image_size: int = PROBE_IMAGE_SIZE, normalize: Normalization = IMAGENET_NORMALIZE) -> Callable:
    """The probe transform of every transfer dataset (§4.6, Q7).

    Squash-resize to (image_size, image_size) → ToTensor → Normalize(ImageNet mean/std); no crop,
    no augmentation, for train and evaluation alike.

    Returns:
        A callable mapping a PIL image to float32 (3, image_size, image_size).
    """
    return FinetuneViewTransform(input_size=image_size, normalize=normalize)


def _listing(paths: list[Path]) -> str:
    shown = ", ".join(str(p) for p in paths[:_MAX_LISTED])
    return shown + (f" (and {len(paths) - _MAX_LISTED} more)" if len(paths) > _MAX_LISTED else "")


def _open_rgb(path: Path) -> Image.Image:
    # a corrupted file raises ImageDecodeError naming it
    return load_rgb_image(path)


# ---------------------------------------------------------------------------------------------
# image datasets
# ---------------------------------------------------------------------------------------------

SUN397_LAYOUT = (
    "Expected torchvision's SUN397 layout plus the Princeton partitions: <root>/SUN397/ClassName.txt, "
    "<root>/SUN397/<letter>/<class>[/<subclass>]/sun_*.jpg and <root>/SUN397/Partitions/Training_01.txt, "
    "Testing_01.txt. Get SUN397.tar.gz from https://vision.princeton.edu/projects/2010/SUN/ and extract it "
    "into <root>; extract https://vision.princeton.edu/projects/2010/SUN/download/Partitions.zip into "
    "<root>/SUN397/Partitions/ (move the files up if the archive nests them in a sub-folder)."
)


class SUN397Split(Dataset):
    """One split of an official SUN397 partition (§2.5, Q6): 50 + 50 images per class for partition 1.

    Classes are the lines of ``ClassName.txt`` with their first 3 characters (``/a/``) dropped;
    the label is the line index. An image's class is its path relative to ``SUN397/`` minus the
    letter and the file name (e.g. ``apartment_building/outdoor``).

    Deviation (order only): the reference globbed all 108,754 ``sun_*.jpg`` files in filesystem
    order and kept those in the partition; here the partition's entries are read directly and
    sorted, which gives the same set in a machine-independent order (the probe shuffles anyway).

    Args:
        root: the folder holding ``SUN397/`` (``data/datasets``).
        split: ``train`` (``Training_NN.txt``) or ``test`` (``Testing_NN.txt``).
        partition: the partition number, 1–10; the reference uses only 1.
        transform: applied to the PIL RGB image.

    Raises:
        FileNotFoundError: a file of the layout or an image listed in the partition is missing.
        ValueError: an unknown split, or a partition entry whose class is not in ``ClassName.txt``.
    """

    def __init__(
        self, root: str | os.PathLike[str], split: str, partition: int = 1, transform: Callable | None = None
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"SUN397 split must be 'train' or 'test', got {split!r}")
        self.data_dir = Path(root) / "SUN397"
        self.transform = transform
        name = f"{'Training' if split == 'train' else 'Testing'}_{partition:02d}.txt"
        class_file = self.data_dir / "ClassName.txt"
        partition_file = self.data_dir / "Partitions" / name
        missing = [p for p in (class_file, partition_file) if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"SUN397 not found: missing {_listing(missing)}. {SUN397_LAYOUT}")

        with class_file.open(encoding="utf-8") as f:
            self.classes = [line[3:].strip() for line in f if line.strip()]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        with partition_file.open(encoding="utf-8") as f:
            # a set, as in the reference: duplicate lines count once
            entries = sorted({line.strip() for line in f if line.strip()})
        files = [self.data_dir / entry.lstrip("/") for entry in entries]
        absent = [p for p in files if not p.is_file()]
        if absent:
            raise FileNotFoundError(
                f"{partition_file} lists {len(absent)} image(s) that do not exist: {_listing(absent)}. {SUN397_LAYOUT}"
            )
        self.samples: list[tuple[Path, int]] = []
        for path in files:
            cls = "/".join(path.relative_to(self.data_dir).parts[1:-1])
            if cls not in self.class_to_idx:
                raise ValueError(f"{path}: class {cls!r} is not listed in {class_file}")
            self.samples.append((path, self.class_to_idx[cls]))
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        image = _open_rgb(path)
        return (self.transform(image) if self.transform is not None else image), label


FLOWERS_LAYOUT = (
    "Expected torchvision's Flowers102 layout: <root>/flowers-102/jpg/image_<5 digits>.jpg, "
    "<root>/flowers-102/imagelabels.mat and <root>/flowers-102/setid.mat. Get 102flowers.tgz, imagelabels.mat "
    "and setid.mat from https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ and put them there (extract the "
    "tgz into flowers-102/), or run torchvision.datasets.Flowers102(<root>, download=True) on a machine with "
    "network access."
)
_FLOWERS_SPLIT_KEYS = {"train": "trnid", "val": "valid", "test": "tstid"}


class Flowers102Split(Dataset):
    """One official Oxford Flowers-102 split read from torchvision's on-disk files (§2.6).

    ``setid.mat`` gives the 1-based image ids of each split (``trnid`` 1,020, ``valid`` 1,020,
    ``tstid`` 6,149); the label of image i is ``imagelabels.mat`` ``labels[i - 1] - 1`` (0…101).
    The files are read with ``scipy.io.loadmat``; nothing is downloaded or checksummed.

    Args:
        root: the folder holding ``flowers-102/`` (``data/datasets``).
        split: ``train``, ``val`` or ``test``.
        transform: applied to the PIL RGB image.

    Raises:
        FileNotFoundError: a file of the layout or an image of the split is missing.
    """

    def __init__(self, root: str | os.PathLike[str], split: str, transform: Callable | None = None) -> None:
        if split not in _FLOWERS_SPLIT_KEYS:
            raise ValueError(f"Flowers-102 split must be one of {sorted(_FLOWERS_SPLIT_KEYS)}, got {split!r}")
        from scipy.io import loadmat  # scipy comes with scikit-learn; only this reader needs it

        self.base = Path(root) / "flowers-102"
        self.transform = transform
        label_file, setid_file = self.base / "imagelabels.mat", self.base / "setid.mat"
        missing = [p for p in (label_file, setid_file, self.base / "jpg") if not p.exists()]
        if missing:
            raise FileNotFoundError(f"Flowers-102 not found: missing {_listing(missing)}. {FLOWERS_LAYOUT}")
        ids = np.atleast_1d(loadmat(setid_file, squeeze_me=True)[_FLOWERS_SPLIT_KEYS[split]]).astype(np.int64)
        labels = np.atleast_1d(loadmat(label_file, squeeze_me=True)["labels"]).astype(np.int64) - 1
        files = [self.base / "jpg" / f"image_{int(i):05d}.jpg" for i in ids]
        absent = [p for p in files if not p.is_file()]
        if absent:
            raise FileNotFoundError(
                f"{len(absent)} image(s) of the Flowers-102 {split} split are missing: {_listing(absent)}. "
                f"{FLOWERS_LAYOUT}"
            )
        self.samples = [(path, int(labels[i - 1])) for path, i in zip(files, ids.tolist(), strict=True)]
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        image = _open_rgb(path)
        return (self.transform(image) if self.transform is not None else image), label


# ---------------------------------------------------------------------------------------------
# embedding files
# ---------------------------------------------------------------------------------------------


class EmbeddingWriter:
    """Streams the rows of one embedding file to disk; the final file appears only on ``commit``.

    Rows go into a disk-backed float32 buffer ``[N, *row_shape]`` (a NumPy memmap allocated
    from the dataset length at the first write), so memory stays bounded whatever N is (an
    ImageNet Bayes-H train file is ≈31.5 GB). ``commit`` saves ``{"reps", "labels"}`` with
    ``torch.save`` to a temporary name and renames it over ``path``; the buffer is deleted.
    Used as a context manager, an exception removes every temporary file.

    Args:
        path: the final ``<split>.pt``.
        num_rows: N, the length of the dataset.
    """

    def __init__(self, path: str | os.PathLike[str], num_rows: int) -> None:
        self.path = Path(path)
        self.num_rows = int(num_rows)
        self.offset = 0
        self.labels = torch.empty(self.num_rows, dtype=torch.int64)
        self._buffer_path = self.path.with_name(f".{self.path.name}.{os.getpid()}.buffer")
        self._buffer: np.memmap | None = None

    def write(self, reps: Tensor, labels: Tensor) -> None:
        """Append a batch: ``reps`` [B, *row_shape] (any float dtype), ``labels`` [B]."""
        n = reps.shape[0]
        if self.offset + n > self.num_rows:
            raise ValueError(f"{self.path}: {self.offset + n} rows written but the dataset has {self.num_rows}")
        if self._buffer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            shape = (self.num_rows, *reps.shape[1:])
            self._buffer = np.memmap(self._buffer_path, dtype=np.float32, mode="w+", shape=shape)
        elif tuple(reps.shape[1:]) != self._buffer.shape[1:]:
            raise ValueError(f"{self.path}: row shape changed from {self._buffer.shape[1:]} to {tuple(reps.shape[1:])}")
        self._buffer[self.offset : self.offset + n] = reps.detach().to("cpu", torch.float32).numpy()
        self.labels[self.offset : self.offset + n] = labels.detach().to("cpu", torch.int64)
        self.offset += n

    def commit(self) -> Path:
        """Write the final file atomically (every row must have been written) and drop the buffer."""
        if self._buffer is None or self.offset != self.num_rows:
            raise ValueError(f"{self.path}: {self.offset} of {self.num_rows} rows written; refusing to save")
        self._buffer.flush()
        reps = torch.from_numpy(self._buffer)
        atomic_write(self.path, lambda p: torch.save({"reps": reps, "labels": self.labels}, p))
        self._discard()
        return self.path

    def _discard(self) -> None:
        self._buffer = None  # drops the mapping before the file is removed
        self._buffer_path.unlink(missing_ok=True)

    def __enter__(self) -> EmbeddingWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._discard()


def save_embeddings(path: str | os.PathLike[str], reps: Tensor, labels: Tensor) -> Path:
    """Save ``{"reps": float32, "labels": int64}`` atomically (in-memory tensors; see ``EmbeddingWriter``)."""
    obj = {"reps": reps.detach().to("cpu", torch.float32), "labels": labels.detach().to("cpu", torch.int64)}
    return atomic_write(path, lambda p: torch.save(obj, p))


def load_embeddings(path: str | os.PathLike[str], mmap: bool = True) -> TensorDataset:
    """An embedding file as ``TensorDataset(reps float32 [N, ...], labels int64 [N])``.

    Loads with ``weights_only=True``. ``mmap=True`` maps the tensors instead of reading them
    into memory (a file of this project's format only). The reference's pickled
    ``TensorDataset`` files are accepted too, with ``TensorDataset`` allow-listed for the load.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not an embedding file (not a ``torch.save`` file, truncated,
            holding objects other than plain tensors, or without tensors ``reps`` and ``labels``).
    """
    path = Path(path)
    regenerate = "delete it and re-run pre_embed_datasets.py to write it again"
    if not path.is_file():
        raise FileNotFoundError(f"embedding file {path} does not exist; run pre_embed_datasets.py first")
    try:
        with torch.serialization.safe_globals([TensorDataset]):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # UnpicklingError, RuntimeError (not a zip / truncated), EOFError, ...
        text = str(err)
        reason = (
            "it holds objects other than plain tensors, which are refused (loading them could run code)"
            if "weights_only" in text.lower() or "Unsupported" in text
            else "it is not a torch.save file or it is truncated"
        )
        raise ValueError(
            f"{path} is not a readable embedding file: {reason} ({type(err).__name__}); {regenerate}"
        ) from err
    if isinstance(obj, TensorDataset):
        reps, labels = obj.tensors[:2]
    elif isinstance(obj, dict) and {"reps", "labels"} <= set(obj):
        reps, labels = obj["reps"], obj["labels"]
    else:
        keys = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(
            f"{path} is not an embedding file: expected a dict with tensors 'reps' and 'labels' (or a "
            f"TensorDataset), got {keys}; {regenerate}"
        )
    if not isinstance(reps, Tensor) or not isinstance(labels, Tensor):
        raise ValueError(
            f"{path}: 'reps' and 'labels' must be tensors, got {type(reps).__name__} and "
            f"{type(labels).__name__}; {regenerate}"
        )
    if reps.dim() < 2 or labels.dim() < 1:
        raise ValueError(
            f"{path}: expected reps [N, D] or [N, M, D] and labels [N, ...], got {tuple(reps.shape)} and "
            f"{tuple(labels.shape)}; {regenerate}"
        )
    if reps.shape[0] != labels.shape[0]:
        raise ValueError(f"{path}: {reps.shape[0]} representations but {labels.shape[0]} labels; {regenerate}")
    return TensorDataset(reps, labels)


# ---------------------------------------------------------------------------------------------
# the probe protocol
# ---------------------------------------------------------------------------------------------


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
    """The (train, val, test) sets of a probe run (§7.3 steps 2–4).

    1. No test split: test := val, val := None (Flowers-102 and ImageNet report on val, Q5).
    2. ``test_mode``: stop (no validation; the DVC stages).
    3. Otherwise a missing val is ``train_test_split(test_size=0.2, stratify=labels)`` of train with
       no ``random_state``, so NumPy's global RNG (seeded 1537 by the caller) decides (Q38);
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


# ---------------------------------------------------------------------------------------------
# datamodules
# ---------------------------------------------------------------------------------------------


class BaseLinearProbingDatamodule(pl.LightningDataModule, abc.ABC):
    """Loaders over a transfer dataset's splits (§7.2).

    ``setup`` loads the official splits once (a second call, e.g. Lightning's before ``test``,
    reuses them: the reference re-loaded every file, which only costs memory). With
    ``test_mode`` None the splits stay as ``load_splits`` returns them (what pre-embedding
    embeds); with a bool the probe protocol ``probe_splits`` is applied, so every loader
    Lightning asks for exists (fixes Q32).

    Loaders: ``batch_size``; train shuffled, val/test not; **no** ``drop_last``; pinned memory on
    GPU hosts; persistent workers when ``num_workers > 0``. A loader of a missing split is None.

    Args:
        data_dir: dataset root (``data/datasets`` for SUN397 and Flowers-102, the ImageNet or
            demo root otherwise).
        batch_size: B of every loader.
        num_workers: DataLoader workers.
        task: ``multiclass`` or ``multilabel`` (stored; the datasets are multiclass).
        num_classes: C; defaults to the dataset's own class count.
        image_size: side of the squash-resized images (224 by default, §4.6).
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
        """The probe transform (§4.6; spelled ``tranforms`` in the reference)."""
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


class SUN397Datamodule(BaseLinearProbingDatamodule):
    """SUN397 partition 1: train = ``Training_01``, test = ``Testing_01``, no val (§2.5, Q6)."""

    default_num_classes = 397
    official_splits = ("train", "test")

    def load_splits(self) -> Splits:
        return {
            "train": SUN397Split(self.data_dir, "train", transform=self.transforms),
            "val": None,
            "test": SUN397Split(self.data_dir, "test", transform=self.transforms),
        }


class Flowers102Datamodule(BaseLinearProbingDatamodule):
    """Flowers-102: train = official train (1,020), val = official val (1,020); test unused (Q5)."""

    default_num_classes = 102
    official_splits = ("train", "val")

    def load_splits(self) -> Splits:
        return {
            "train": Flowers102Split(self.data_dir, "train", transform=self.transforms),
            "val": Flowers102Split(self.data_dir, "val", transform=self.transforms),
            "test": None,
        }


class ImagenetDatamodule(BaseLinearProbingDatamodule):
    """ImageNet from ``<data_dir>/{train,val}/<wnid>/`` (ImageFolder labels, the same wnids checked)."""

    default_num_classes = 1000
    official_splits = ("train", "val")

    def load_splits(self) -> Splits:
        # reuses the training datamodule's layout check: same messages, same wnid-equality guard (Q3)
        ImageNetDataModule(self.data_dir, task="linear_classification").check_layout()
        return {
            "train": ImageFolder(str(self.data_dir / "train"), transform=self.transforms, loader=load_rgb_image),
            "val": ImageFolder(str(self.data_dir / "val"), transform=self.transforms, loader=load_rgb_image),
            "test": None,
        }


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
    """Embedding files ``<data_dir>/{train,val,test}.pt`` with the probe protocol (§7.3).

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


#: dataset name (``config.dataset``) -> image datamodule (§7.1)
TRANSFER_DATAMODULES: dict[str, type[BaseLinearProbingDatamodule]] = {
    "SUN397": SUN397Datamodule,
    "flowers-102": Flowers102Datamodule,
    "imagenet": ImagenetDatamodule,
    "demo": DemoLinearProbingDatamodule,
}


def get_transfer_learning_datamodule(
    dataset_dir: str | os.PathLike[str],
    dataset: str,
    batch_size: int,
    num_workers: int = 0,
    image_size: int | None = None,
    test_mode: bool | None = None,
) -> BaseLinearProbingDatamodule:
    """The image datamodule of ``dataset`` (§7.1).

    Raises:
        ValueError: an unknown dataset name.
    """
    if dataset not in TRANSFER_DATAMODULES:
        raise ValueError(f"dataset={dataset!r} has no transfer datamodule; use one of {sorted(TRANSFER_DATAMODULES)}")
    return TRANSFER_DATAMODULES[dataset](
        dataset_dir, batch_size, num_workers, image_size=image_size, test_mode=test_mode
    )
