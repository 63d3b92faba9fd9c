"""The embedded demo dataset: a miniature OpenOOD v1.5 CIFAR-10 protocol.

Built only from data shipped inside scikit-learn, so the whole pipeline (pretraining, finetuning,
OOD study, linear probe) runs offline on a laptop CPU in minutes, through the same image-list
loaders as the real benchmarks. Everything is written as real PNG files plus OpenOOD-style lists:

- **in-distribution** ``demo``: the handwritten digits of ``sklearn.datasets.load_digits``
  (8×8, values 0–16) of classes 0–7, labels 0–7, bilinearly upscaled to ``image_size`` and saved
  as RGB (grey replicated) so the 3-channel CIFAR stem applies unchanged. Split per class with a
  fixed seed into train / val / test ≈ 60 / 10 / 30 %; as OpenOOD's ``val_cifar10.txt`` and
  ``test_cifar10.txt``, val and test are disjoint.
- **near-OOD** ``digits89``: the held-out digit classes 8 and 9 (same style, unseen classes).
- **far-OOD** ``photos``: colour patches cropped at random from scikit-learn's sample photographs
  (china.jpg, flower.jpg) and resized to ``image_size``; ``noise``: uniform RGB noise and
  Gaussian-blurred, contrast-stretched RGB noise.
- **validation OOD** ``val_ood.txt`` (the role of OpenOOD's ``val_tin.txt``): 20 % of each held-out
  digit class, disjoint from ``test_digits89.txt``. As ``val_tin`` is drawn from TinyImageNet (a
  near-OOD set of CIFAR-10) and not from the far-OOD sets, detectors tune their hyper-parameters on
  near-OOD digits and never see a photo or noise image before the test.

Layout under ``output_root`` (the ``data_root`` of the study)::

    images_classic/demo/{train,val,test}/<class>/<digits index>.png
    images_classic/demo_near/{val,test}/<class>/<digits index>.png
    images_classic/photos/{china,flower}/<i>.png
    images_classic/noise/{uniform,blur}/<i>.png
    benchmark_imglist/demo/{train_demo,val_demo,test_demo,val_ood,test_digits89,test_photos,test_noise}.txt
    benchmark_imglist/demo/protocol.json

Digit files are named by their index in ``load_digits`` so a sample can be traced to its source.
Each of the four random parts (ID split, near split, photo crops, noise) draws from its own child
of ``numpy.random.SeedSequence(seed)``, so the same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_digits

from src.data.dataset.imglist import write_image_list
from src.data.prepare.ood_sources import (
    replace_dir,
    save_png,
    stratified_split,
    upscale_digit,
    write_noise,
    write_photo_patches,
)
from src.utils.io import read_json

log = logging.getLogger(__name__)

ID_NAME = "demo"
NUM_CLASSES = 8
NEAR_CLASSES = (8, 9)
# Bumped whenever the generated content changes, so older builds are rebuilt instead of reused.
FORMAT_VERSION = 1
# Per-class shares of the ID digits; the rest is the test split.
TRAIN_FRACTION = 0.6
VAL_FRACTION = 0.1
# Per-class share of the held-out digits that goes to the validation OOD list.
VAL_OOD_FRACTION = 0.2
NUM_PHOTOS = 300
NUM_NOISE = 300  # half uniform, half blurred
# Side of the square crops taken from the 427×640 sample photographs, in source pixels.
PHOTO_CROP_RANGE = (24, 160)
# Radius range of PIL's Gaussian blur for the blurred noise images.
BLUR_RADIUS_RANGE = (0.7, 2.0)

LISTS = {
    "train": "train_demo.txt",
    "val": "val_demo.txt",
    "test": "test_demo.txt",
    "val_ood": "val_ood.txt",
    "digits89": "test_digits89.txt",
    "photos": "test_photos.txt",
    "noise": "test_noise.txt",
}
PROTOCOL_FILE = "protocol.json"


def protocol_path(output_root: str | os.PathLike[str]) -> Path:
    """Where ``protocol.json`` of the demo data under ``output_root`` lives."""
    return Path(output_root) / "benchmark_imglist" / ID_NAME / PROTOCOL_FILE


def read_protocol(output_root: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``protocol.json`` of the demo data under ``output_root``.

    Raises:
        FileNotFoundError: the demo data has not been prepared there.
        ValueError: ``protocol.json`` is not valid JSON.
    """
    path = protocol_path(output_root)
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} does not exist; run `python src/experiments/scripts/prepare_demo_data.py "
            f"--output-root {output_root}` first"
        )
    return read_json(path)  # invalid JSON: a ValueError naming the file and how to fix it


