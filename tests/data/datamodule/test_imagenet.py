"""ImageNet datamodules on a tiny ImageFolder tree: batches, labels, layout errors (D-Q3)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from src.data.augment.transforms import IMAGENET_NORMALIZE, ImageNetSupervisedTransform, MultiViewTransform
from src.data.datamodule import DATAMODULES, ImageNetDataModule, SubsetImageNetDataModule

# the wnids of the conftest ImageNet fixture
WNIDS = ("n01440764", "n01443537", "n02102040")


def make(data_dir: Path, task: str = "ssl", cls: type[ImageNetDataModule] = ImageNetDataModule, **kwargs: Any):
    args: dict[str, Any] = dict(batch_size=4, num_workers=0, input_height=224, resize_height=256) | kwargs
    return cls(data_dir=data_dir, task=task, **args)


def test_ssl_batches(imagenet_dir: Path) -> None:
    dm = make(imagenet_dir, "ssl_bayes_h")
    dm.setup(None)
    assert (len(dm.train_ds), len(dm.val_ds), len(dm.test_ds)) == (12, 6, 6)  # type: ignore[arg-type]
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        views, y = next(iter(loader))
        assert [tuple(v.shape) for v in views] == [(4, 3, 224, 224)] * 3
        assert all(v.dtype == torch.float32 for v in views) and y.dtype == torch.int64 and y.shape == (4,)
    assert isinstance(dm.test_ds.transform, MultiViewTransform)  # type: ignore[union-attr]


def test_ssl_views_ignore_input_height(imagenet_dir: Path) -> None:
    """Views 1/2 are lightly defaults (224) whatever input_height says (D-Q22); view 3 follows it."""
    dm = make(imagenet_dir, "ssl", input_height=64)
    dm.setup("test")
    views, _ = dm.test_ds[0]  # type: ignore[index]
    assert [tuple(v.shape) for v in views] == [(3, 224, 224), (3, 224, 224), (3, 64, 64)]


def test_semi_supervised_batches_and_transforms(imagenet_dir: Path) -> None:
    dm = make(imagenet_dir, "semi_supervised")
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 224, 224) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert isinstance(dm.train_ds.transform, ImageNetSupervisedTransform) and dm.train_ds.transform.train  # type: ignore[union-attr]
    assert not dm.val_ds.transform.train  # type: ignore[union-attr]
    assert dm.normalize == IMAGENET_NORMALIZE
    # eval transform: Resize(resize_height) + CenterCrop(input_height), deterministic
    small = make(imagenet_dir, "semi_supervised", resize_height=40, input_height=32)
    small.setup("test")
    a, _ = small.test_ds[0]  # type: ignore[index]
    b, _ = small.test_ds[0]  # type: ignore[index]
    assert a.shape == (3, 32, 32) and torch.equal(a, b)


def test_labels_are_sorted_wnid_positions_and_val_is_test(imagenet_dir: Path) -> None:
    dm = make(imagenet_dir, "semi_supervised")
    dm.setup(None)
    expected = {wnid: i for i, wnid in enumerate(sorted(WNIDS))}
    assert dm.train_ds.class_to_idx == dm.val_ds.class_to_idx == expected  # type: ignore[union-attr]
    assert dm.val_ds.samples == dm.test_ds.samples  # type: ignore[union-attr]
    for path, label in dm.val_ds.samples:  # type: ignore[union-attr]
        assert label == expected[Path(path).parent.name]


def test_drop_last_and_iters(imagenet_dir: Path) -> None:
    dm = make(imagenet_dir, "semi_supervised")
    dm.setup(None)
    assert [len(y) for _, y in dm.val_dataloader()] == [4]  # 6 images, B = 4, last 2 dropped
    assert [len(y) for _, y in dm.test_dataloader()] == [4]
    assert dm.num_training_samples == 12 and dm.train_iters_per_epoch == 3
    keep = make(imagenet_dir, "semi_supervised", drop_last=False, batch_size=5)
    keep.setup("fit")
    assert keep.train_iters_per_epoch == 3 and [len(y) for _, y in keep.val_dataloader()] == [5, 1]


def test_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        make(tmp_path / "imagenet").setup("fit")
    message = str(info.value)
    for part in ("train/", "val/", "train/<wnid>/*.JPEG", "val/<wnid>/*.JPEG", "image-net.org", "login"):
        assert part in message
    assert str(tmp_path / "imagenet") in message


def test_missing_val_only(imagenet_dir: Path) -> None:
    shutil.rmtree(imagenet_dir / "val")
    with pytest.raises(FileNotFoundError, match=r"missing val/\."):
        make(imagenet_dir).prepare_data()


def test_subset_missing_points_to_the_builder(tmp_path: Path) -> None:
    dm = make(tmp_path / "imagenet1pct", "semi_supervised", cls=SubsetImageNetDataModule)
    dm.prepare_data()  # a no-op, as in the reference
    with pytest.raises(FileNotFoundError, match=r"build_imagenet_subset.*--split-file 1percent\.txt"):
        dm.setup("fit")


def test_class_mismatch_lists_the_differences(imagenet_dir: Path) -> None:
    shutil.rmtree(imagenet_dir / "val" / WNIDS[1])
    (imagenet_dir / "val" / "n09999999").mkdir()
    with pytest.raises(ValueError) as info:
        make(imagenet_dir).setup("test")
    message = str(info.value)
    assert f"Only in train/ (1): {WNIDS[1]}" in message and "Only in val/ (1): n09999999" in message
    assert "class indices would not match" in message


def test_no_class_folder(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no class folder"):
        make(tmp_path).setup("fit")


def test_class_folders_without_images(tmp_path: Path) -> None:
    for split in ("train", "val"):
        for wnid in WNIDS:
            (tmp_path / split / wnid).mkdir(parents=True)
        (tmp_path / split / WNIDS[0] / "notes.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match=r"class folders but no image.*\.jpeg"):
        make(tmp_path).setup("fit")


def test_one_empty_class(imagenet_dir: Path, make_image_folder: Callable[..., None]) -> None:
    for image in (imagenet_dir / "train" / WNIDS[2]).iterdir():
        image.unlink()
    with pytest.raises(FileNotFoundError, match=rf"1 of 3 class folders .* hold no image: {WNIDS[2]}"):
        make(imagenet_dir, "semi_supervised").setup("fit")
    # a subset root keeps empty class folders so that the indices still match val/
    subset = make(imagenet_dir, "semi_supervised", cls=SubsetImageNetDataModule)
    with pytest.warns(UserWarning, match="kept, so that class indices match"):
        subset.setup("fit")
    assert subset.num_training_samples == 8 and subset.train_ds.class_to_idx == subset.val_ds.class_to_idx  # type: ignore[union-attr]


def test_subset_datamodule(imagenet_dir: Path) -> None:
    dm = SubsetImageNetDataModule(data_dir=imagenet_dir, batch_size=4, subset=0.01, flatten_dim=150528)
    assert dm.task == "semi_supervised" and dm.task_type == "semi_supervised"
    dm.setup(None)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 224, 224) and y.dtype == torch.int64
    assert DATAMODULES["imagenet1pct"] is DATAMODULES["imagenet10pct"] is SubsetImageNetDataModule
    assert DATAMODULES["imagenet"] is ImageNetDataModule
