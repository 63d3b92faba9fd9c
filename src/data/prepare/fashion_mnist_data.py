"""Fashion-MNIST on disk: the original IDX files and the two OOD protocols built from them.

The data is the real dataset (Xiao et al., 2017: 70,000 28×28 grayscale images of 10 clothing
classes, 6,000 train and 1,000 test images per class) in torchvision's on-disk format::

    <data_dir>/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte

``install_raw`` fills that folder from Debian's ``dataset-fashion-mnist`` package (the gzipped
originals under ``/usr/share/datasets/fashion-mnist/``), from another folder holding the four
files, or, when asked, with torchvision's download; otherwise it stops with a message that says
how to get the files. The training datamodule (``src/data/datamodule/fashion_mnist.py``) reads
these files directly (``load_split``, ``subset_indices``); ``prepare_fashion_mnist`` is what
``prepare_fashion_mnist.py`` runs: the install, then both protocols.

``prepare_ood_protocols`` writes, next to them, the OOD study's on-disk layout (OpenOOD v1.5's
image lists, as for CIFAR-10 and the demo)::

    images_classic/fashion_mnist/{train,test}/<class>/<index>.png   grayscale PNGs of the IDX images
    images_classic/digits/<digit>/<index>.png       scikit-learn's digits, upscaled to 28×28
    images_classic/noise/{uniform,blur}/<i>.png     generated grayscale noise
    images_classic/photos/{china,flower}/<i>.png    grayscale patches of scikit-learn's sample photos
    benchmark_imglist/fashion_mnist/{train,val,test}_fashion_mnist.txt, val_ood.txt,
        test_digits.txt, test_noise.txt, protocol.json
    benchmark_imglist/fashion_mnist_split/{train,val,test}_fashion_mnist_split.txt, val_ood.txt,
        test_fashion_mnist_6to9.txt, test_digits.txt, test_noise.txt, protocol.json

- ``fashion_mnist``: ID all ten classes; far-OOD the digits and the noise; no near-OOD set.
- ``fashion_mnist_split`` (the open-set split): ID classes 0–5 (T-shirt/top … Sandal), near-OOD
  the test images of classes 6–9 (Shirt, Sneaker, Bag, Ankle boot); far-OOD as above. Models of
  this protocol are trained on classes 0–5 only (``dataset=fashion_mnist_split``).
- ID splits mirror OpenOOD's CIFAR-10 lists: train = the training set; val and test = disjoint
  parts of the official test set (10 % per class to val, as OpenOOD's 1,000 of CIFAR-10's 10,000).
- The validation OOD set (the role of OpenOOD's ``val_tin.txt``) is a third source, grayscale
  photo patches, so the hyper-parameter search never sees a digit, a noise image or a near-OOD
  class before the test.

``train_per_class`` / ``test_per_class`` take a seeded per-class subset (the same one the
training datamodule takes with the same values), and ``ood_count`` caps each OOD set: the small
settings of the DVC stages. Each random part draws from its own child of
``numpy.random.SeedSequence(seed)``, so the same arguments give the same files.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_digits
from torchvision.datasets.mnist import read_image_file, read_label_file

from src.data.dataset.imglist import write_image_list
from src.data.prepare.ood_sources import (
    replace_dir,
    save_png,
    stratified_split,
    upscale_digit,
    write_noise,
    write_photo_patches,
)
from src.utils.io import read_json, write_text

log = logging.getLogger(__name__)

#: where Debian's ``dataset-fashion-mnist`` installs the original (gzipped) files
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
#: torchvision's FashionMNIST file names (uncompressed) -> (IDX magic number, dimensions after the count)
RAW_FILES: dict[str, tuple[int, tuple[int, ...]]] = {
    "train-images-idx3-ubyte": (2051, (28, 28)),
    "train-labels-idx1-ubyte": (2049, ()),
    "t10k-images-idx3-ubyte": (2051, (28, 28)),
    "t10k-labels-idx1-ubyte": (2049, ()),
}
#: the real dataset's sizes (a smaller, well-formed set of files is accepted: test fixtures, subsets)
NUM_TRAIN, NUM_TEST = 60000, 10000
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
IMAGE_SIZE = 28
#: mean / std of the 60,000 training images' pixels in [0, 1] (tests recompute them from the files),
#: replicated over the three channels the grey images are expanded to (see the datamodule)
NORMALIZE: dict[str, tuple[float, float, float]] = {"mean": (0.2860,) * 3, "std": (0.3530,) * 3}
#: the open-set split: ID classes and near-OOD classes of ``fashion_mnist_split``
SPLIT_ID_CLASSES = (0, 1, 2, 3, 4, 5)
SPLIT_NEAR_CLASSES = (6, 7, 8, 9)
PROTOCOL_NAMES = ("fashion_mnist", "fashion_mnist_split")

# Bumped whenever the generated content changes, so older builds are rebuilt instead of reused.
FORMAT_VERSION = 1
VAL_FRACTION = 0.1  # per class, of the official test set (OpenOOD: 1,000 of CIFAR-10's 10,000)
NUM_NOISE = 1000  # half uniform, half blurred
NUM_PHOTOS = 1000
PHOTO_CROP_RANGE = (24, 160)  # side of the square crops, in source pixels (photos are 427×640)
BLUR_RADIUS_RANGE = (0.7, 2.0)
PROTOCOL_FILE = "protocol.json"


def raw_folder(data_dir: str | os.PathLike[str]) -> Path:
    """``<data_dir>/FashionMNIST/raw``, where torchvision's ``FashionMNIST`` reads its files."""
    return Path(data_dir) / "FashionMNIST" / "raw"


