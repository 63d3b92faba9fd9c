"""Tiny datasets in the real on-disk formats, written into ``tmp_path``.

CIFAR: torchvision's python-pickle batches. The original files were pickled by Python 2, whose
``str`` keys and array payloads load as ``str`` under ``encoding="latin1"`` (what torchvision
uses) and as ``bytes`` under ``encoding="bytes"`` (what the CIFAR web page's ``unpickle``
uses, hence the often-quoted ``b'data'``). ``_Py2Pickler`` writes ``bytes`` with the Python 2
string opcodes so the fixture files decode both ways exactly like the originals.

torchvision verifies the files by md5 against the official archive (``_check_integrity`` for the
batches and ``_load_meta`` for the meta file, both through the module-level
``torchvision.datasets.cifar.check_integrity``). A fixture cannot match those digests, so the
``cifar_integrity_ok`` fixture replaces only that function with a presence check; parsing, the
HWC conversion and the label handling stay torchvision's.

ImageNet: an ``ImageFolder`` tree of small JPEGs, ``<root>/{train,val}/<wnid>/*.JPEG``.

Transfer datasets (linear probe): torchvision's ``SUN397/`` tree plus ``Partitions/Training_01.txt`` /
``Testing_01.txt``, torchvision's ``flowers-102/{jpg/, imagelabels.mat, setid.mat}`` (scipy ``savemat``)
and an ImageNet ``{train,val}/<wnid>/*.JPEG`` root, all under ``transfer_root``.

Fashion-MNIST: the four IDX files (gzipped as Debian ships them, or plain) of 10 classes whose
mean grey level encodes the class; ``fashion_mnist_dir`` installs them and writes both OOD protocols.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

WNIDS = ("n01440764", "n01443537", "n02102040")


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler: its dispatch table can be extended
    """Protocol-2 pickler that writes ``bytes`` as Python 2 ``str`` (SHORT_BINSTRING / BINSTRING)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def dump_py2(obj: object, path: Path) -> None:
    """Pickle ``obj`` as Python 2 would (bytes → str opcodes)."""
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    path.write_bytes(buffer.getvalue())


