"""The embedded demo dataset: layout, list format, splits, images, statistics, determinism, atomicity."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torchvision.transforms import ToTensor

import src.data.prepare.demo_data as demo
from src.data.dataset import ImageListDataset, read_image_list
from src.data.prepare.demo_data import LISTS, prepare_demo_data, read_protocol

REPO_ROOT = Path(__file__).resolve().parents[3]
ID_LISTS = ("train_demo.txt", "val_demo.txt", "test_demo.txt")
OOD_LISTS = ("val_ood.txt", "test_digits89.txt", "test_photos.txt", "test_noise.txt")
# A list line: relative path (no leading '/', no whitespace), one space, an integer.
LINE_RE = re.compile(r"[^/\s]\S* -?\d+")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_demo_data(tmp_path_factory.mktemp("a") / "demo")


@pytest.fixture(scope="module")
def lists(root: Path) -> dict[str, list[tuple[str, int]]]:
    return {name: read_image_list(root / "benchmark_imglist/demo" / name) for name in LISTS.values()}


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def _digit_index(rel: str) -> int:
    return int(Path(rel).stem)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _load(root: Path, rel: str) -> np.ndarray:
    with Image.open(root / "images_classic" / rel) as img:
        assert img.mode == "RGB"
        return np.asarray(img)


# ---------------------------------------------------------------- layout and protocol


def test_layout_and_protocol(root: Path, lists) -> None:
    assert sorted(p.name for p in (root / "images_classic").iterdir()) == ["demo", "demo_near", "noise", "photos"]
    assert sorted(p.name for p in (root / "images_classic/demo").iterdir()) == ["test", "train", "val"]
    for split in ("train", "val", "test"):
        assert sorted(p.name for p in (root / "images_classic/demo" / split).iterdir()) == [str(c) for c in range(8)]
    assert sorted(p.name for p in (root / "images_classic/demo_near").iterdir()) == ["test", "val"]
    assert sorted(p.name for p in (root / "images_classic/photos").iterdir()) == ["china", "flower"]
    assert sorted(p.name for p in (root / "images_classic/noise").iterdir()) == ["blur", "uniform"]
    assert sorted(p.name for p in (root / "benchmark_imglist").iterdir()) == ["demo"]
    list_names = sorted([*LISTS.values(), "protocol.json"])
    assert sorted(p.name for p in (root / "benchmark_imglist/demo").iterdir()) == list_names

    protocol = json.loads((root / "benchmark_imglist/demo/protocol.json").read_text())
    assert protocol == read_protocol(root)
    assert protocol["id_name"] == "demo" and protocol["num_classes"] == 8
    assert protocol["image_size"] == 16 and protocol["seed"] == 1997
    assert protocol["id"] == {"train": "train_demo.txt", "val": "val_demo.txt", "test": "test_demo.txt"}
    assert protocol["ood"] == {
        "val": "val_ood.txt",
        "near": {"digits89": "test_digits89.txt"},
        "far": {"photos": "test_photos.txt", "noise": "test_noise.txt"},
    }
    assert protocol["counts"] == {name: len(entries) for name, entries in lists.items()}
    # Every image file on disk is named by exactly one list line (nothing orphaned).
    on_disk = {str(p.relative_to(root / "images_classic")) for p in (root / "images_classic").rglob("*.png")}
    assert on_disk == {rel for entries in lists.values() for rel, _ in entries}


def test_no_temporary_directories_left(root: Path) -> None:
    assert [p.name for p in root.parent.iterdir()] == ["demo"]


def test_list_line_format(root: Path) -> None:
    for name in LISTS.values():
        text = (root / "benchmark_imglist/demo" / name).read_text(encoding="utf-8")
        assert text.endswith("\n") and "\r" not in text
        lines = text[:-1].split("\n")
        assert lines and all(LINE_RE.fullmatch(line) for line in lines), name


def test_sizes(lists) -> None:
    counts = {name: len(entries) for name, entries in lists.items()}
    assert counts["train_demo.txt"] + counts["val_demo.txt"] + counts["test_demo.txt"] == 1443  # classes 0-7
    assert counts["val_ood.txt"] + counts["test_digits89.txt"] == 354  # classes 8-9
    assert counts["test_photos.txt"] == counts["test_noise.txt"] == 300
    # The OOD sets stay small so the demo is fast.
    assert all(counts[name] <= 400 for name in OOD_LISTS)


# ---------------------------------------------------------------- labels and splits


def test_label_ranges(lists) -> None:
    for name in ID_LISTS:
        assert {label for _, label in lists[name]} == set(range(8)), name
    for name in OOD_LISTS:
        assert {label for _, label in lists[name]} == {-1}, name


def test_stratified_class_balance(lists, digits) -> None:
    totals = Counter(int(t) for t in digits.target)
    for name, fraction in (("train_demo.txt", 0.6), ("val_demo.txt", 0.1), ("test_demo.txt", 0.3)):
        per_class = Counter(label for _, label in lists[name])
        for c in range(8):
            assert abs(per_class[c] - fraction * totals[c]) <= 1, (name, c)
    near = {name: Counter(int(Path(rel).parent.name) for rel, _ in lists[name]) for name in OOD_LISTS[:2]}
    for c in (8, 9):
        assert abs(near["val_ood.txt"][c] - 0.2 * totals[c]) <= 1
        assert near["val_ood.txt"][c] + near["test_digits89.txt"][c] == totals[c]


def test_digit_lists_match_their_source_classes(lists, digits) -> None:
    for name in ID_LISTS:
        for rel, label in lists[name]:
            assert rel.startswith(f"demo/{name.split('_')[0]}/{label}/")
            assert digits.target[_digit_index(rel)] == label
    for name, folder in (("val_ood.txt", "demo_near/val/"), ("test_digits89.txt", "demo_near/test/")):
        for rel, _ in lists[name]:
            assert rel.startswith(folder)
            digit_class = int(Path(rel).parent.name)
            assert digit_class in (8, 9) and digits.target[_digit_index(rel)] == digit_class


def test_all_splits_disjoint(lists, digits) -> None:
    paths = [rel for entries in lists.values() for rel, _ in entries]
    assert len(paths) == len(set(paths)), "an image path appears in two lists (or twice in one)"
    digit_lists = (*ID_LISTS, "val_ood.txt", "test_digits89.txt")
    indices = [_digit_index(rel) for name in digit_lists for rel, _ in lists[name]]
    # Each digit is used exactly once: no digit both in ID and near-OOD, val disjoint from test.
    assert sorted(indices) == list(range(len(digits.target)))
    id_idx = {_digit_index(rel) for name in ID_LISTS for rel, _ in lists[name]}
    near_idx = {_digit_index(rel) for name in ("val_ood.txt", "test_digits89.txt") for rel, _ in lists[name]}
    assert not id_idx & near_idx
    assert not {rel for rel, _ in lists["val_demo.txt"]} & {rel for rel, _ in lists["test_demo.txt"]}
    # The validation OOD set shares no file with any OOD test list.
    val_ood = {rel for rel, _ in lists["val_ood.txt"]}
    for name in ("test_digits89.txt", "test_photos.txt", "test_noise.txt"):
        assert not val_ood & {rel for rel, _ in lists[name]}


# ---------------------------------------------------------------- images and statistics


def test_images_sizes_modes_and_content(root: Path, lists, digits) -> None:
    for entries in lists.values():
        for rel, _ in entries:
            arr = _load(root, rel)
            assert arr.shape == (16, 16, 3) and arr.dtype == np.uint8, rel
            if rel.startswith("demo"):
                assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all(), rel
                np.testing.assert_array_equal(arr, demo._digit_image(digits.images[_digit_index(rel)], 16))
    # Far-OOD photos are colour, and noise covers the full range.
    photos = np.stack([_load(root, rel) for rel, _ in lists["test_photos.txt"]]).astype(int)
    assert np.abs(photos[..., 0] - photos[..., 2]).mean() > 5
    uniform = np.stack([_load(root, rel) for rel, _ in lists["test_noise.txt"] if "/uniform/" in rel])
    assert uniform.min() == 0 and uniform.max() == 255
    assert sum("/blur/" in rel for rel, _ in lists["test_noise.txt"]) == 150


def test_upscaling_is_bilinear_of_the_source() -> None:
    digit = np.zeros((8, 8))
    digit[:, 4:] = 16
    arr = demo._digit_image(digit, 16)[..., 0]
    assert arr.shape == (16, 16) and arr[:, :7].max() == 0 and arr[:, 9:].min() == 255
    assert 0 < arr[0, 7] < arr[0, 8] < 255  # an interpolated edge, not nearest-neighbour blocks


def test_normalisation_stats_match_train_images(root: Path, lists) -> None:
    pixels = np.stack([_load(root, rel) for rel, _ in lists["train_demo.txt"]]).astype(np.float64) / 255
    stats = read_protocol(root)["normalize"]
    np.testing.assert_allclose(stats["mean"], pixels.mean(axis=(0, 1, 2)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(stats["std"], pixels.std(axis=(0, 1, 2)), rtol=0, atol=1e-12)
    assert 0.1 < stats["mean"][0] < 0.6 and 0.1 < stats["std"][0] < 0.5


def test_image_list_dataset_loads_every_list(root: Path, lists) -> None:
    for name, entries in lists.items():
        ds = ImageListDataset(root / "images_classic", root / "benchmark_imglist/demo" / name, transform=ToTensor())
        assert len(ds) == len(entries) and ds.targets == [label for _, label in entries]
        x, y = ds[len(ds) // 2]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
        assert y == entries[len(ds) // 2][1]
    xb, yb = next(iter(torch.utils.data.DataLoader(ds, batch_size=32)))
    assert xb.shape == (32, 3, 16, 16) and yb.shape == (32,)


# ---------------------------------------------------------------- determinism, idempotence, atomicity


def test_same_seed_gives_identical_files(root: Path, tmp_path: Path) -> None:
    again = prepare_demo_data(tmp_path / "demo", image_size=16, seed=1997)
    assert _files(again) == _files(root)


def test_other_seed_gives_other_splits(root: Path, tmp_path: Path) -> None:
    other = prepare_demo_data(tmp_path / "demo", seed=7)
    name = "benchmark_imglist/demo/train_demo.txt"
    assert (other / name).read_text() != (root / name).read_text()


def test_rerun_is_a_no_op(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    watched = [root, root / "benchmark_imglist/demo/protocol.json", root / "images_classic/demo/train/0/0000.png"]
    before = [p.stat().st_mtime_ns for p in watched]
    with caplog.at_level(logging.INFO, logger="src.data.prepare.demo_data"):
        assert prepare_demo_data(root) == root
    assert [p.stat().st_mtime_ns for p in watched] == before
    assert "up to date" in caplog.text


def test_changed_parameters_rebuild(tmp_path: Path) -> None:
    out = prepare_demo_data(tmp_path / "demo", image_size=8, seed=3)
    assert read_protocol(out)["image_size"] == 8
    prepare_demo_data(out, image_size=12, seed=3)
    assert read_protocol(out)["image_size"] == 12
    with Image.open(out / "images_classic/noise/uniform/0000.png") as img:
        assert img.size == (12, 12)
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]


def test_incomplete_output_is_rebuilt(tmp_path: Path) -> None:
    out = prepare_demo_data(tmp_path / "demo", image_size=8, seed=3)
    (out / "benchmark_imglist/demo/test_noise.txt").unlink()
    prepare_demo_data(out, image_size=8, seed=3)
    assert (out / "benchmark_imglist/demo/test_noise.txt").is_file()


def test_failed_build_leaves_previous_output_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = prepare_demo_data(tmp_path / "demo", image_size=8, seed=3)
    before = _files(out)

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(demo, "_write_noise", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare_demo_data(out, image_size=8, seed=4)
    assert _files(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]
    with pytest.raises(RuntimeError):
        prepare_demo_data(tmp_path / "fresh", image_size=8, seed=4)
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 8"):
        prepare_demo_data(tmp_path / "demo", image_size=4)
    with pytest.raises(ValueError, match="non-negative"):
        prepare_demo_data(tmp_path / "demo", seed=-1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        prepare_demo_data(tmp_path / "file")
    with pytest.raises(FileNotFoundError, match=r"prepare_demo_data\.py"):
        read_protocol(tmp_path / "nothing")


@pytest.mark.slow
def test_cli_runs_as_a_plain_script(root: Path, tmp_path: Path) -> None:
    """Stage commands call the file directly from the repository root, without PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = REPO_ROOT / "src/experiments/scripts/prepare_demo_data.py"
    result = subprocess.run(
        [sys.executable, str(script), "--output-root", str(root), "--image-size", "16", "--seed", "1997"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "up to date" in result.stdout