def how_to_obtain(data_dir: str | os.PathLike[str]) -> str:
    """The missing-data advice: the Debian package, the preparation script, the download, the layout."""
    raw = raw_folder(data_dir)
    return (
        "Install Debian's package (`sudo apt install dataset-fashion-mnist`, which puts the four original "
        f"files under {DEBIAN_DIR}/) and run `python src/experiments/scripts/prepare_fashion_mnist.py "
        f"--output-root {data_dir}`; or, on a machine with network access, add `--download` (torchvision "
        f"fetches the files); or copy {', '.join(RAW_FILES)} (each may be .gz) into {raw}/ yourself."
    )


def check_idx(path: str | os.PathLike[str], magic: int, dims: Sequence[int]) -> int:
    """Check that ``path`` is an uncompressed IDX file of uint8 items with ``magic`` and item shape ``dims``.

    Returns:
        N, the number of items in the file.

    Raises:
        ValueError: wrong magic number or dimensions, or a size that does not match the header (a
            truncated file, or one still gzipped); the message names the file.
    """
    path = Path(path)
    n_header = 4 + 4 * (1 + len(dims))
    with path.open("rb") as f:
        header = f.read(n_header)
    if len(header) < n_header:
        raise ValueError(f"{path} is not an IDX file: it is only {len(header)} bytes long; replace the file")
    values = tuple(int(v) for v in np.frombuffer(header, dtype=">i4"))
    if values[0] != magic or values[2:] != tuple(dims):
        raise ValueError(
            f"{path} is not the expected IDX file: header {values}, expected magic {magic} and items of shape "
            f"{tuple(dims)} (a gzipped file must be decompressed, or named .gz in a source folder)"
        )
    count = values[1]
    expected = n_header + count * int(np.prod(dims, dtype=np.int64))
    size = path.stat().st_size
    if size != expected:
        raise ValueError(f"{path} is truncated or padded: {size} bytes, expected {expected}; replace the file")
    return count


def missing_raw_files(data_dir: str | os.PathLike[str]) -> list[str]:
    """The names of ``RAW_FILES`` absent from ``raw_folder(data_dir)``."""
    raw = raw_folder(data_dir)
    return [name for name in RAW_FILES if not (raw / name).is_file()]


def _verify_files(folder: Path) -> dict[str, int]:
    """``check_idx`` on the four files in ``folder``, and equal image and label counts per split."""
    counts = {name: check_idx(folder / name, magic, dims) for name, (magic, dims) in RAW_FILES.items()}
    for split in ("train", "t10k"):
        n_images, n_labels = counts[f"{split}-images-idx3-ubyte"], counts[f"{split}-labels-idx1-ubyte"]
        if n_images != n_labels:
            raise ValueError(
                f"{folder}: {split}-images-idx3-ubyte holds {n_images} images but {split}-labels-idx1-ubyte "
                f"{n_labels} labels; the files are from different sets: replace them"
            )
    return counts


def verify_raw(data_dir: str | os.PathLike[str]) -> dict[str, int]:
    """Check that the four raw files are present and well-formed; return the item count of each.

    Raises:
        FileNotFoundError: a file is missing (the message says how to obtain them).
        ValueError: a file is malformed (see ``check_idx``), or images and labels differ in number.
    """
    missing = missing_raw_files(data_dir)
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found at {raw_folder(data_dir)}: missing {', '.join(missing)}. "
            + how_to_obtain(data_dir)
        )
    return _verify_files(raw_folder(data_dir))


