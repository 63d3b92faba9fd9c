"""Transfer datasets in their real on-disk formats, the probe protocol and the embedding files."""

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
    EmbeddingWriter,
    Flowers102Split,
    PrecomputedRepresentationsDatamodule,
    SUN397Split,
    get_transfer_learning_datamodule,
    load_embeddings,
    probe_splits,
    probe_transform,
    save_embeddings,
)
from tests.downstream.conftest import WNIDS, write_flowers102, write_sun397


def test_probe_transform_squash_resizes_and_normalises_with_imagenet_statistics() -> None:
    """§4.6 / Q7: Resize((224, 224)) (aspect ratio not kept, no crop) → ToTensor → ImageNet Normalize."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size=(30, 50, 3), dtype=np.uint8))
    out = probe_transform()(image)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    resized = np.asarray(image.resize((224, 224), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    mean, std = (np.asarray(IMAGENET_NORMALIZE[k], dtype=np.float32) for k in ("mean", "std"))
    expected = torch.from_numpy(((resized - mean) / std).transpose(2, 0, 1).copy())
    assert torch.allclose(out, expected, atol=1e-5)


def test_sun397_partition_one(datasets_root: Path) -> None:
    train = SUN397Split(datasets_root, "train")
    test = SUN397Split(datasets_root, "test")
    assert train.classes == ["abbey", "apartment_building/outdoor", "bedroom"]
    # the duplicated partition line counts once; the image outside the partition is not read
    assert len(train) == len(test) == 6
    assert sorted(train.targets) == sorted(test.targets) == [0, 0, 1, 1, 2, 2]
    assert {p.relative_to(datasets_root / "SUN397").parts[1:-1] for p, _ in train.samples} == {
        ("abbey",),
        ("apartment_building", "outdoor"),
        ("bedroom",),
    }
    assert not {p for p, _ in train.samples} & {p for p, _ in test.samples}
    dm = get_transfer_learning_datamodule(datasets_root, "SUN397", batch_size=4, image_size=8)
    dm.setup("train")
    assert dm.val_ds is None and dm.val_dataloader() is None and list(dm.split_loaders()) == ["train", "test"]
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (4, 3, 8, 8) and y.dtype == torch.int64


def test_sun397_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"SUN397.*Partitions/Training_01\.txt.*Partitions\.zip"):
        SUN397Split(tmp_path, "train")
    write_sun397(tmp_path)
    missing = next((tmp_path / "SUN397" / "a" / "abbey").glob("sun_*.jpg"))
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=missing.name):
        SUN397Split(tmp_path, "train")


def test_flowers102_splits_and_labels(datasets_root: Path) -> None:
    splits = {s: Flowers102Split(datasets_root, s) for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [6, 6, 3]
    assert splits["train"].targets == [0, 0, 1, 1, 2, 2]  # imagelabels.mat minus 1, in setid order
    assert splits["train"].samples[0][0].name == "image_00001.jpg"
    dm = get_transfer_learning_datamodule(datasets_root, "flowers-102", batch_size=4, image_size=8)
    dm.setup("train")
    # the official test split is never loaded (Q5)
    assert dm.test_ds is None and list(dm.split_loaders()) == ["train", "val"]
    assert len(dm.train_ds) == len(dm.val_ds) == 6  # type: ignore[arg-type]


def test_flowers102_missing_files_are_named(tmp_path: Path) -> None:
    write_flowers102(tmp_path)
    (tmp_path / "flowers-102" / "setid.mat").unlink()
    with pytest.raises(FileNotFoundError, match=r"flowers-102/setid\.mat.*imagelabels\.mat"):
        Flowers102Split(tmp_path, "train")


def test_imagenet_probe_datamodule(datasets_root: Path, tmp_path: Path) -> None:
    dm = get_transfer_learning_datamodule(datasets_root / "imagenet", "imagenet", batch_size=4, image_size=8)
    dm.setup("train")
    assert dm.train_ds.classes == list(WNIDS) and dm.test_ds is None  # type: ignore[union-attr]
    assert len(dm.train_ds) == 9 and len(dm.val_ds) == 6  # type: ignore[arg-type]
    shutil.copytree(datasets_root / "imagenet" / "train", tmp_path / "train")
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
    """§7.3: test := val when there is no test; outside test mode a stratified 20 % val (global NumPy RNG)."""
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


def test_embedding_file_format(tmp_path: Path) -> None:
    """Streamed rows, a plain dict that loads with weights_only=True, a TensorDataset from the loader."""
    reps = torch.randn(10, 3, 4)
    labels = torch.arange(10) % 4
    path = tmp_path / "emb" / "train.pt"
    with EmbeddingWriter(path, 10) as writer:
        for start in range(0, 10, 4):
            writer.write(reps[start : start + 4].double(), labels[start : start + 4])
        assert not path.exists()  # nothing final before commit
        writer.commit()
    assert sorted(p.name for p in path.parent.iterdir()) == ["train.pt"]  # buffer removed
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"reps", "labels"} and raw["reps"].dtype == torch.float32 and raw["labels"].dtype == torch.int64
    ds = load_embeddings(path)
    assert isinstance(ds, TensorDataset)
    assert torch.equal(ds.tensors[0], reps) and torch.equal(ds.tensors[1], labels)

    # an interrupted writer leaves nothing behind
    broken = tmp_path / "emb" / "val.pt"
    with pytest.raises(RuntimeError), EmbeddingWriter(broken, 10) as writer:
        writer.write(reps[:4], labels[:4])
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in path.parent.iterdir()) == ["train.pt"]
    with pytest.raises(ValueError, match="4 of 10 rows"):
        w = EmbeddingWriter(broken, 10)
        w.write(reps[:4], labels[:4])
        w.commit()

    # the reference's pickled TensorDataset files are read too
    torch.save(TensorDataset(reps, labels), tmp_path / "legacy.pt")
    assert torch.equal(load_embeddings(tmp_path / "legacy.pt").tensors[0], reps)


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
