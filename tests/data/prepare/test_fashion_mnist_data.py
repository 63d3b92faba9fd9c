"""Fashion-MNIST on disk (src/data/prepare/fashion_mnist_data.py): installing the IDX files and the two OOD protocols.

The fixtures (tests/data/conftest.py) write tiny sets in the real on-disk format (IDX headers, gzipped
as Debian ships them).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src.data.datamodule import FashionMNISTDataModule
from src.data.dataset.imglist import read_image_list
from src.data.prepare import fashion_mnist_data as fm
from src.ood.protocol import get_protocol
from tests.data.conftest import FMNIST_TEST_PER_CLASS as TEST_PER_CLASS
from tests.data.conftest import FMNIST_TRAIN_PER_CLASS as TRAIN_PER_CLASS
from tests.data.conftest import idx_bytes
from tests.data.conftest import write_fashion_mnist_source as write_source

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


def test_install_uses_the_debian_folder_by_default(tmp_path: Path, fashion_mnist_source, monkeypatch) -> None:
    monkeypatch.setattr(fm, "DEBIAN_DIR", fashion_mnist_source[0])
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


# ---------------------------------------------------------------------------------------- OOD protocols


def test_protocol_lists(fashion_mnist_dir: Path) -> None:
    full = get_protocol("fashion_mnist", fashion_mnist_dir)
    split = get_protocol("fashion_mnist_split", fashion_mnist_dir)
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
    images, labels = fm.load_split(fashion_mnist_dir, train=True)
    listed = sorted((int(Path(p).stem), y, p) for p, y in lists["fashion_mnist", "id/train"])
    dm = FashionMNISTDataModule(
        data_dir=fashion_mnist_dir, task="supervised", train_per_class=8, subset_seed=3, val_split=0
    )
    dm.setup("fit")
    np.testing.assert_array_equal(dm.train_ds.dataset.images, images[[i for i, _, _ in listed]])
    for index, label, path in listed[:5]:
        np.testing.assert_array_equal(np.asarray(Image.open(full.images_root / path)), images[index])
        assert label == labels[index]
    # every image decodes to 28x28 grey, and the loaders give the three channels
    x, _ = next(iter(full.loader("ood/far/digits", "default", batch_size=4)))
    assert x.shape == (4, 3, 28, 28)


def test_protocols_are_reused_and_rebuilt(fashion_mnist_dir: Path, tmp_path: Path) -> None:
    stamp = os.stat(fashion_mnist_dir / "benchmark_imglist" / "fashion_mnist" / "protocol.json").st_mtime_ns
    fm.prepare_ood_protocols(fashion_mnist_dir, train_per_class=8, test_per_class=10, ood_count=12, seed=3)
    assert os.stat(fashion_mnist_dir / "benchmark_imglist" / "fashion_mnist" / "protocol.json").st_mtime_ns == stamp
    with pytest.raises(ValueError, match="ood_count"):
        fm.prepare_ood_protocols(fashion_mnist_dir, ood_count=0)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        fm.prepare_ood_protocols(tmp_path / "empty")