def _source_files(source_dir: Path) -> dict[str, Path] | None:
    """``name -> path`` of the four files in ``source_dir`` (``name`` or ``name.gz``), or None if any is absent."""
    found = {}
    for name in RAW_FILES:
        for candidate in (source_dir / f"{name}.gz", source_dir / name):
            if candidate.is_file():
                found[name] = candidate
                break
        else:
            return None
    return found


def install_raw(
    data_dir: str | os.PathLike[str], source_dir: str | os.PathLike[str] | None = None, download: bool = False
) -> Path:
    """Put the four raw IDX files into ``raw_folder(data_dir)``, unless they are already there.

    Sources, in order: ``source_dir`` when given (it must hold the four files, each plain or
    ``.gz``); otherwise Debian's ``DEBIAN_DIR`` when it holds them; otherwise torchvision's
    download when ``download`` is true. The files are decompressed and checked in a temporary
    folder that is renamed into place, so a killed run leaves no partial dataset.

    Returns:
        The raw folder.

    Raises:
        FileNotFoundError: no source has the files (the message says how to obtain them), or
            ``source_dir`` lacks some.
        ValueError: a source file is malformed.
    """
    data_dir = Path(data_dir)
    raw = raw_folder(data_dir)
    try:
        verify_raw(data_dir)
        log.info("Fashion-MNIST files at %s are complete", raw)
        return raw
    except (FileNotFoundError, ValueError):
        pass
    if source_dir is not None:
        files = _source_files(Path(source_dir))
        if files is None:
            raise FileNotFoundError(
                f"--source-dir {source_dir} does not hold the four Fashion-MNIST files "
                f"({', '.join(RAW_FILES)}, each plain or .gz). " + how_to_obtain(data_dir)
            )
    else:
        files = _source_files(DEBIAN_DIR) if DEBIAN_DIR.is_dir() else None
    if files is None:
        if not download:
            raise FileNotFoundError(
                f"Fashion-MNIST not found: {raw} is missing or malformed and {DEBIAN_DIR} does not hold the files. "
                + how_to_obtain(data_dir)
            )
        from torchvision.datasets import FashionMNIST  # the download path only

        # Into a temporary root, checked, then renamed into place: torchvision would skip the
        # download if malformed files of the right names were already in `raw`.
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp_root = data_dir / f".download.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            for train in (True, False):
                FashionMNIST(str(tmp_root), train=train, download=True)
            _verify_files(raw_folder(tmp_root))
            raw.parent.mkdir(parents=True, exist_ok=True)
            replace_dir(raw_folder(tmp_root), raw)
        finally:
            if tmp_root.exists():
                shutil.rmtree(tmp_root)
        return raw

    raw.parent.mkdir(parents=True, exist_ok=True)
    tmp = raw.parent / f".raw.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for name, src in files.items():
            opener = gzip.open if src.suffix == ".gz" else open
            try:
                with opener(src, "rb") as fin, (tmp / name).open("wb") as fout:
                    shutil.copyfileobj(fin, fout, length=1 << 20)
            except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
                raise ValueError(f"cannot read {src} ({err}); replace the file") from err
        _verify_files(tmp)
        replace_dir(tmp, raw)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log.info("installed Fashion-MNIST from %s into %s", next(iter(files.values())).parent, raw)
    return raw


def load_split(data_dir: str | os.PathLike[str], train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 28, 28] and labels int64 [N] of the train (60,000) or test (10,000) split."""
    verify_raw(data_dir)
    prefix = "train" if train else "t10k"
    images = read_image_file(str(raw_folder(data_dir) / f"{prefix}-images-idx3-ubyte"))
    labels = read_label_file(str(raw_folder(data_dir) / f"{prefix}-labels-idx1-ubyte"))
    return images.numpy(), labels.numpy().astype(np.int64)


def subset_indices(labels: np.ndarray, classes: Iterable[int], per_class: int | None, seed: int) -> np.ndarray:
    """Sorted indices of the samples of ``classes``: all of them, or ``per_class`` drawn per class.

    The draw is a seeded permutation of each class (one generator for all classes, in the
    order given), so the training datamodule and the OOD lists take the same subset.

    Raises:
        ValueError: ``per_class`` is not positive or exceeds a class's size.
    """
    rng = np.random.default_rng(seed)
    chosen = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        if per_class is not None:
            if isinstance(per_class, bool) or int(per_class) != per_class or not 0 < per_class <= len(idx):
                raise ValueError(
                    f"per-class subset size {per_class!r} must be an integer in [1, {len(idx)}] "
                    f"(class {c} has {len(idx)} samples), or null for all"
                )
            idx = rng.permutation(idx)[: int(per_class)]
        chosen.append(idx)
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def _split_val(labels: np.ndarray, indices: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per class, ``VAL_FRACTION`` of ``indices`` (at least one) to val and the rest to test; both sorted."""
    subset = labels[indices]
    val, test = stratified_split(subset, np.unique(subset), (VAL_FRACTION,), rng, min_first=1)
    return indices[val], indices[test]


