"""The linear-probe datamodules (src/data/datamodule/transfer_learning.py): probe transform, splits, protocol."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from src.data.augment.transforms import IMAGENET_NORMALIZE
from src.data.datamodule.transfer_learning import (
    PrecomputedRepresentationsDatamodule,
    get_transfer_learning_datamodule,
    probe_splits,
    probe_transform,
)
from src.data.dataset.embeddings import save_embeddings
from tests.data.conftest import WNIDS


def test_probe_transform_squash_resizes_and_normalises_with_imagenet_statistics() -> None:
    """D-Q7: Resize((224, 224)) (aspect ratio not kept, no crop) → ToTensor → ImageNet Normalize."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size=(30, 50, 3), dtype=np.uint8))
    out = probe_transform()(image)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    resized = np.asarray(image.resize((224, 224), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    mean, std = (np.asarray(IMAGENET_NORMALIZE[k], dtype=np.float32) for k in ("mean", "std"))
    expected = torch.from_numpy(((resized - mean) / std).transpose(2, 0, 1).copy())
    assert torch.allclose(out, expected, atol=1e-5)


def test_sun397_datamodule_has_no_val(transfer_root: Path) -> None:
    dm = get_transfer_learning_datamodule(transfer_root, "SUN397", batch_size=4, image_size=8)
    dm.setup("train")
    assert dm.val_ds is None and dm.val_dataloader() is None and list(dm.split_loaders()) == ["train", "test"]
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (4, 3, 8, 8) and y.dtype == torch.int64


def test_flowers102_datamodule_never_loads_the_test_split(transfer_root: Path) -> None:
    dm = get_transfer_learning_datamodule(transfer_root, "flowers-102", batch_size=4, image_size=8)
    dm.setup("train")
    # the official test split is never loaded (D-Q5)
    assert dm.test_ds is None and list(dm.split_loaders()) == ["train", "val"]
    assert len(dm.train_ds) == len(dm.val_ds) == 6  # type: ignore[arg-type]


def test_imagenet_probe_datamodule(transfer_root: Path, tmp_path: Path) -> None:
    dm = get_transfer_learning_datamodule(transfer_root / "imagenet", "imagenet", batch_size=4, image_size=8)
    dm.setup("train")
    assert dm.train_ds.classes == list(WNIDS) and dm.test_ds is None  # type: ignore[union-attr]
    assert len(dm.train_ds) == 9 and len(dm.val_ds) == 6  # type: ignore[arg-type]
    shutil.copytree(transfer_root / "imagenet" / "train", tmp_path / "train")
    with pytest.raises(FileNotFoundError, match=r"missing val/"):
        get_transfer_learning_datamodule(tmp_path, "imagenet", batch_size=4).setup()


def test_demo_probe_datamodule_uses_its_lists_and_size(demo_root: Path) -> None:
    dm = get_transfer_learning_datamodule(demo_root, "demo", batch_size=16)
    dm.setup()
    assert list(dm.split_loaders()) == ["train", "val", "test"]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 8, 8) and int(y.max()) < 8
    with pytest.raises(FileNotFoundError, match="prepare_demo_data"):
        get_transfer_learning_datamodule(demo_root.parent / "absent", "demo", batch_size=4).setup()


def test_probe_splits_protocol() -> None:
    """test := val when there is no test; outside test mode a stratified 20 % val (global NumPy RNG)."""
    labels = torch.tensor([0] * 10 + [1] * 10 + [2] * 20)
    train = TensorDataset(torch.randn(40, 3), labels)
    val = TensorDataset(torch.randn(6, 3), torch.arange(6) % 3)

    tr, va, te = probe_splits(train, val, None, test_mode=True)
    assert tr is train and va is None and te is val

    np.random.seed(1537)
    tr, va, te = probe_splits(train, val, None, test_mode=False)
    assert te is val and len(va) == 8 and len(tr) == 32  # type: ignore[arg-type]
    val_labels = labels[va.indices]  # type: ignore[union-attr]
    assert torch.bincount(val_labels).tolist() == [2, 2, 4]  # stratified
    assert not set(va.indices) & set(tr.indices)  # type: ignore[union-attr]
    np.random.seed(1537)
    assert probe_splits(train, val, None, test_mode=False)[1].indices == va.indices  # type: ignore[union-attr]

    # SUN397: a test split and no val -> val is split off train, test stays
    _, va, te = probe_splits(train, None, val, test_mode=False)
    assert te is val and len(va) == 8  # type: ignore[arg-type]


def test_precomputed_datamodule(tmp_path: Path) -> None:
    save_embeddings(tmp_path / "train.pt", torch.randn(20, 5), torch.arange(20) % 4)
    save_embeddings(tmp_path / "val.pt", torch.randn(8, 5), torch.arange(8) % 4)
    dm = PrecomputedRepresentationsDatamodule(tmp_path, batch_size=8, num_classes=4, test_mode=True)
    dm.setup("fit")
    assert len(dm.train_ds) == 20 and dm.val_ds is None and len(dm.test_ds) == 8  # type: ignore[arg-type]
    assert dm.repr_shape == (5,)
    z, y = next(iter(dm.test_dataloader()))
    assert z.shape == (8, 5) and y.dtype == torch.int64
    dm.setup("test")  # the second setup reuses the loaded splits
    assert len(dm.test_ds) == 8  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_classes=3"):
        PrecomputedRepresentationsDatamodule(tmp_path, batch_size=8, num_classes=3, test_mode=True).setup()
    with pytest.raises(FileNotFoundError, match="pre_embed_datasets"):
        PrecomputedRepresentationsDatamodule(tmp_path / "none", batch_size=8, test_mode=True).setup()
