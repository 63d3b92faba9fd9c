"""Bad datasets, images, image lists and batch sizes get an error naming the path or key and the fix."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

from src.data.datamodule import CIFAR10DataModule, DemoDataModule, ImageNetDataModule
from src.data.dataset import ImageDecodeError, ImageListDataset, ImageListError, load_rgb_image
from src.data.prepare.demo_data import prepare_demo_data
from src.train.pipeline import build_datamodule
from tests.data.conftest import write_cifar10, write_image_folder

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
CONF = SRC / "experiments" / "conf"


def _q(path: Path | str) -> str:
    """``path`` as a regex that matches it literally."""
    return re.escape(str(path))


@pytest.fixture
def cifar_integrity_ok(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision's CIFAR md5 check replaced by a presence check (fixture files cannot match the digests)."""
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny) demo dataset: image lists, images and protocol.json."""
    return prepare_demo_data(tmp_path_factory.mktemp("demo") / "demo", image_size=8)


# ============================================================================ 1. missing dataset root
@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda root: CIFAR10DataModule(root, task="ssl"),
            r"CIFAR-10 not found at .*missing data_batch_1.*download=true",
        ),
        (
            lambda root: ImageNetDataModule(root, task="ssl"),
            r"ImageNet not found at .*missing train/ and val/.*extract",
        ),
        (
            lambda root: DemoDataModule(root, task="ssl", download=False),
            r"demo dataset is missing: .*protocol\.json does not exist\. Build it with .*prepare_demo_data\.py",
        ),
    ],
    ids=["cifar10", "imagenet", "demo"],
)
def test_missing_dataset_root(tmp_path: Path, make: Any, match: str) -> None:
    root = tmp_path / "no_such_dataset"
    with pytest.raises(FileNotFoundError, match=match) as info:
        make(root).setup("fit")
    assert str(root) in str(info.value)


# ============================================================================ 2. empty and partial dataset folders
@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda root: CIFAR10DataModule(root, task="ssl"), r"CIFAR-10 not found at .*Expected layout"),
        (lambda root: ImageNetDataModule(root, task="ssl"), r"ImageNet not found at .*Expected layout"),
        (lambda root: DemoDataModule(root, task="ssl", download=False), r"demo dataset is missing.*Build it with"),
    ],
    ids=["cifar10", "imagenet", "demo"],
)
def test_empty_dataset_folder(tmp_path: Path, make: Any, match: str) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(FileNotFoundError, match=match) as info:
        make(root).setup("fit")
    assert str(root) in str(info.value)


def test_cifar10_with_a_missing_batch_file(tmp_path: Path, cifar_integrity_ok: None) -> None:
    write_cifar10(tmp_path / "cifar10")
    (tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_3").unlink()
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    with pytest.raises(FileNotFoundError, match=rf"{_q(folder)}: missing data_batch_3\. .*extract it into"):
        CIFAR10DataModule(tmp_path / "cifar10", task="ssl").setup("fit")


def test_imagenet_class_folder_without_images(tmp_path: Path) -> None:
    root = tmp_path / "imagenet"
    write_image_folder(root)
    empty_class = root / "train" / "n01440764"
    for image in empty_class.iterdir():
        image.unlink()
    with pytest.raises(
        FileNotFoundError,
        match=rf"1 of 3 class folders in {_q(root / 'train')} hold no image: n01440764\. Put the class's \*\.JPEG",
    ):
        ImageNetDataModule(root, task="ssl").setup("fit")


def test_imagenet_split_with_class_folders_but_no_image(tmp_path: Path) -> None:
    root = tmp_path / "imagenet"
    for split in ("train", "val"):
        (root / split / "n01440764").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=rf"{_q(root / 'train')} holds class folders but no image .*expected"):
        ImageNetDataModule(root, task="ssl").setup("fit")


# ============================================================================ 3. corrupted image files
def test_truncated_jpeg_in_imagenet_names_the_file(tmp_path: Path) -> None:
    root = tmp_path / "imagenet"
    write_image_folder(root)
    dm = ImageNetDataModule(root, task="supervised")
    dm.setup("fit")
    assert dm.val_ds is not None
    path, _ = dm.val_ds.samples[0]  # type: ignore[attr-defined]
    Path(path).write_bytes(Path(path).read_bytes()[:200])  # a download cut short
    with pytest.raises(ImageDecodeError, match=rf"cannot decode image '{_q(path)}' .*truncated.*replace it"):
        dm.val_ds[0]
    dm.val_ds[1]  # the others still load


def test_garbage_jpeg_in_imagenet_names_the_file(tmp_path: Path) -> None:
    root = tmp_path / "imagenet"
    write_image_folder(root)
    dm = ImageNetDataModule(root, task="supervised")
    dm.setup("fit")
    assert dm.train_ds is not None
    path, _ = dm.train_ds.samples[2]  # type: ignore[attr-defined]
    Path(path).write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(ImageDecodeError, match=rf"cannot decode image '{_q(path)}' .*not an image"):
        dm.train_ds[2]


def test_corrupted_png_through_an_image_list(tmp_path: Path) -> None:
    images = tmp_path / "images_classic"
    images.mkdir()
    Image.new("RGB", (8, 8), "red").save(images / "good.png")
    (images / "bad.png").write_bytes((images / "good.png").read_bytes()[:40])
    lst = tmp_path / "list.txt"
    lst.write_text("good.png 0\nbad.png 1\n")
    ds = ImageListDataset(images, lst)
    assert ds[0][1] == 0
    with pytest.raises(ImageListError, match=rf"cannot decode image '{_q(images / 'bad.png')}' .*line 2.*replace it"):
        ds[1]


def test_load_rgb_image_of_a_vanished_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=rf"image '{_q(tmp_path / 'gone.JPEG')}' disappeared.*restore"):
        load_rgb_image(tmp_path / "gone.JPEG")


# ============================================================================ 4. image lists
def test_image_list_line_naming_a_missing_file(tmp_path: Path) -> None:
    images = tmp_path / "images_classic"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "a.png")
    lst = tmp_path / "list.txt"
    lst.write_text("a.png 0\nmissing/b.png 1\n")
    with pytest.raises(
        FileNotFoundError,
        match=rf"names 1 missing image file\(s\): line 2: '{_q(images / 'missing/b.png')}'.*regenerate",
    ):
        ImageListDataset(images, lst)


def test_image_list_line_with_a_bad_label(tmp_path: Path) -> None:
    images = tmp_path / "images_classic"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "a.png")
    lst = tmp_path / "list.txt"
    lst.write_text("a.png 0\na.png cat\n")
    with pytest.raises(ImageListError, match=rf"'{_q(lst)}', line 2: label 'cat' is not an integer; .*integer class"):
        ImageListDataset(images, lst)


def test_demo_protocol_json_that_is_not_json(tmp_path: Path) -> None:
    protocol = tmp_path / "benchmark_imglist" / "demo" / "protocol.json"
    protocol.parent.mkdir(parents=True)
    protocol.write_text("{")
    with pytest.raises(ValueError, match=rf"{_q(protocol)} is not valid JSON .*delete it"):
        DemoDataModule(tmp_path, task="ssl", download=False).setup("fit")


@pytest.mark.parametrize(
    ("batch_size", "error", "match"),
    [
        (0, ValueError, r"dataset\.batch_size must be positive, got 0; set e\.g\. dataset\.batch_size=256"),
        (-8, ValueError, r"dataset\.batch_size must be positive, got -8"),
        (2.5, TypeError, r"dataset\.batch_size must be an integer, got 2\.5 of type float"),
        (True, TypeError, r"dataset\.batch_size must be an integer, got True of type bool"),
    ],
)
def test_bad_batch_size(tmp_path: Path, batch_size: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        CIFAR10DataModule(tmp_path, task="ssl", batch_size=batch_size)


@pytest.mark.parametrize("batch_size", [0, -1])
def test_bad_batch_size_through_the_composed_config(tmp_path: Path, batch_size: int) -> None:
    with initialize_config_dir(version_base=None, config_dir=str(CONF)):
        cfg: DictConfig = compose(
            config_name="config",
            overrides=[
                "+model/task/ssl@train=ssl",
                "dataset=demo",
                f"dataset.data_dir={tmp_path}",
                f"dataset.batch_size={batch_size}",
            ],
        )
    with pytest.raises(Exception, match=rf"dataset\.batch_size must be positive, got {batch_size}"):
        build_datamodule(cfg)