def _write_fashion(
    images_root: Path, split: str, images: np.ndarray, labels: np.ndarray, indices: np.ndarray
) -> dict[int, str]:
    """Save each selected image once as ``fashion_mnist/<split>/<class>/<index>.png``; index -> relative path."""
    paths = {}
    for i in indices:
        rel = f"fashion_mnist/{split}/{int(labels[i])}/{int(i):05d}.png"
        save_png(images[i], images_root / rel)
        paths[int(i)] = rel
    return paths


def _write_digits(images_root: Path, count: int | None, rng: np.random.Generator) -> list[tuple[str, int]]:
    """scikit-learn's 8×8 digits (values 0–16), bilinearly upscaled to 28×28 grey; ``count`` drawn if given."""
    digits = load_digits()
    order = np.arange(len(digits.target))
    if count is not None and count < len(order):
        order = np.sort(rng.choice(order, size=count, replace=False))
    entries = []
    for i in order:
        rel = f"digits/{int(digits.target[i])}/{int(i):04d}.png"
        save_png(upscale_digit(digits.images[i], IMAGE_SIZE), images_root / rel)
        entries.append((rel, -1))
    return entries


def protocol_settings(
    train_per_class: int | None, test_per_class: int | None, ood_count: int | None, seed: int
) -> dict[str, Any]:
    """The parameters a build is made with (stored in each ``protocol.json``; equal ones are reused)."""
    return {
        "train_per_class": train_per_class,
        "test_per_class": test_per_class,
        "ood_count": ood_count,
        "seed": seed,
        "version": FORMAT_VERSION,
    }


def _is_up_to_date(data_dir: Path, settings: dict[str, Any]) -> bool:
    for name in PROTOCOL_NAMES:
        path = data_dir / "benchmark_imglist" / name / PROTOCOL_FILE
        try:
            protocol = read_json(path)
        except (FileNotFoundError, ValueError):
            return False
        if protocol.get("settings") != settings:
            return False
        lists = [protocol["id"][k] for k in ("train", "val", "test")] + [protocol["ood"]["val"]]
        lists += [*protocol["ood"]["near"].values(), *protocol["ood"]["far"].values()]
        if not all((path.parent / name).is_file() for name in lists):
            return False
    return True


