"""The pure tensor ops of the device SSL views (src/data/augment/tensor_ops.py) against torchvision / PIL.

Every op on fixed parameters against torchvision's functional ops on each sample (and PIL where the
CPU path uses PIL). Everything runs on the CPU.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from PIL import ImageFilter, ImageOps
from torch import Tensor
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from src.data.augment import tensor_ops as G
from src.data.augment.device_views import sample_crop_boxes
from src.data.augment.transforms import CIFAR10_NORMALIZE
from tests.data.augment.conftest import from_pil, per_sample, to_pil, uint8_images

MEAN, STD = CIFAR10_NORMALIZE["mean"], CIFAR10_NORMALIZE["std"]


# ------------------------------------------------------------------------- (a) ops


def reference_get_params(
    draws: tuple[Tensor, Tensor, Tensor], height: int, width: int, ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params`` loop, consuming given draws instead of the RNG."""
    area_draws, log_ratio_draws, offsets = draws
    for a in range(area_draws.shape[0]):
        target_area = height * width * area_draws[a].item()
        aspect_ratio = torch.exp(log_ratio_draws[a]).item()
        w = round(math.sqrt(target_area * aspect_ratio))
        h = round(math.sqrt(target_area / aspect_ratio))
        if 0 < w <= width and 0 < h <= height:
            return int(offsets[0].item() * (height - h + 1)), int(offsets[1].item() * (width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@pytest.mark.parametrize(
    ("height", "width", "scale"), [(32, 32, (0.08, 1.0)), (20, 40, (0.5, 1.0)), (40, 18, (0.08, 1.0))]
)
def test_crop_boxes_follow_get_params_on_the_same_draws(height: int, width: int, scale: tuple[float, float]) -> None:
    g = torch.Generator().manual_seed(1)
    n = 400
    area = torch.empty(n, G.CROP_ATTEMPTS).uniform_(*scale, generator=g)
    log_lo, log_hi = torch.log(torch.tensor(G.CROP_RATIO)).tolist()
    log_ratio = torch.empty(n, G.CROP_ATTEMPTS).uniform_(log_lo, log_hi, generator=g)
    offsets = torch.rand(n, 2, dtype=torch.float64, generator=g)
    boxes = G.crop_boxes_from_draws(area, log_ratio, offsets, height, width)
    expected = [
        reference_get_params((area[b], log_ratio[b], offsets[b]), height, width, G.CROP_RATIO) for b in range(n)
    ]
    assert boxes.tolist() == [list(e) for e in expected]


@pytest.mark.parametrize(("height", "width"), [(32, 32), (20, 40), (40, 20)])
def test_crop_fallback_is_torchvision_s(height: int, width: int) -> None:
    """An unreachable scale makes all 10 attempts fail: the deterministic fallback box."""
    scale = (1.5, 2.0)
    boxes = sample_crop_boxes(5, height, width, scale=scale)
    expected = T.RandomResizedCrop.get_params(torch.zeros(3, height, width), list(scale), list(G.CROP_RATIO))
    assert boxes.tolist() == [list(expected)] * 5


def test_resized_crop_matches_torchvision_up_and_down() -> None:
    g = torch.Generator().manual_seed(2)
    for (height, width), size in (((32, 32), 32), ((64, 48), 24), ((30, 30), (32, 20))):
        x = torch.rand(24, 3, height, width, generator=g)
        boxes = sample_crop_boxes(24, height, width, generator=g)
        out_size = [size, size] if isinstance(size, int) else list(size)
        expected = torch.stack([TF.resized_crop(x[b], *boxes[b].tolist(), out_size, antialias=True) for b in range(24)])
        torch.testing.assert_close(G.resized_crop(x, boxes, size), expected, atol=2e-6, rtol=0)


def test_resized_crop_matches_the_pil_path_within_rounding() -> None:
    """The CPU path crops and resizes PIL images (uint8 output): at most one uint8 step apart."""
    x = uint8_images(16, seed=3)
    boxes = sample_crop_boxes(16, 32, 32, generator=torch.Generator().manual_seed(3))
    pil = torch.stack([from_pil(TF.resized_crop(to_pil(x[b]), *boxes[b].tolist(), [32, 32])) for b in range(16)])
    diff = (G.resized_crop(x.float() / 255, boxes, 32) - pil).abs() * 255
    assert diff.max() <= 1.0 + 1e-4 and diff.mean() < 0.4


def test_flip_grayscale_solarize_normalize_match_torchvision() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.rand(8, 3, 16, 16, generator=g)
    mask = torch.tensor([True, False] * 4)
    flipped = G.horizontal_flip(x, mask)
    assert torch.equal(flipped[mask], TF.hflip(x[mask])) and torch.equal(flipped[~mask], x[~mask])
    gray = G.random_grayscale(x, mask)
    assert torch.equal(gray[mask], TF.rgb_to_grayscale(x[mask], num_output_channels=3))
    assert torch.equal(gray[~mask], x[~mask])
    sol = G.solarize(x, mask)
    assert torch.equal(sol[mask], TF.solarize(x[mask], 0.5)) and torch.equal(sol[~mask], x[~mask])
    mean, std = torch.tensor(MEAN), torch.tensor(STD)
    assert torch.equal(G.normalize(x, mean, std), TF.normalize(x, list(MEAN), list(STD)))


def test_solarize_and_grayscale_match_pil_on_uint8() -> None:
    """Solarize: PIL's threshold 128 on uint8 = 0.5 on v/255, exactly. Grayscale: PIL's 0.299 vs 0.2989, < 1 step."""
    x = uint8_images(6, seed=5)
    xf = x.float() / 255
    everyone = torch.ones(6, dtype=torch.bool)
    pil = torch.stack([from_pil(ImageOps.solarize(to_pil(im), threshold=128)) for im in x])
    assert torch.equal((G.solarize(xf, everyone) * 255).round(), (pil * 255).round())
    pil_gray = torch.stack([from_pil(TF.rgb_to_grayscale(to_pil(im), 3)) for im in x])
    assert ((G.random_grayscale(xf, everyone) - pil_gray).abs() * 255).max() <= 0.6


def test_colour_ops_match_torchvision_per_sample_factors() -> None:
    g = torch.Generator().manual_seed(6)
    x = torch.rand(12, 3, 16, 16, generator=g)
    factor = torch.empty(12).uniform_(0.6, 1.4, generator=g)
    for ours, theirs in (
        (G.adjust_brightness, TF.adjust_brightness),
        (G.adjust_contrast, TF.adjust_contrast),
        (G.adjust_saturation, TF.adjust_saturation),
    ):
        torch.testing.assert_close(ours(x, factor), per_sample(theirs, x, factor), atol=1e-6, rtol=0)
        assert torch.equal(ours(x, torch.ones(12)), x)  # factor 1 is an exact identity (color_jitter relies on it)
    shift = torch.empty(12).uniform_(-0.5, 0.5, generator=g)
    torch.testing.assert_close(G.adjust_hue(x, shift), per_sample(TF.adjust_hue, x, shift), atol=1e-6, rtol=0)


def test_colour_ops_match_the_pil_path_within_rounding() -> None:
    """The CPU path's PIL blends truncate to uint8 (< 1 step, biased down); PIL's uint8 HSV round
    trip is coarser (several steps at some pixels even for a zero shift), so hue is bounded on average."""
    x = uint8_images(12, seed=7)
    xf = x.float() / 255
    g = torch.Generator().manual_seed(7)
    factor = torch.empty(12).uniform_(0.6, 1.4, generator=g)
    for ours, theirs in (
        (G.adjust_brightness, TF.adjust_brightness),
        (G.adjust_contrast, TF.adjust_contrast),
        (G.adjust_saturation, TF.adjust_saturation),
    ):
        pil = torch.stack([from_pil(theirs(to_pil(x[b]), factor[b].item())) for b in range(12)])
        assert ((ours(xf, factor) - pil).abs() * 255).max() <= 1.5
    shift = torch.empty(12).uniform_(-0.1, 0.1, generator=g)
    pil = torch.stack([from_pil(TF.adjust_hue(to_pil(x[b]), shift[b].item())) for b in range(12)])
    assert ((G.adjust_hue(xf, shift) - pil).abs() * 255).mean() < 1.5


def test_color_jitter_applies_each_sample_s_ops_in_its_order() -> None:
    g = torch.Generator().manual_seed(8)
    n = 48  # 24 permutations, each twice
    x = torch.rand(n, 3, 12, 12, generator=g)
    order = torch.tensor([list(p) for p in itertools.permutations(range(4))] * 2)
    apply = torch.rand(n, generator=g) < 0.8
    one = torch.ones(n)
    b = torch.where(apply, torch.empty(n).uniform_(0.6, 1.4, generator=g), one)
    c = torch.where(apply, torch.empty(n).uniform_(0.6, 1.4, generator=g), one)
    s = torch.where(apply, torch.empty(n).uniform_(0.8, 1.2, generator=g), one)
    h = torch.where(apply, torch.empty(n).uniform_(-0.1, 0.1, generator=g), one - 1)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    expected = []
    for i in range(n):
        img = x[i]
        if apply[i]:
            for op in order[i].tolist():
                img = ops[op](img, (b, c, s, h)[op][i].item())
        expected.append(img)
    out = G.color_jitter(x, b, c, s, h, order, apply)
    torch.testing.assert_close(out, torch.stack(expected), atol=1e-6, rtol=0)
    assert torch.equal(out[~apply], x[~apply])


def pil_fixed_point_blur(x: Tensor, sigma: float) -> Tensor:
    """PIL's GaussianBlur re-done with the module's radius and box passes but PIL's 24-bit fixed-point
    weights and per-pass rounding (Pillow BoxBlur.c): reproduces PIL bit for bit."""
    radius = float(G.pil_box_blur_radius(sigma))
    whole = int(radius)
    ww = int((1 << 24) / (radius * 2 + 1))
    fw = ((1 << 24) - (whole * 2 + 1) * ww) // 2
    kernel = torch.full((1, 2 * whole + 3), float(ww), dtype=torch.float64)
    kernel[0, 0] = kernel[0, -1] = fw
    y = x.double()
    for dim in (-1, -2):
        for _ in range(3):
            y = torch.floor((G._box_pass(y, kernel, dim) + (1 << 23)) / (1 << 24))
    return y


@pytest.mark.parametrize("sigma", [0.1, 0.37, 0.8, 1.37, 1.99])
def test_blur_is_pil_gaussian_blur(sigma: float) -> None:
    x = uint8_images(4, seed=9)
    pil = torch.stack(
        [torch.from_numpy(np.array(to_pil(im).filter(ImageFilter.GaussianBlur(radius=sigma)))) for im in x]
    )
    pil = pil.permute(0, 3, 1, 2).double()
    # the algorithm (radius formula, extended box, edges, pass order) is PIL's ...
    assert torch.equal(pil_fixed_point_blur(x, sigma), pil)
    # ... and the float version differs only by PIL's per-pass rounding
    ours = G.gaussian_blur_pil(x.float() / 255, torch.full((4,), sigma)) * 255
    diff = (ours.double() - pil).abs()
    assert diff.max() <= 3.0 and diff.mean() <= 1.1


def test_blur_kernel_and_per_sample_sigma() -> None:
    sigma = torch.tensor([0.1, 0.5, 1.0, 2.0])
    radius = G.pil_box_blur_radius(sigma)
    kernel = G._box_kernel(radius, 2)
    torch.testing.assert_close(kernel.sum(1), torch.ones(4))
    # three passes of the extended box have variance sigma² (Gwosdek et al.): the defining property
    offsets = torch.arange(-2, 3, dtype=torch.float32)
    torch.testing.assert_close(3 * (kernel * offsets**2).sum(1), sigma**2, atol=1e-5, rtol=1e-5)
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(10))
    batched = G.gaussian_blur_pil(x, sigma)
    single = torch.cat([G.gaussian_blur_pil(x[i : i + 1], sigma[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, single, atol=1e-6, rtol=0)
