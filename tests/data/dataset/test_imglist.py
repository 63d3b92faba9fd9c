"""OpenOOD-style image lists: reading, atomic writing, and every error path of ImageListDataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import ToTensor

from src.data.dataset import ImageListDataset, ImageListError, read_image_list, write_image_list


def _save(root: Path, rel: str, mode: str = "RGB", size: int = 6, value: int = 100) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    arr = np.full((size, size, channels), value, dtype=np.uint8).squeeze(-1 if channels == 1 else ())
    Image.fromarray(arr).save(path)  # mode follows from the channel count


@pytest.fixture
def images_root(tmp_path: Path) -> Path:
    """images_classic with a grey, a colour and an RGBA image."""
    root = tmp_path / "images_classic"
    _save(root, "toy/a/0.png", mode="L", value=10)
    _save(root, "toy/b/1.png", mode="RGB", value=20)
    _save(root, "ood/2.png", mode="RGBA", value=30)
    return root


def _list(tmp_path: Path, text: str, name: str = "list.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- reading and writing


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    entries = [("toy/a/0.png", 0), ("toy/b/1.png", 7), ("ood/2.png", -1)]
    out = write_image_list(tmp_path / "sub" / "l.txt", entries)
    assert out == tmp_path / "sub" / "l.txt"
    assert out.read_text() == "toy/a/0.png 0\ntoy/b/1.png 7\nood/2.png -1\n"
    assert read_image_list(out) == entries
    # The temporary file was renamed, not left behind.
    assert sorted(p.name for p in out.parent.iterdir()) == ["l.txt"]


def test_write_replaces_existing_list(tmp_path: Path) -> None:
    path = write_image_list(tmp_path / "l.txt", [("a.png", 1)])
    write_image_list(path, [("b.png", 2)])
    assert read_image_list(path) == [("b.png", 2)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.txt"]


@pytest.mark.parametrize(
    ("entries", "fragment"),
    [
        ([("/abs/a.png", 0)], "relative"),
        ([("with space.png", 0)], "whitespace"),
        ([("", 0)], "non-empty"),
        ([("a.png", True)], "must be an int"),
        ([("a.png", "3")], "must be an int"),
        ([], "empty"),
    ],
)
def test_write_rejects_entries_that_would_not_read_back(tmp_path: Path, entries, fragment: str) -> None:
    with pytest.raises(ImageListError, match=fragment):
        write_image_list(tmp_path / "l.txt", entries)
    assert not (tmp_path / "l.txt").exists()
    assert list(tmp_path.iterdir()) == []


def test_read_skips_blank_lines_and_handles_crlf(tmp_path: Path) -> None:
    path = _list(tmp_path, "a.png 0\r\n\n  \nb/c.png -1\r\n")
    assert read_image_list(path) == [("a.png", 0), ("b/c.png", -1)]


def test_read_tolerates_extra_spaces_around_the_label(tmp_path: Path) -> None:
    assert read_image_list(_list(tmp_path, "a.png  3 \n")) == [("a.png", 3)]


# ---------------------------------------------------------------- error paths


def test_missing_list_file(tmp_path: Path, images_root: Path) -> None:
    missing = tmp_path / "nope.txt"
    for call in (lambda: read_image_list(missing), lambda: ImageListDataset(images_root, missing)):
        with pytest.raises(FileNotFoundError) as err:
            call()
        msg = str(err.value)
        assert str(missing) in msg and "does not exist" in msg and "prepare_demo_data" in msg


@pytest.mark.parametrize("text", ["", "\n\n", "   \n"])
def test_empty_list(tmp_path: Path, images_root: Path, text: str) -> None:
    path = _list(tmp_path, text)
    with pytest.raises(ImageListError) as err:
        ImageListDataset(images_root, path)
    msg = str(err.value)
    assert str(path) in msg and "is empty" in msg and "at least one" in msg


@pytest.mark.parametrize("bad_line", ["toy/b/1.png", "toy/b/1.png\t1", " 1"])
def test_line_without_space_separated_label(tmp_path: Path, images_root: Path, bad_line: str) -> None:
    path = _list(tmp_path, f"toy/a/0.png 0\n{bad_line}\n")
    with pytest.raises(ImageListError) as err:
        ImageListDataset(images_root, path)
    msg = str(err.value)
    assert str(path) in msg and "line 2" in msg
    assert "single space" in msg and repr(bad_line) in msg and "-1 for OOD" in msg


@pytest.mark.parametrize("label", ["abc", "1.5", "{'x': 1}", "", "3 4"])
def test_label_not_an_int(tmp_path: Path, images_root: Path, label: str) -> None:
    path = _list(tmp_path, f"toy/a/0.png 0\ntoy/a/0.png 1\ntoy/b/1.png {label}\n")
    with pytest.raises(ImageListError) as err:
        ImageListDataset(images_root, path)
    msg = str(err.value)
    assert str(path) in msg and "line 3" in msg
    assert f"label {label.strip()!r} is not an integer" in msg and "may not contain spaces" in msg


def test_absolute_path(tmp_path: Path, images_root: Path) -> None:
    path = _list(tmp_path, f"{images_root}/toy/a/0.png 0\n")
    with pytest.raises(ImageListError) as err:
        ImageListDataset(images_root, path)
    msg = str(err.value)
    assert str(path) in msg and "line 1" in msg and "absolute" in msg
    assert "relative to the images_classic" in msg and "leading '/'" in msg


def test_missing_image_is_reported_at_construction(tmp_path: Path, images_root: Path) -> None:
    path = _list(tmp_path, "toy/a/0.png 0\n\ntoy/a/missing.png 0\n")
    with pytest.raises(FileNotFoundError) as err:
        ImageListDataset(images_root, path)
    msg = str(err.value)
    assert str(path) in msg and "1 missing image file(s)" in msg
    # Line numbers count blank lines, so they match what an editor shows.
    assert f"line 3: {str(images_root / 'toy/a/missing.png')!r}" in msg
    assert "images_classic" in msg and "regenerate" in msg


def test_many_missing_images_are_summarised(tmp_path: Path, images_root: Path) -> None:
    path = _list(tmp_path, "".join(f"gone/{i}.png -1\n" for i in range(12)))
    with pytest.raises(FileNotFoundError) as err:
        ImageListDataset(images_root, path)
    msg = str(err.value)
    assert "12 missing image file(s)" in msg and "(and 7 more)" in msg
    assert "line 5:" in msg and "line 6:" not in msg


def test_missing_root(tmp_path: Path) -> None:
    path = _list(tmp_path, "a.png 0\n")
    with pytest.raises(FileNotFoundError) as err:
        ImageListDataset(tmp_path / "no_root", path)
    msg = str(err.value)
    assert str(tmp_path / "no_root") in msg and str(path) in msg and "images_classic" in msg


@pytest.mark.parametrize("corruption", ["garbage", "truncated"])
def test_corrupted_image_raises_at_load_time(tmp_path: Path, images_root: Path, corruption: str) -> None:
    bad = images_root / "toy/b/bad.png"
    if corruption == "garbage":
        bad.write_bytes(b"this is not a png")
    else:
        _save(images_root, "toy/b/big.png", size=64)
        data = (images_root / "toy/b/big.png").read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    path = _list(tmp_path, "toy/a/0.png 0\ntoy/b/bad.png 1\n")
    ds = ImageListDataset(images_root, path)  # existence is all that is checked up front
    assert ds[0][1] == 0
    with pytest.raises(ImageListError) as err:
        ds[1]
    msg = str(err.value)
    assert str(bad) in msg and str(path) in msg and "line 2" in msg and "corrupted" in msg
    assert err.value.__cause__ is not None


# ---------------------------------------------------------------- loading


def test_dataset_items_targets_and_rgb_conversion(tmp_path: Path, images_root: Path) -> None:
    path = write_image_list(tmp_path / "l.txt", [("toy/a/0.png", 0), ("toy/b/1.png", 5), ("ood/2.png", -1)])
    ds = ImageListDataset(images_root, path)
    assert len(ds) == 3 and ds.targets == [0, 5, -1]
    assert ds.samples[1] == (images_root / "toy/b/1.png", 5)
    assert not hasattr(ds, "classes")  # labels come from the list only
    for i, value in enumerate((10, 20, 30)):
        image, label = ds[i]
        assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (6, 6)
        assert label == ds.targets[i]
        assert np.all(np.asarray(image) == value)


def test_dataset_with_to_tensor(tmp_path: Path, images_root: Path) -> None:
    path = write_image_list(tmp_path / "l.txt", [("toy/a/0.png", 0), ("ood/2.png", -1)])
    ds = ImageListDataset(str(images_root), str(path), transform=ToTensor())
    x, y = ds[0]
    assert isinstance(x, torch.Tensor) and x.shape == (3, 6, 6) and x.dtype == torch.float32 and y == 0
    assert torch.allclose(x, torch.full_like(x, 10 / 255))
    xb, yb = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert xb.shape == (2, 3, 6, 6) and yb.tolist() == [0, -1]
