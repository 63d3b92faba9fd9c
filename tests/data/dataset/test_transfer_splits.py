"""The official splits of SUN397 and Flowers-102 (src/data/dataset/transfer_splits.py) in torchvision's layouts."""

from __future__ import annotations

from pathlib import Path

import pytest

from src.data.dataset.transfer_splits import Flowers102Split, SUN397Split
from tests.data.conftest import write_flowers102, write_sun397


def test_sun397_partition_one(transfer_root: Path) -> None:
    train = SUN397Split(transfer_root, "train")
    test = SUN397Split(transfer_root, "test")
    assert train.classes == ["abbey", "apartment_building/outdoor", "bedroom"]
    # the duplicated partition line counts once; the image outside the partition is not read
    assert len(train) == len(test) == 6
    assert sorted(train.targets) == sorted(test.targets) == [0, 0, 1, 1, 2, 2]
    assert {p.relative_to(transfer_root / "SUN397").parts[1:-1] for p, _ in train.samples} == {
        ("abbey",),
        ("apartment_building", "outdoor"),
        ("bedroom",),
    }
    assert not {p for p, _ in train.samples} & {p for p, _ in test.samples}


def test_sun397_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"SUN397.*Partitions/Training_01\.txt.*Partitions\.zip"):
        SUN397Split(tmp_path, "train")
    write_sun397(tmp_path)
    missing = next((tmp_path / "SUN397" / "a" / "abbey").glob("sun_*.jpg"))
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=missing.name):
        SUN397Split(tmp_path, "train")


def test_flowers102_splits_and_labels(transfer_root: Path) -> None:
    splits = {s: Flowers102Split(transfer_root, s) for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [6, 6, 3]
    assert splits["train"].targets == [0, 0, 1, 1, 2, 2]  # imagelabels.mat minus 1, in setid order
    assert splits["train"].samples[0][0].name == "image_00001.jpg"


def test_flowers102_missing_files_are_named(tmp_path: Path) -> None:
    write_flowers102(tmp_path)
    (tmp_path / "flowers-102" / "setid.mat").unlink()
    with pytest.raises(FileNotFoundError, match=r"flowers-102/setid\.mat.*imagelabels\.mat"):
        Flowers102Split(tmp_path, "train")
