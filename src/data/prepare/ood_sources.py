"""Image sources and file helpers shared by the dataset writers (``demo_data.py``, ``fashion_mnist_data.py``).

Both writers build OpenOOD-style folders from data bundled in scikit-learn and generated noise:
the 8×8 handwritten digits upscaled, random square crops of the two sample photographs, and
uniform / blurred noise. Each function draws only from the generator it is given, in a fixed
order, so a writer's seed fixes its files byte for byte.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from sklearn.datasets import load_sample_images

Entries = list[tuple[str, int]]  # (path relative to images_classic/, list label)


def save_png(image: Image.Image | np.ndarray, path: Path) -> None:
    """Save a PIL image or a uint8 array (H×W grey or H×W×3 RGB) as PNG, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    (Image.fromarray(image) if isinstance(image, np.ndarray) else image).save(path, format="PNG")


def replace_dir(tmp: Path, final: Path) -> None:
    """Rename the finished folder ``tmp`` to ``final``, replacing an existing ``final``.

    The previous ``final`` is moved aside first and put back if the rename fails, so a failure
    leaves the old build rather than nothing. Both must be on one file system (siblings).
    """
    if not final.exists():
        os.replace(tmp, final)
        return
    old = final.parent / f".{final.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(old, final)
        raise
    shutil.rmtree(old)


def upscale_digit(digit: np.ndarray, size: int) -> np.ndarray:
    """An 8×8 scikit-learn digit (values 0–16) as a ``size``² grey uint8 array, bilinearly upscaled."""
    # Resizing in float ('F' mode) before quantising avoids rounding the 17 grey levels twice.
    grey = Image.fromarray((digit * (255.0 / 16.0)).astype(np.float32))
    grey = grey.resize((size, size), Image.Resampling.BILINEAR)
    return np.clip(np.rint(np.asarray(grey)), 0, 255).astype(np.uint8)


def stratified_split(
    labels: np.ndarray,
    classes: Sequence[int],
    fractions: Sequence[float],
    rng: np.random.Generator,
    min_first: int = 0,
) -> list[list[int]]:
    """Indices of ``labels`` split per class into ``len(fractions) + 1`` parts (the last takes the rest).

    Each class is shuffled once and cut at ``round(fraction * count)`` boundaries, so every part
    keeps the class proportions and the parts are disjoint. With ``min_first`` the first part gets
    at least that many of a class that has more samples than it. Each part is sorted.
    """
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for c in classes:
        idx = rng.permutation(np.flatnonzero(labels == c))
        sizes = [round(f * len(idx)) for f in fractions]
        if len(idx) > min_first:
            sizes[0] = max(sizes[0], min_first)
        for part, chunk in zip(parts, np.split(idx, np.cumsum(sizes)), strict=True):
            part.extend(int(i) for i in chunk)
    return [sorted(part) for part in parts]


def write_photo_patches(
    images_root: Path,
    count: int,
    size: int,
    rng: np.random.Generator,
    crop_range: tuple[int, int],
    grey: bool = False,
) -> Entries:
    """``count`` random square crops (side in ``crop_range``) of scikit-learn's two sample photographs
    (427×640 RGB), resized to ``size`` and saved as ``photos/<photo>/<i>.png``; grey if asked."""
    samples = load_sample_images()
    sources = []
    for name, img in zip(samples.filenames, samples.images):
        photo = Image.fromarray(img)
        sources.append((Path(name).stem, photo.convert("L") if grey else photo))
    entries = []
    for i in range(count):
        name, photo = sources[int(rng.integers(len(sources)))]
        side = int(rng.integers(crop_range[0], crop_range[1] + 1))
        left = int(rng.integers(photo.width - side + 1))
        top = int(rng.integers(photo.height - side + 1))
        patch = photo.crop((left, top, left + side, top + side))
        patch = patch.resize((size, size), Image.Resampling.BILINEAR)
        rel = f"photos/{name}/{i:04d}.png"
        save_png(patch, images_root / rel)
        entries.append((rel, -1))
    return entries


def write_noise(
    images_root: Path,
    count: int,
    size: int,
    rng: np.random.Generator,
    blur_radius_range: tuple[float, float],
    channels: int = 3,
) -> Entries:
    """Uniform noise (first half) and Gaussian-blurred, contrast-stretched noise (second half), as
    ``noise/{uniform,blur}/<i>.png``; ``channels`` 3 (RGB) or 1 (grey)."""
    shape = (size, size, 3) if channels == 3 else (size, size)
    entries = []
    for i in range(count):
        arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
        kind = "uniform"
        if i >= count // 2:
            kind = "blur"
            radius = float(rng.uniform(*blur_radius_range))
            blurred = np.asarray(Image.fromarray(arr).filter(ImageFilter.GaussianBlur(radius)), dtype=np.float64)
            # Blurring averages the noise towards mid-grey; stretching restores full contrast so the
            # images differ from the ID data by structure, not by a trivially low dynamic range.
            lo, hi = blurred.min(), blurred.max()
            arr = np.rint((blurred - lo) * (255.0 / max(hi - lo, 1.0))).astype(np.uint8)
        rel = f"noise/{kind}/{i:04d}.png"
        save_png(arr, images_root / rel)
        entries.append((rel, -1))
    return entries