def _is_up_to_date(output_root: Path, image_size: int, seed: int) -> bool:
    """True if ``output_root`` holds a complete build made with the same parameters."""
    try:
        protocol = read_protocol(output_root)
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    wanted = {"id_name": ID_NAME, "image_size": image_size, "seed": seed, "version": FORMAT_VERSION}
    if any(protocol.get(key) != value for key, value in wanted.items()):
        return False
    list_dir = output_root / "benchmark_imglist" / ID_NAME
    return all((list_dir / name).is_file() for name in LISTS.values())


def _digit_image(digit: np.ndarray, image_size: int) -> np.ndarray:
    """An 8×8 digit (values 0–16) as an ``image_size``² RGB uint8 array (grey replicated), bilinearly upscaled."""
    return np.repeat(upscale_digit(digit, image_size)[:, :, None], 3, axis=2)


def _write_digits(
    images_root: Path,
    folder: str,
    indices: Sequence[int],
    digits: np.ndarray,
    labels: np.ndarray,
    image_size: int,
    list_label: int | None,
) -> tuple[list[tuple[str, int]], list[np.ndarray]]:
    """Save digits ``indices`` under ``folder/<class>/<index>.png``; return list entries and arrays.

    ``list_label`` replaces the class label in the list (``-1`` for OOD); ``None`` keeps it.
    """
    order = sorted(indices, key=lambda i: (int(labels[i]), i))
    entries, arrays = [], []
    for i in order:
        arr = _digit_image(digits[i], image_size)
        rel = f"{folder}/{int(labels[i])}/{i:04d}.png"
        save_png(arr, images_root / rel)
        entries.append((rel, int(labels[i]) if list_label is None else list_label))
        arrays.append(arr)
    return entries, arrays


def _write_photos(images_root: Path, image_size: int, rng: np.random.Generator) -> list[tuple[str, int]]:
    """Random square colour crops of scikit-learn's sample photographs, resized to ``image_size``."""
    return write_photo_patches(images_root, NUM_PHOTOS, image_size, rng, PHOTO_CROP_RANGE)


def _write_noise(images_root: Path, image_size: int, rng: np.random.Generator) -> list[tuple[str, int]]:
    """Uniform RGB noise (first half) and Gaussian-blurred, contrast-stretched RGB noise (second half)."""
    return write_noise(images_root, NUM_NOISE, image_size, rng, BLUR_RADIUS_RANGE, channels=3)


