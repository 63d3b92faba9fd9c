"""Fashion-MNIST: installing the IDX files, the datamodules and the two OOD protocols.

Fixtures write tiny sets in the real on-disk format (IDX headers, gzipped as Debian ships them);
``test_real_files`` reads Debian's package (installed by CI) through the datamodule.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from src.data import fashion_mnist as fm
from src.data.datamodule import DATAMODULES, FashionMNISTDataModule
from src.data.dataset.imglist import read_image_list
from src.ood.protocol import get_protocol

TRAIN_PER_CLASS, TEST_PER_CLASS = 12, 10


def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` (uint8) as an IDX file: magic 0x0000080<ndim>, big-endian int32 dims, then the bytes."""
    header = np.array([0x800 + array.ndim, *array.shape], dtype=">i4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def synthetic_split(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose mean grey level encodes the class (so a test can trace relabelling), shuffled."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), n_per_class)
    rng.shuffle(labels)
    images = rng.integers(0, 20, size=(len(labels), 28, 28)).astype(np.uint8) + (labels * 20)[:, None, None].astype(
        np.uint8
    )
    return images, labels.astype(np.uint8)


def write_source(folder: Path, gz: bool = True) -> dict[str, np.ndarray]:
    """The four files as Debian ships them (``.gz``) or plain; returns the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y = synthetic_split(TRAIN_PER_CLASS, 0)
    test_x, test_y = synthetic_split(TEST_PER_CLASS, 1)
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


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    folder = tmp_path_factory.mktemp("debian") / "fashion-mnist"
    return folder, write_source(folder)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, source) -> Path:
    root = tmp_path_factory.mktemp("fmnist") / "fashion_mnist"
    fm.install_raw(root, source[0])
    fm.prepare_ood_protocols(root, train_per_class=8, test_per_class=10, ood_count=12, seed=3)
    return root


# ---------------------------------------------------------------------------------------- install


@pytest.mark.parametrize("gz", [True, False])
def test_install_from_a_source_folder(tmp_path: Path, gz: bool) -> None:
    arrays = write_source(tmp_path / "src", gz=gz)
    raw = fm.install_raw(tmp_path / "data", tmp_path / "src")
    assert raw == tmp_path / "data" / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(fm.RAW_FILES)  # no temporary folder left
    images, labels = fm.load_split(tmp_path / "data", train=True)
    np.testing.assert_array_equal(images, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(labels, arrays["train-labels-idx1-ubyte"])
    # torchvision's own reader sees the same files
    from torchvision.datasets import FashionMNIST

    tv = FashionMNIST(str(tmp_path / "data"), train=False, download=False)
    np.testing.assert_array_equal(tv.data.numpy(), arrays["t10k-images-idx3-ubyte"])


def test_install_uses_the_debian_folder_by_default(tmp_path: Path, source, monkeypatch) -> None:
    monkeypatch.setattr(fm, "DEBIAN_DIR", source[0])
    fm.install_raw(tmp_path / "data")
    assert fm.verify_raw(tmp_path / "data")["t10k-images-idx3-ubyte"] == 10 * TEST_PER_CLASS
    stamp = (fm.raw_folder(tmp_path / "data") / "train-images-idx3-ubyte").stat().st_mtime_ns
    fm.install_raw(tmp_path / "data")  # complete: nothing rewritten
    assert (fm.raw_folder(tmp_path / "data") / "train-images-idx3-ubyte").stat().st_mtime_ns == stamp


def test_missing_data_says_how_to_get_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "no-such-dir")
    with pytest.raises(FileNotFoundError, match="apt install dataset-fashion-mnist") as err:
        fm.install_raw(tmp_path / "data")
    assert "--download" in str(err.value) and str(fm.raw_folder(tmp_path / "data")) in str(err.value)
    with pytest.raises(FileNotFoundError, match="does not hold the four"):
        fm.install_raw(tmp_path / "data", tmp_path)
    dm = FashionMNISTDataModule(data_dir=tmp_path / "data", task="ssl")
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        dm.setup("fit")
    assert not (tmp_path / "data" / "FashionMNIST").exists()


def test_download_path_replaces_malformed_files(tmp_path: Path, monkeypatch) -> None:
    """--download: torchvision's download (faked: no network here) into a temporary root, then renamed."""
    import torchvision.datasets

    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "no-such-dir")
    calls = []

    class FakeFashionMNIST:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            calls.append((Path(root).parent, train, download))
            write_source(Path(root) / "FashionMNIST" / "raw", gz=False)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    raw = fm.raw_folder(tmp_path / "data")
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte").write_bytes(b"broken")
    fm.install_raw(tmp_path / "data", download=True)
    assert [c[1:] for c in calls] == [(True, True), (False, True)] and calls[0][0] == tmp_path / "data"
    assert fm.verify_raw(tmp_path / "data")["train-images-idx3-ubyte"] == 10 * TRAIN_PER_CLASS
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["FashionMNIST"]  # no temporary root left


