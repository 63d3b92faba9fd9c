"""The ImageNet subset builder: links, all class folders, idempotent reruns, clear failures (D-Q2)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from src.data.datamodule import SubsetImageNetDataModule
from src.data.prepare.imagenet_subset import SubsetBuildError, build_subset, read_split_file
from src.experiments.scripts.build_imagenet_subset import main

WNIDS = ("n01440764", "n01443537", "n02102040")
# Listed images of the first two classes; the third class has none.
LISTED = ["n01440764_0.JPEG", "n01440764_2.JPEG", "n01443537_1.JPEG"]


@pytest.fixture
def full_root(tmp_path: Path, make_image_folder: Callable[..., None]) -> Path:
    root = tmp_path / "imagenet"
    make_image_folder(root, WNIDS, n_train=3, n_val=2, size=(16, 12))
    (root / "meta.bin").write_bytes(b"meta")
    return root


@pytest.fixture
def split_file(tmp_path: Path) -> Path:
    path = tmp_path / "1percent.txt"
    path.write_text("\n".join(LISTED) + "\n")
    return path


def tree(root: Path) -> dict[str, str]:
    """Every entry below ``root`` (not following the val link) with its link target, or its kind."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            out[str(path.relative_to(root))] = (
                os.readlink(path) if path.is_symlink() else ("dir" if path.is_dir() else "file")
            )
    return out


def test_build_links_all_classes_and_val(full_root: Path, split_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "datasets" / "imagenet1pct"
    report = build_subset(full_root, split_file, out)
    assert (report.images, report.classes, report.empty_classes) == (3, 3, (WNIDS[2],))
    assert report.created == 3 + 2 and report.skipped == 0  # images, val, meta.bin
    assert sorted(os.listdir(out / "train")) == list(WNIDS)
    assert os.listdir(out / "train" / WNIDS[2]) == []
    for name in LISTED:
        link = out / "train" / name.split("_")[0] / name
        assert link.is_symlink() and not os.path.isabs(os.readlink(link))
        assert os.path.samefile(link, full_root / "train" / name.split("_")[0] / name)
    assert (out / "val").is_symlink() and os.path.samefile(out / "val", full_root / "val")
    assert os.path.samefile(out / "meta.bin", full_root / "meta.bin")
    # nothing left from the staging directory
    assert sorted(os.listdir(out.parent)) == ["imagenet1pct"]


def test_rerun_is_idempotent_and_completes(full_root: Path, split_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "subset"
    build_subset(full_root, split_file, out)
    before = tree(out)
    again = build_subset(full_root, split_file, out)
    assert (again.created, again.skipped) == (0, 5) and tree(out) == before
    (out / "train" / "n01440764" / "n01440764_2.JPEG").unlink()
    (out / "train" / WNIDS[2]).rmdir()
    completed = build_subset(full_root, split_file, out)
    assert (completed.created, completed.skipped) == (1, 4) and tree(out) == before


def test_missing_listed_file_writes_nothing(full_root: Path, split_file: Path, tmp_path: Path) -> None:
    split_file.write_text("n01440764_0.JPEG\nn01443537_77.JPEG\n")
    out = tmp_path / "out" / "imagenet1pct"
    with pytest.raises(SubsetBuildError, match=r"1 of the 2 images .* missing .*n01443537/n01443537_77\.JPEG"):
        build_subset(full_root, split_file, out)
    assert not out.parent.exists() or os.listdir(out.parent) == []


def test_unknown_class_and_malformed_lines(full_root: Path, split_file: Path, tmp_path: Path) -> None:
    split_file.write_text("n07777777_1.JPEG\n")
    with pytest.raises(SubsetBuildError, match="n07777777"):
        build_subset(full_root, split_file, tmp_path / "o")
    split_file.write_text("n01440764_0.JPEG\nbadline.JPEG\n")
    with pytest.raises(SubsetBuildError, match=r"line 2: 'badline\.JPEG'"):
        read_split_file(split_file)
    with pytest.raises(SubsetBuildError, match="simclr"):
        read_split_file(tmp_path / "absent.txt")


def test_existing_output_that_does_not_match(full_root: Path, split_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "subset"
    build_subset(full_root, split_file, out)
    (out / "train" / WNIDS[2] / "stray.JPEG").write_bytes(b"x")
    with pytest.raises(SubsetBuildError, match=r"not on the list: train/n02102040/stray\.JPEG"):
        build_subset(full_root, split_file, out)
    (out / "train" / WNIDS[2] / "stray.JPEG").unlink()
    link = out / "train" / "n01440764" / "n01440764_0.JPEG"
    link.unlink()
    link.symlink_to(full_root / "train" / "n01440764" / "n01440764_1.JPEG")
    with pytest.raises(SubsetBuildError, match="do not match the sources"):
        build_subset(full_root, split_file, out)


def test_copy_mode(full_root: Path, split_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "copied"
    build_subset(full_root, split_file, out, copy=True)
    image = out / "train" / "n01443537" / "n01443537_1.JPEG"
    assert image.is_file() and not image.is_symlink()
    assert (out / "val").is_dir() and not (out / "val").is_symlink()
    assert sorted(os.listdir(out / "val" / WNIDS[0])) == sorted(os.listdir(full_root / "val" / WNIDS[0]))
    assert build_subset(full_root, split_file, out, copy=True).created == 0


def test_cli(full_root: Path, split_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    # the output root defaults to data/datasets/imagenet<N>pct for <N>percent.txt
    assert main(["--imagenet-root", str(full_root), "--split-file", str(split_file)]) == 0
    assert (tmp_path / "data" / "datasets" / "imagenet1pct" / "val").is_symlink()
    assert "3 images in 3 classes (1 without images)" in capsys.readouterr().out
    split_file.write_text("n01440764_9.JPEG\n")
    assert main(["--imagenet-root", str(full_root), "--split-file", str(split_file), "--output-root", "x"]) == 1
    assert "n01440764_9.JPEG" in capsys.readouterr().err
    custom = tmp_path / "mine.txt"
    custom.write_text("n01440764_0.JPEG\n")
    with pytest.raises(SystemExit):
        main(["--imagenet-root", str(full_root), "--split-file", str(custom)])
    assert "--output-root is required" in capsys.readouterr().err


def test_built_root_loads_in_the_subset_datamodule(full_root: Path, split_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "imagenet1pct"
    build_subset(full_root, split_file, out)
    dm = SubsetImageNetDataModule(data_dir=out, batch_size=2, input_height=32, resize_height=40)
    with pytest.warns(UserWarning, match=WNIDS[2]):
        dm.setup(None)
    assert dm.num_training_samples == 3 and len(dm.val_ds) == 6  # type: ignore[arg-type]
    assert dm.train_ds.class_to_idx == dm.val_ds.class_to_idx  # type: ignore[union-attr]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 32, 32) and set(y.tolist()) <= {0, 1}