def _batch(rng: np.random.Generator, n: int, num_classes: int, label_key: bytes, name: bytes) -> dict[bytes, object]:
    """One batch dict: ``data`` uint8 [n, 3072] (R, G, B planes of 32×32), labels as a list of ints."""
    batch: dict[bytes, object] = {
        b"batch_label": name,
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        label_key: [int(v) for v in rng.integers(0, num_classes, size=n)],
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = [int(v) // 5 for v in batch[label_key]]  # type: ignore[attr-defined]
    return batch


def write_cifar10(data_dir: Path, per_batch: int = 20, n_test: int = 20, seed: int = 0) -> dict[str, dict]:
    """``<data_dir>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``; returns the batches."""
    rng = np.random.default_rng(seed)
    folder = data_dir / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written: dict[str, dict] = {}
    for i in range(1, 6):
        written[f"data_batch_{i}"] = _batch(rng, per_batch, 10, b"labels", f"training batch {i} of 5".encode())
    written["test_batch"] = _batch(rng, n_test, 10, b"labels", b"testing batch 1 of 1")
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    written["batches.meta"] = {b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072}
    for name, obj in written.items():
        dump_py2(obj, folder / name)
    return written


def write_cifar100(data_dir: Path, n_train: int = 100, n_test: int = 20, seed: int = 0) -> dict[str, dict]:
    """``<data_dir>/cifar-100-python/{train, test, meta}``; returns the written dicts."""
    rng = np.random.default_rng(seed)
    folder = data_dir / "cifar-100-python"
    folder.mkdir(parents=True)
    written: dict[str, dict] = {
        "train": _batch(rng, n_train, 100, b"fine_labels", b"training batch 1 of 1"),
        "test": _batch(rng, n_test, 100, b"fine_labels", b"testing batch 1 of 1"),
        "meta": {
            b"fine_label_names": [f"fine_{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse_{i}".encode() for i in range(20)],
        },
    }
    for name, obj in written.items():
        dump_py2(obj, folder / name)
    return written


@pytest.fixture
def cifar_integrity_ok(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace torchvision's CIFAR md5 check with a presence check (see the module docstring)."""
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


@pytest.fixture
def cifar10_dir(tmp_path: Path, cifar_integrity_ok: None) -> Path:
    """A CIFAR-10 root with 5 × 20 train and 20 test images."""
    root = tmp_path / "cifar10"
    write_cifar10(root)
    return root


@pytest.fixture
def cifar10_unverified_dir(tmp_path: Path) -> Path:
    """The CIFAR-10 fixture files without the integrity patch (they fail torchvision's md5 check)."""
    root = tmp_path / "cifar10"
    write_cifar10(root)
    return root


@pytest.fixture
def cifar100_dir(tmp_path: Path, cifar_integrity_ok: None) -> Path:
    """A CIFAR-100 root with 100 train and 20 test images."""
    root = tmp_path / "cifar100"
    write_cifar100(root)
    return root


def write_jpeg(path: Path, size: tuple[int, int], seed: int, mode: str = "RGB") -> None:
    """A random-noise JPEG of ``size`` (width, height)."""
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode=mode).save(path, format="JPEG")


def write_image_folder(
    root: Path, wnids: Sequence[str] = WNIDS, n_train: int = 4, n_val: int = 2, size: tuple[int, int] = (40, 32)
) -> None:
    """``<root>/train/<wnid>/<wnid>_<i>.JPEG`` and ``<root>/val/<wnid>/ILSVRC2012_val_<k>.JPEG``.

    The first train image of every class is grayscale (mode L), like a few real ImageNet files.
    """
    seed = 0
    for wnid in wnids:
        for i in range(n_train):
            seed += 1
            write_jpeg(root / "train" / wnid / f"{wnid}_{i}.JPEG", size, seed, mode="L" if i == 0 else "RGB")
        for _ in range(n_val):
            seed += 1
            write_jpeg(root / "val" / wnid / f"ILSVRC2012_val_{seed:08d}.JPEG", (size[1], size[0]), seed)


@pytest.fixture
def imagenet_dir(tmp_path: Path) -> Path:
    """An ImageNet root: 3 wnids, 4 train and 2 val images each."""
    root = tmp_path / "imagenet"
    write_image_folder(root)
    return root


@pytest.fixture
def make_image_folder() -> Callable[..., None]:
    """The ``write_image_folder`` helper, for tests that build their own trees."""
    return write_image_folder


# ---------------------------------------------------------------------------------------- Fashion-MNIST

FMNIST_TRAIN_PER_CLASS, FMNIST_TEST_PER_CLASS = 12, 10


def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` (uint8) as an IDX file: magic 0x0000080<ndim>, big-endian int32 dims, then the bytes."""
    header = np.array([0x800 + array.ndim, *array.shape], dtype=">i4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def synthetic_fashion_split(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose mean grey level encodes the class (so a test can trace relabelling), shuffled."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), n_per_class)
    rng.shuffle(labels)
    images = rng.integers(0, 20, size=(len(labels), 28, 28)).astype(np.uint8) + (labels * 20)[:, None, None].astype(
        np.uint8
    )
    return images, labels.astype(np.uint8)


def write_fashion_mnist_source(folder: Path, gz: bool = True) -> dict[str, np.ndarray]:
    """The four Fashion-MNIST files as Debian ships them (``.gz``) or plain; returns the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y = synthetic_fashion_split(FMNIST_TRAIN_PER_CLASS, 0)
    test_x, test_y = synthetic_fashion_split(FMNIST_TEST_PER_CLASS, 1)
    arrays = {
        "train-images-idx3-ubyte": train_x,
        "train-labels-idx1-ubyte": train_y,
        "t10k-images-idx3-ubyte": test_x,
        "t10k-labels-idx1-ubyte": test_y,
    }
    for name, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


@pytest.fixture(scope="session")
def fashion_mnist_source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """A folder with the four gzipped files, and the arrays in them."""
    folder = tmp_path_factory.mktemp("debian") / "fashion-mnist"
    return folder, write_fashion_mnist_source(folder)


@pytest.fixture(scope="session")
def fashion_mnist_dir(tmp_path_factory: pytest.TempPathFactory, fashion_mnist_source) -> Path:
    """A Fashion-MNIST root: the raw files installed and both OOD protocols written (8 / 10 per class, 12 OOD)."""
    from src.data.prepare.fashion_mnist_data import install_raw, prepare_ood_protocols

    root = tmp_path_factory.mktemp("fmnist") / "fashion_mnist"
    install_raw(root, fashion_mnist_source[0])
    prepare_ood_protocols(root, train_per_class=8, test_per_class=10, ood_count=12, seed=3)
    return root


# ---------------------------------------------------------------------------------------- transfer datasets

SUN_CLASSES = ("/a/abbey", "/a/apartment_building/outdoor", "/b/bedroom")
IMAGE_SIDE = 12


def write_image(path: Path, rng: np.random.Generator, side: int = IMAGE_SIDE, fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size=(side, side + 3, 3), dtype=np.uint8)).save(path, format=fmt)


def write_sun397(root: Path, per_split: int = 2, seed: int = 0) -> Path:
    """``root/SUN397``: 3 classes (one with a sub-class), ``per_split`` train and test images each, one extra image."""
    rng = np.random.default_rng(seed)
    data = root / "SUN397"
    data.mkdir(parents=True)
    (data / "ClassName.txt").write_text("".join(f"{c}\n" for c in SUN_CLASSES))
    train, test = [], []
    for c in SUN_CLASSES:
        for i in range(2 * per_split):
            rel = f"{c}/sun_{c.replace('/', '')}{i:03d}.jpg"
            write_image(data / rel.lstrip("/"), rng)
            (train if i < per_split else test).append(rel)
    write_image(data / "b" / "bedroom" / "sun_notinpartition.jpg", rng)  # on disk, in no partition
    (data / "Partitions").mkdir()
    # a duplicated line counts once (the reference reads the lines into a set)
    (data / "Partitions" / "Training_01.txt").write_text("\n".join([*train, train[0]]) + "\n")
    (data / "Partitions" / "Testing_01.txt").write_text("\n".join(test) + "\n")
    return root


def write_flowers102(root: Path, num_classes: int = 3, seed: int = 0) -> Path:
    """``root/flowers-102``: per class 2 train, 2 val and 1 test image; labels 1-based in the .mat file."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    base = root / "flowers-102"
    labels, trn, val, tst = [], [], [], []
    image_id = 0
    for c in range(num_classes):
        for part in (trn, trn, val, val, tst):
            image_id += 1
            labels.append(c + 1)
            part.append(image_id)
            write_image(base / "jpg" / f"image_{image_id:05d}.jpg", rng)
    savemat(base / "imagelabels.mat", {"labels": np.asarray([labels], dtype=np.uint8)})
    savemat(
        base / "setid.mat",
        {k: np.asarray([v], dtype=np.uint16) for k, v in (("trnid", trn), ("valid", val), ("tstid", tst))},
    )
    return root


def write_imagenet(root: Path, train_per_class: int = 3, val_per_class: int = 2, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for wnid in WNIDS:
            for i in range(n):
                write_image(root / split / wnid / f"{wnid}_{i}.JPEG", rng)
    return root


@pytest.fixture(scope="session")
def transfer_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``SUN397/`` and ``flowers-102/`` (the probe's ``data/datasets``) and ``imagenet/``."""
    root = tmp_path_factory.mktemp("datasets")
    write_sun397(root)
    write_flowers102(root)
    write_imagenet(root / "imagenet")
    return root


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo dataset at 8 px."""
    from src.data.prepare.demo_data import prepare_demo_data

    return prepare_demo_data(tmp_path_factory.mktemp("demo_data") / "demo", image_size=8)