def test_malformed_files_are_refused(tmp_path: Path) -> None:
    write_source(tmp_path / "src", gz=False)
    path = tmp_path / "src" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match="truncated"):
        fm.install_raw(tmp_path / "data", tmp_path / "src")
    assert not fm.raw_folder(tmp_path / "data").exists()  # nothing half-installed
    write_source(tmp_path / "src2", gz=False)
    (tmp_path / "src2" / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(3, dtype=np.uint8)))
    with pytest.raises(ValueError, match="different sets"):
        fm.install_raw(tmp_path / "data", tmp_path / "src2")
    write_source(tmp_path / "src3", gz=True)
    (tmp_path / "src3" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="cannot read"):
        fm.install_raw(tmp_path / "data", tmp_path / "src3")
    with pytest.raises(ValueError, match="expected magic 2049"):
        fm.check_idx(tmp_path / "src2" / "train-images-idx3-ubyte", 2049, ())


# ---------------------------------------------------------------------------------------- datamodule


def test_registry_and_subset_helpers() -> None:
    assert DATAMODULES["fashion_mnist"] is DATAMODULES["fashion_mnist_split"] is FashionMNISTDataModule
    labels = np.repeat(np.arange(3), 5)
    a = fm.subset_indices(labels, [0, 1, 2], 2, seed=0)
    assert len(a) == 6 and np.all(np.bincount(labels[a]) == 2) and np.all(np.diff(a) > 0)
    # the first classes draw the same subset whatever classes follow (datamodule vs OOD lists)
    np.testing.assert_array_equal(fm.subset_indices(labels, [0, 1], 2, seed=0), a[labels[a] < 2])
    assert len(fm.subset_indices(labels, [0, 1, 2], None, seed=0)) == 15
    with pytest.raises(ValueError, match=r"in \[1, 5\]"):
        fm.subset_indices(labels, [0], 6, seed=0)


def test_ssl_batch_has_three_views(data_dir: Path) -> None:
    dm = FashionMNISTDataModule(data_dir=data_dir, task="ssl_bayes_z", batch_size=8, val_split=0.25)
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_ds), len(dm.val_ds), len(dm.test_ds)) == (90, 30, 100)
    (v1, v2, v3), y = next(iter(dm.train_dataloader()))
    for v in (v1, v2, v3):
        assert v.shape == (8, 3, 28, 28) and v.dtype == torch.float32
        torch.testing.assert_close(v[:, 0], v[:, 1])  # grey expanded to three equal channels
    assert y.dtype == torch.int64 and y.shape == (8,)
    # view 3 is the un-augmented image, normalised with the grey statistics
    (_, _, v3), y = next(iter(dm.test_dataloader()))
    images, labels = fm.load_split(data_dir, train=False)
    expected = (torch.from_numpy(images[0]).float() / 255 - fm.NORMALIZE["mean"][0]) / fm.NORMALIZE["std"][0]
    torch.testing.assert_close(v3[0, 0], expected, atol=1e-6, rtol=0)
    assert int(y[0]) == int(labels[0])


def test_split_classes_and_subsets(data_dir: Path) -> None:
    dm = FashionMNISTDataModule(
        data_dir=data_dir,
        task="supervised",
        classes=[3, 0, 5],
        train_per_class="None",
        test_per_class=4,
        val_split=0,
        batch_size=12,
    )
    dm.setup(None)
    assert len(dm.train_ds) == 3 * TRAIN_PER_CLASS and len(dm.test_ds) == 12
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape[1:] == (3, 28, 28)
    # labels are the positions in `classes`; the image grey level still tells the original class
    originals = (x[:, 0] * fm.NORMALIZE["std"][0] + fm.NORMALIZE["mean"][0]).mean(dim=(1, 2)) * 255 // 20
    assert {(int(a), int(b)) for a, b in zip(y, originals)} <= {(0, 3), (1, 0), (2, 5)}
    for bad in ([], [0, 0], [10]):
        with pytest.raises(ValueError, match="distinct class ids"):
            FashionMNISTDataModule(data_dir=data_dir, task="ssl", classes=bad)
    with pytest.raises(ValueError, match="dataset.train_per_class"):
        FashionMNISTDataModule(data_dir=data_dir, task="ssl", train_per_class=0)
    # a val split smaller than one batch (drop_last) is refused before any training
    small = FashionMNISTDataModule(data_dir=data_dir, task="ssl", train_per_class=2, batch_size=8)
    small.setup("fit")
    with pytest.raises(ValueError, match=r"val split .* has 4 samples, fewer than dataset.batch_size=8"):
        small.check_batches()
    fits = FashionMNISTDataModule(data_dir=data_dir, task="ssl", train_per_class=2, batch_size=4)
    fits.setup("fit")
    fits.check_batches()


# ---------------------------------------------------------------------------------------- OOD protocols


