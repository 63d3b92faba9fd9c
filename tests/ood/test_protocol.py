"""The OOD protocol on disk: OpenOOD v1.5's cifar10 layout (tiny fixture) and the demo lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from src.data.prepare.demo_data import prepare_demo_data
from src.ood.protocol import CIFAR10_OPENOOD_NORMALIZE, get_protocol

CIFAR10_LISTS = {
    "train_cifar10.txt": ("cifar10/train", range(10)),
    "val_cifar10.txt": ("cifar10/test", range(10)),
    "test_cifar10.txt": ("cifar10/test", range(10)),
    "val_tin.txt": ("tin/val/images", [-1]),
    "test_cifar100.txt": ("cifar100/test", [-1]),
    "test_tin.txt": ("tin/val/images", [-1]),
    "test_mnist.txt": ("mnist/test", [-1]),
    "test_svhn.txt": ("svhn/test", [-1]),
    "test_texture.txt": ("texture/banded", [-1]),
    "test_places365.txt": ("places365/rainforest", [-1]),
}


def write_openood_cifar10(root: Path, per_list: int = 6) -> Path:
    """A miniature of OpenOOD v1.5's layout: lists in benchmark_imglist/cifar10, images in images_classic.
    MNIST images are grayscale 28x28 and texture images non-square, as in the real sets."""
    rng = np.random.default_rng(0)
    lists = root / "benchmark_imglist" / "cifar10"
    lists.mkdir(parents=True)
    for list_name, (folder, labels) in CIFAR10_LISTS.items():
        lines = []
        for i in range(per_list):
            label = list(labels)[i % len(labels)]
            rel = f"{folder}/{list_name[:-4]}_{i}.png"
            path = root / "images_classic" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if "mnist" in folder:
                Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8), mode="L").save(path)
            elif "texture" in folder:
                Image.fromarray(rng.integers(0, 255, (40, 64, 3), dtype=np.uint8)).save(path)
            else:
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
            lines.append(f"{rel} {label}")
        (lists / list_name).write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_openood_cifar10(tmp_path_factory.mktemp("openood"))


def test_cifar10_protocol_reads_every_split(cifar_root: Path) -> None:
    protocol = get_protocol("cifar10", cifar_root)
    assert list(protocol.near) == ["cifar100", "tin"]
    assert list(protocol.far) == ["mnist", "svhn", "texture", "places365"]
    assert protocol.normalize == CIFAR10_OPENOOD_NORMALIZE and protocol.num_classes == 10
    for split in protocol.all_lists():
        x, y = next(iter(protocol.loader(split, "default", batch_size=4)))
        assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
        assert (y >= 0).all() if split.startswith("id/") else (y == -1).all()
        views, _ = next(iter(protocol.loader(split, "barlowtwins", batch_size=4)))
        assert len(views) == 3 and all(v.shape == (4, 3, 32, 32) for v in views)


def test_default_preprocessing_is_resize_shorter_side_and_centre_crop(cifar_root: Path) -> None:
    protocol = get_protocol("cifar10", cifar_root)
    path = next((cifar_root / "images_classic" / "texture").rglob("*.png"))
    image = Image.open(path).convert("RGB")  # 64 x 40 (w x h)
    out = protocol.preprocessor("default")(image)
    resized = image.resize((51, 32), Image.BILINEAR)  # shorter side 40 -> 32, width 64 -> 51
    left = round((51 - 32) / 2.0)  # torchvision CenterCrop rounds the offset
    expected = torch.from_numpy(np.asarray(resized.crop((left, 0, left + 32, 32)), dtype=np.float32) / 255)
    expected = expected.permute(2, 0, 1)
    mean = torch.tensor(CIFAR10_OPENOOD_NORMALIZE["mean"]).view(3, 1, 1)
    std = torch.tensor(CIFAR10_OPENOOD_NORMALIZE["std"]).view(3, 1, 1)
    torch.testing.assert_close(out, (expected - mean) / std, atol=1e-5, rtol=0)
    # the plain view of the Barlow Twins preprocessor: same geometry, 0.5/0.5 normalisation (O-Q3)
    v3 = protocol.preprocessor("barlowtwins")(image)[2]
    torch.testing.assert_close(v3 * 0.5 + 0.5, out * std + mean, atol=1e-5, rtol=0)


def test_missing_lists_are_named(tmp_path: Path, cifar_root: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"test_svhn\.txt"):
        root = tmp_path / "partial"
        (root / "benchmark_imglist" / "cifar10").mkdir(parents=True)
        (root / "images_classic").mkdir()
        for name in CIFAR10_LISTS:
            if name != "test_svhn.txt":
                (root / "benchmark_imglist" / "cifar10" / name).write_text("x.png 0\n")
        get_protocol("cifar10", root)
    with pytest.raises(ValueError, match="no OOD protocol"):
        get_protocol("cifar11", cifar_root)


def test_demo_protocol(tmp_path: Path) -> None:
    root = prepare_demo_data(tmp_path / "demo", image_size=8)
    protocol = get_protocol("demo", root)
    assert protocol.num_classes == 8 and protocol.image_size == 8
    assert list(protocol.near) == ["digits89"] and list(protocol.far) == ["photos", "noise"]
    x, y = next(iter(protocol.loader("ood/far/photos", "default", batch_size=5)))
    assert x.shape == (5, 3, 8, 8) and (y == -1).all()
    with pytest.raises(FileNotFoundError, match=r"prepare_demo_data"):
        get_protocol("demo", tmp_path)