def _build(root: Path, data_dir: Path, settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Write images_classic/ and benchmark_imglist/ of both protocols under ``root``; return the protocols."""
    images_root = root / "images_classic"
    val_rng, digit_rng, noise_rng, photo_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(settings["seed"]).spawn(4)
    )
    train_images, train_labels = load_split(data_dir, train=True)
    test_images, test_labels = load_split(data_dir, train=False)
    # The same subsets as the training datamodule: subset_indices with the data seed, all ten classes.
    train_idx = subset_indices(train_labels, range(10), settings["train_per_class"], settings["seed"])
    test_idx = subset_indices(test_labels, range(10), settings["test_per_class"], settings["seed"])
    val_idx, id_test_idx = _split_val(test_labels, test_idx, val_rng)

    train_paths = _write_fashion(images_root, "train", train_images, train_labels, train_idx)
    test_paths = _write_fashion(images_root, "test", test_images, test_labels, test_idx)
    ood_count = settings["ood_count"]
    far = {
        "digits": _write_digits(images_root, ood_count, digit_rng),
        "noise": write_noise(
            images_root, min(NUM_NOISE, ood_count or NUM_NOISE), IMAGE_SIZE, noise_rng, BLUR_RADIUS_RANGE, channels=1
        ),
    }
    photos = write_photo_patches(
        images_root, min(NUM_PHOTOS, ood_count or NUM_PHOTOS), IMAGE_SIZE, photo_rng, PHOTO_CROP_RANGE, grey=True
    )

    def entries(paths: dict[int, str], labels: np.ndarray, indices: np.ndarray, classes: Sequence[int]) -> list:
        remap = {c: i for i, c in enumerate(classes)}
        return [(paths[int(i)], remap[int(labels[i])]) for i in indices if int(labels[i]) in remap]

    pixels = train_images[train_idx].astype(np.float64) / 255.0
    mean, std = float(pixels.mean()), float(pixels.std())
    protocols = {}
    for name in PROTOCOL_NAMES:
        classes = tuple(range(10)) if name == "fashion_mnist" else SPLIT_ID_CLASSES
        list_dir = root / "benchmark_imglist" / name
        id_lists = {split: f"{split}_{name}.txt" for split in ("train", "val", "test")}
        write_image_list(list_dir / id_lists["train"], entries(train_paths, train_labels, train_idx, classes))
        write_image_list(list_dir / id_lists["val"], entries(test_paths, test_labels, val_idx, classes))
        write_image_list(list_dir / id_lists["test"], entries(test_paths, test_labels, id_test_idx, classes))
        write_image_list(list_dir / "val_ood.txt", photos)
        near: dict[str, str] = {}
        if name == "fashion_mnist_split":
            near_entries = [(test_paths[int(i)], -1) for i in test_idx if int(test_labels[i]) in SPLIT_NEAR_CLASSES]
            near["fashion_mnist_6to9"] = "test_fashion_mnist_6to9.txt"
            write_image_list(list_dir / near["fashion_mnist_6to9"], near_entries)
        far_lists = {key: f"test_{key}.txt" for key in far}
        for key, list_name in far_lists.items():
            write_image_list(list_dir / list_name, far[key])
        protocol = {
            "id_name": name,
            "num_classes": len(classes),
            "classes": [CLASSES[c] for c in classes],
            "image_size": IMAGE_SIZE,
            "settings": settings,
            "id": id_lists,
            "ood": {"val": "val_ood.txt", "near": near, "far": far_lists},
            # The training normalisation (NORMALIZE), as the OOD study's `default` preprocessor uses it.
            "normalize": {"mean": list(NORMALIZE["mean"]), "std": list(NORMALIZE["std"])},
            "train_pixel_stats": {"mean": mean, "std": std},
        }
        write_text(list_dir / PROTOCOL_FILE, json.dumps(protocol, indent=2) + "\n")
        protocols[name] = protocol
    return protocols


def prepare_ood_protocols(
    data_dir: str | os.PathLike[str],
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    ood_count: int | None = None,
    seed: int = 1997,
) -> dict[str, Any]:
    """Write both OOD protocols (see the module docstring) under ``data_dir``, unless already there.

    Needs the raw files (``install_raw``). Everything is built in a temporary folder; then the
    old ``benchmark_imglist/`` loses its protocol files, ``images_classic/`` and
    ``benchmark_imglist/`` are renamed into place (lists and ``protocol.json`` last), so an
    interrupted build is never mistaken for a finished one.

    Returns:
        The settings of the build.

    Raises:
        FileNotFoundError / ValueError: the raw files are missing or malformed.
        ValueError: a subset size is out of range.
    """
    data_dir = Path(data_dir)
    for key, value in (
        ("train_per_class", train_per_class),
        ("test_per_class", test_per_class),
        ("ood_count", ood_count),
    ):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{key}={value!r} must be a positive integer or None (all)")
    settings = protocol_settings(train_per_class, test_per_class, ood_count, seed)
    verify_raw(data_dir)
    if _is_up_to_date(data_dir, settings):
        log.info("Fashion-MNIST OOD protocols under %s are up to date", data_dir)
        return settings
    tmp = data_dir / f".ood.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        protocols = _build(tmp, data_dir, settings)
        for name in PROTOCOL_NAMES:
            (data_dir / "benchmark_imglist" / name / PROTOCOL_FILE).unlink(missing_ok=True)
        replace_dir(tmp / "images_classic", data_dir / "images_classic")
        replace_dir(tmp / "benchmark_imglist", data_dir / "benchmark_imglist")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    for name, protocol in protocols.items():
        log.info("wrote the %s protocol under %s (%d ID classes)", name, data_dir, protocol["num_classes"])
    return settings


def prepare_fashion_mnist(
    output_root: str | os.PathLike[str],
    source_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    ood_count: int | None = None,
    seed: int = 1997,
) -> Path:
    """Install the raw files (``install_raw``), then write both OOD protocols (``prepare_ood_protocols``).

    Returns:
        ``output_root``.

    Raises:
        FileNotFoundError: no source holds the raw files (the message says how to obtain them).
        ValueError: a malformed source file, or a subset size out of range.
    """
    install_raw(output_root, source_dir, download)
    prepare_ood_protocols(output_root, train_per_class, test_per_class, ood_count, seed)
    return Path(output_root)
