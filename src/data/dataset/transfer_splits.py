"""The official splits of the transfer datasets SUN397 and Oxford Flowers-102, read from torchvision's layouts.

Nothing is ever downloaded: missing data raises ``FileNotFoundError`` naming the path, the
expected layout and where to get it (the reference downloaded Flowers-102 in its constructor, D-Q13).
Which split the probe uses for what is the probe datamodules' business
(``src/data/datamodule/transfer_learning.py``): SUN397 partition 1 only (D-Q6), Flowers-102's
official val split as its test set (D-Q5).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from src.data.dataset.image_file import load_rgb_image

# Missing files named in an error message; the rest are counted.
_MAX_LISTED = 5


def _listing(paths: list[Path]) -> str:
    shown = ", ".join(str(p) for p in paths[:_MAX_LISTED])
    return shown + (f" (and {len(paths) - _MAX_LISTED} more)" if len(paths) > _MAX_LISTED else "")


SUN397_LAYOUT = (
    "Expected torchvision's SUN397 layout plus the Princeton partitions: <root>/SUN397/ClassName.txt, "
    "<root>/SUN397/<letter>/<class>[/<subclass>]/sun_*.jpg and <root>/SUN397/Partitions/Training_01.txt, "
    "Testing_01.txt. Get SUN397.tar.gz from https://vision.princeton.edu/projects/2010/SUN/ and extract it "
    "into <root>; extract https://vision.princeton.edu/projects/2010/SUN/download/Partitions.zip into "
    "<root>/SUN397/Partitions/ (move the files up if the archive nests them in a sub-folder)."
)


class _ImageFileSplit(Dataset):
    """``samples`` of (image path, label) read as RGB images, with an optional ``transform``."""

    samples: list[tuple[Path, int]]
    transform: Callable | None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        image = load_rgb_image(path)  # a corrupted file raises ImageDecodeError naming it
        return (self.transform(image) if self.transform is not None else image), label


class SUN397Split(_ImageFileSplit):
    """One split of an official SUN397 partition (D-Q6): 50 + 50 images per class for partition 1.

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


FLOWERS_LAYOUT = (
    "Expected torchvision's Flowers102 layout: <root>/flowers-102/jpg/image_<5 digits>.jpg, "
    "<root>/flowers-102/imagelabels.mat and <root>/flowers-102/setid.mat. Get 102flowers.tgz, imagelabels.mat "
    "and setid.mat from https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ and put them there (extract the "
    "tgz into flowers-102/), or run torchvision.datasets.Flowers102(<root>, download=True) on a machine with "
    "network access."
)
_FLOWERS_SPLIT_KEYS = {"train": "trnid", "val": "valid", "test": "tstid"}


class Flowers102Split(_ImageFileSplit):
    """One official Oxford Flowers-102 split read from torchvision's on-disk files.

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