def test_protocol_lists(data_dir: Path) -> None:
    full = get_protocol("fashion_mnist", data_dir)
    split = get_protocol("fashion_mnist_split", data_dir)
    assert full.near == {} and set(full.far) == {"digits", "noise"} and full.num_classes == 10
    assert set(split.near) == {"fashion_mnist_6to9"} and split.num_classes == 6
    lists = {
        (p.id_name, key): read_image_list(p.list_dir / name)
        for p in (full, split)
        for key, name in p.all_lists().items()
    }
    assert len(lists["fashion_mnist", "id/train"]) == 80  # train_per_class=8
    assert len(lists["fashion_mnist", "id/val"]) + len(lists["fashion_mnist", "id/test"]) == 100
    assert not {p for p, _ in lists["fashion_mnist", "id/val"]} & {p for p, _ in lists["fashion_mnist", "id/test"]}
    assert {y for _, y in lists["fashion_mnist_split", "id/train"]} == set(range(6))
    near = lists["fashion_mnist_split", "ood/near/fashion_mnist_6to9"]
    assert len(near) == 40 and {int(p.split("/")[2]) for p, _ in near} == {6, 7, 8, 9}
    assert {y for _, y in near} == {-1}
    for key in ("ood/far/digits", "ood/far/noise", "ood/val"):
        assert len(lists["fashion_mnist", key]) == 12  # ood_count
    # the ID train list is the datamodule's subset: same images (saved losslessly), same labels
    images, labels = fm.load_split(data_dir, train=True)
    listed = sorted((int(Path(p).stem), y, p) for p, y in lists["fashion_mnist", "id/train"])
    dm = FashionMNISTDataModule(data_dir=data_dir, task="supervised", train_per_class=8, subset_seed=3, val_split=0)
    dm.setup("fit")
    np.testing.assert_array_equal(dm.train_ds.dataset.images, images[[i for i, _, _ in listed]])
    for index, label, path in listed[:5]:
        np.testing.assert_array_equal(np.asarray(Image.open(full.images_root / path)), images[index])
        assert label == labels[index]
    # every image decodes to 28x28 grey, and the loaders give the three channels
    x, _ = next(iter(full.loader("ood/far/digits", "default", batch_size=4)))
    assert x.shape == (4, 3, 28, 28)


def test_protocols_are_reused_and_rebuilt(data_dir: Path, tmp_path: Path) -> None:
    stamp = os.stat(data_dir / "benchmark_imglist" / "fashion_mnist" / "protocol.json").st_mtime_ns
    fm.prepare_ood_protocols(data_dir, train_per_class=8, test_per_class=10, ood_count=12, seed=3)
    assert os.stat(data_dir / "benchmark_imglist" / "fashion_mnist" / "protocol.json").st_mtime_ns == stamp
    with pytest.raises(ValueError, match="ood_count"):
        fm.prepare_ood_protocols(data_dir, ood_count=0)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        fm.prepare_ood_protocols(tmp_path / "empty")


# ---------------------------------------------------------------------------------------- the real files


@pytest.mark.skipif(
    not (fm.DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed (CI installs it: .ci/run)",
)
def test_real_files(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("real") / "fashion_mnist"
    dm = FashionMNISTDataModule(data_dir=root, task="ssl", batch_size=16, num_workers=0)
    dm.setup(None)  # installs from /usr/share/datasets/fashion-mnist
    counts = fm.verify_raw(root)
    assert counts["train-images-idx3-ubyte"] == fm.NUM_TRAIN and counts["t10k-images-idx3-ubyte"] == fm.NUM_TEST
    train_x, train_y = fm.load_split(root, train=True)
    test_x, test_y = fm.load_split(root, train=False)
    assert train_x.shape == (60000, 28, 28) and test_x.shape == (10000, 28, 28) and train_x.dtype == np.uint8
    assert np.all(np.bincount(train_y) == 6000) and np.all(np.bincount(test_y) == 1000)
    assert train_x.min() == 0 and train_x.max() == 255
    pixels = train_x.astype(np.float64) / 255
    assert pixels.mean() == pytest.approx(fm.NORMALIZE["mean"][0], abs=1e-4)
    assert pixels.std() == pytest.approx(fm.NORMALIZE["std"][0], abs=1e-4)
    assert (len(dm.train_ds), len(dm.val_ds), len(dm.test_ds)) == (48000, 12000, 10000)
    (v1, v2, v3), y = next(iter(dm.train_dataloader()))
    assert all(v.shape == (16, 3, 28, 28) for v in (v1, v2, v3)) and 0 <= int(y.min()) <= int(y.max()) <= 9
    lo, hi = -fm.NORMALIZE["mean"][0] / fm.NORMALIZE["std"][0], (1 - fm.NORMALIZE["mean"][0]) / fm.NORMALIZE["std"][0]
    assert float(v3.min()) >= lo - 1e-5 and float(v3.max()) <= hi + 1e-5
    assert not torch.equal(v1, v2)  # two random views