def _build(root: Path, image_size: int, seed: int) -> dict[str, Any]:
    """Write the whole demo dataset under ``root``; return the protocol written to ``protocol.json``."""
    images_root = root / "images_classic"
    list_dir = root / "benchmark_imglist" / ID_NAME
    id_rng, near_rng, photo_rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))

    digits = load_digits()
    images, labels = digits.images, digits.target

    train, val, test = stratified_split(labels, range(NUM_CLASSES), (TRAIN_FRACTION, VAL_FRACTION), id_rng)
    val_ood, near_test = stratified_split(labels, NEAR_CLASSES, (VAL_OOD_FRACTION,), near_rng)

    # (list key, image folder, digit indices, list label: None keeps the class, -1 marks OOD)
    digit_parts = [
        ("train", f"{ID_NAME}/train", train, None),
        ("val", f"{ID_NAME}/val", val, None),
        ("test", f"{ID_NAME}/test", test, None),
        ("val_ood", f"{ID_NAME}_near/val", val_ood, -1),
        ("digits89", f"{ID_NAME}_near/test", near_test, -1),
    ]
    lists: dict[str, list[tuple[str, int]]] = {}
    arrays: dict[str, list[np.ndarray]] = {}
    for key, folder, indices, list_label in digit_parts:
        lists[key], arrays[key] = _write_digits(images_root, folder, indices, images, labels, image_size, list_label)
    lists["photos"] = _write_photos(images_root, image_size, photo_rng)
    lists["noise"] = _write_noise(images_root, image_size, noise_rng)
    for key, entries in lists.items():
        write_image_list(list_dir / LISTS[key], entries)

    # Statistics of exactly the pixels the train loader will see (the saved uint8 values).
    pixels = np.stack(arrays["train"]).astype(np.float64) / 255.0
    protocol: dict[str, Any] = {
        "id_name": ID_NAME,
        "num_classes": NUM_CLASSES,
        "image_size": image_size,
        "seed": seed,
        "version": FORMAT_VERSION,
        "id": {"train": LISTS["train"], "val": LISTS["val"], "test": LISTS["test"]},
        "ood": {
            "val": LISTS["val_ood"],
            "near": {"digits89": LISTS["digits89"]},
            "far": {"photos": LISTS["photos"], "noise": LISTS["noise"]},
        },
        "normalize": {
            "mean": [float(v) for v in pixels.mean(axis=(0, 1, 2))],
            "std": [float(v) for v in pixels.std(axis=(0, 1, 2))],
        },
        "counts": {LISTS[key]: len(entries) for key, entries in lists.items()},
    }
    (list_dir / PROTOCOL_FILE).write_text(json.dumps(protocol, indent=2) + "\n", encoding="utf-8")
    return protocol


def prepare_demo_data(output_root: Path, image_size: int = 16, seed: int = 1997) -> Path:
    """Write the demo dataset (see the module docstring) to ``output_root``, unless already there.

    The build goes into a temporary sibling directory that is renamed to ``output_root`` at the
    end, so an interrupted run never leaves a half-written dataset behind. If ``output_root``
    already holds a build with the same ``image_size``, ``seed`` and format version, nothing is
    written; a build with other parameters is replaced.

    Args:
        output_root: The data root to create (e.g. ``data/demo/dataset``).
        image_size: Side of every square image, at least 8 (the digits' native size).
        seed: Seed of the splits, photo crops and noise.

    Returns:
        ``output_root``.

    Raises:
        ValueError: ``image_size`` < 8 or ``seed`` < 0.
        FileExistsError: ``output_root`` exists and is not a directory.
    """
    output_root = Path(output_root)
    if image_size < 8:
        raise ValueError(f"image_size={image_size} must be at least 8, the side of the source digits")
    if seed < 0:
        raise ValueError(f"seed={seed} must be non-negative")
    if output_root.exists() and not output_root.is_dir():
        raise FileExistsError(f"output root {str(output_root)!r} exists and is not a directory")
    if _is_up_to_date(output_root, image_size, seed):
        log.info("demo data at %s is up to date (image_size=%d, seed=%d)", output_root, image_size, seed)
        return output_root

    output_root.parent.mkdir(parents=True, exist_ok=True)
    # Same parent, so the final rename stays within one file system and is atomic.
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = output_root.parent / f".{output_root.name}.tmp-{tag}"
    tmp.mkdir()
    try:
        protocol = _build(tmp, image_size, seed)
        replace_dir(tmp, output_root)  # the previous build is put back if the rename fails
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log.info("wrote demo data to %s: %s", output_root, protocol["counts"])
    return output_root
