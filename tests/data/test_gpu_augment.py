"""The device SSL views (src/data/gpu_augment.py) against torchvision / PIL and the CPU path (issue 8).

(a) every op on fixed parameters against torchvision's functional ops (and PIL where the CPU
path uses PIL); (b) the parameter distributions over many draws against torchvision's samplers
and the probabilities of ``cifar_ssl_transform``, and view statistics CPU path vs device path;
(c) the CIFAR datamodule with ``augment_on_device`` through its ``on_after_batch_transfer``
hook and a short Lightning fit. Everything runs on the CPU.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image, ImageFilter, ImageOps
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from src.data import gpu_augment as G
from src.data.datamodule import CIFAR10DataModule
from src.data.transforms import (
    CIFAR10_NORMALIZE,
    BYOLView1Transform,
    BYOLView2Transform,
    FinetuneViewTransform,
    cifar_ssl_transform,
)
from tests.conftest import build_model

MEAN, STD = CIFAR10_NORMALIZE["mean"], CIFAR10_NORMALIZE["std"]
IGNORED = {"name": "cifar10", "num_classes": 10, "flatten_dim": 3072}


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """One intra-op thread (as tests/downstream): these small batches gain nothing from two, and a busy
    second core makes two-thread OpenMP kernels an order of magnitude slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def uint8_images(n: int, size: int = 32, seed: int = 0) -> Tensor:
    """Smooth colour gradients with texture and noise, uint8 [n, 3, size, size] (image-like statistics)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    images = []
    for _ in range(n):
        c = torch.rand(3, 4, generator=g)[..., None, None]
        img = c[:, 0] + c[:, 1] * xx + c[:, 2] * yy + 0.3 * torch.sin(6.28 * (3 * c[:, 3] + 1) * xx * yy)
        img = img + 0.1 * torch.randn(3, size, size, generator=g)
        img = (img - img.amin()) / (img.amax() - img.amin())
        images.append((img * 255).round().to(torch.uint8))
    return torch.stack(images)


def to_pil(x: Tensor) -> Image.Image:
    return Image.fromarray(x.permute(1, 2, 0).numpy())


def from_pil(image: Image.Image) -> Tensor:
    """PIL RGB → float [3, H, W] in [0, 1] (ToTensor)."""
    return TF.to_tensor(image)


def per_sample(fn: Any, x: Tensor, *args: Tensor) -> Tensor:
    """Apply a torchvision single-image op with the sample's own scalar arguments."""
    return torch.stack([fn(x[b], *[a[b].tolist() for a in args]) for b in range(x.shape[0])])


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
    boxes = G.sample_crop_boxes(5, height, width, scale=scale)
    expected = T.RandomResizedCrop.get_params(torch.zeros(3, height, width), list(scale), list(G.CROP_RATIO))
    assert boxes.tolist() == [list(expected)] * 5


def test_resized_crop_matches_torchvision_up_and_down() -> None:
    g = torch.Generator().manual_seed(2)
    for (height, width), size in (((32, 32), 32), ((64, 48), 24), ((30, 30), (32, 20))):
        x = torch.rand(24, 3, height, width, generator=g)
        boxes = G.sample_crop_boxes(24, height, width, generator=g)
        out_size = [size, size] if isinstance(size, int) else list(size)
        expected = torch.stack([TF.resized_crop(x[b], *boxes[b].tolist(), out_size, antialias=True) for b in range(24)])
        torch.testing.assert_close(G.resized_crop(x, boxes, size), expected, atol=2e-6, rtol=0)


def test_resized_crop_matches_the_pil_path_within_rounding() -> None:
    """The CPU path crops and resizes PIL images (uint8 output): at most one uint8 step apart."""
    x = uint8_images(16, seed=3)
    boxes = G.sample_crop_boxes(16, 32, 32, generator=torch.Generator().manual_seed(3))
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


def test_finetune_view_is_bit_identical_and_resize_matches_pil() -> None:
    x = uint8_images(8, seed=11)
    _, _, v3 = G.DeviceSSLAugment(32, MEAN, STD)(x)
    cpu = torch.stack([FinetuneViewTransform(32, {"mean": MEAN, "std": STD})(to_pil(im)) for im in x])
    assert torch.equal(v3, cpu)
    # another size: PIL's antialiased bilinear resize, up to uint8 rounding
    _, _, v3_small = G.DeviceSSLAugment(20, MEAN, STD)(x)
    cpu_small = torch.stack([FinetuneViewTransform(20, {"mean": MEAN, "std": STD})(to_pil(im)) for im in x])
    assert ((v3_small - cpu_small) * torch.tensor(STD).view(3, 1, 1)).abs().max() * 255 <= 1.0 + 1e-3


def test_forward_shapes_and_input_check() -> None:
    aug = G.DeviceSSLAugment(24, MEAN, STD)
    views = aug(uint8_images(5))
    assert [tuple(v.shape) for v in views] == [(5, 3, 24, 24)] * 3
    assert all(v.dtype == torch.float32 for v in views)
    with pytest.raises(TypeError, match="uint8"):
        aug(torch.rand(2, 3, 32, 32))
    assert aug.augment_batch(("not", "images")) == ("not", "images")


class TransferRecorder(TorchDispatchMode):
    """Records ops that read a device tensor's value on the host or copy host data to the device."""

    def __init__(self) -> None:
        super().__init__()
        self.host_reads: list[str] = []
        self.uploads: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = [a for a in tree_leaves((args, kwargs)) if isinstance(a, Tensor)]
        outputs = [o for o in tree_leaves(out) if isinstance(o, Tensor)]
        if func is torch.ops.aten._local_scalar_dense.default and inputs[0].device.type != "cpu":
            self.host_reads.append(str(func))
        if any(i.device.type == "cpu" for i in inputs) and any(o.device.type != "cpu" for o in outputs):
            self.uploads.append(str(func))
        return out


def test_forward_never_syncs_with_the_device() -> None:
    """On the meta device (no values at all) any .item(), bool(tensor) or data-dependent shape would
    raise; the recorder also proves that no host tensor is copied to the device per batch."""
    every_step = G.ViewSpec(gaussian_blur=0.5, solarization_prob=0.2)
    aug = G.DeviceSSLAugment(24, MEAN, STD, view1=every_step, view2=every_step).to("meta")
    x = torch.empty(4, 3, 32, 32, dtype=torch.uint8, device="meta")
    with TransferRecorder() as recorder:
        batch = aug.augment_batch([x, torch.empty(4, dtype=torch.int64, device="meta")])
    assert recorder.host_reads == [] and recorder.uploads == []
    assert [tuple(v.shape) for v in batch[0]] == [(4, 3, 24, 24)] * 3 and batch[0][0].device.type == "meta"


# --------------------------------------------------------------- (b) distributions


def test_crop_distribution_matches_torchvision_sampler() -> None:
    n = 20_000
    torch.manual_seed(12)
    ours = G.sample_crop_boxes(n, 32, 32).double()
    img = torch.zeros(3, 32, 32)
    theirs = torch.tensor([T.RandomResizedCrop.get_params(img, [0.08, 1.0], list(G.CROP_RATIO)) for _ in range(n)])
    theirs = theirs.double()
    for boxes in (ours, theirs):
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= 32).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 1] + boxes[:, 3] <= 32).all()

    def stats(boxes: Tensor) -> dict[str, Tensor]:
        area = boxes[:, 2] * boxes[:, 3] / 1024
        log_ratio = torch.log(boxes[:, 3] / boxes[:, 2])
        centre = boxes[:, 0] + boxes[:, 2] / 2
        q = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)
        return {
            "area_mean": area.mean(),
            "area_q": torch.quantile(area, q),
            "ratio_mean": log_ratio.mean(),
            "ratio_q": torch.quantile(log_ratio, q),
            "ratio_std": log_ratio.std(),
            "centre_mean": centre.mean() / 32,
        }

    a, b = stats(ours), stats(theirs)
    # SEs at n = 20,000: area 0.002, log-ratio 0.0012, centre 0.001; mean tolerances ≈ 4 SE of the difference
    assert abs(a["area_mean"] - b["area_mean"]) < 0.012
    assert (a["area_q"] - b["area_q"]).abs().max() < 0.035  # h·w/1024 is discrete: quantiles move in steps
    assert abs(a["ratio_mean"] - b["ratio_mean"]) < 0.008
    assert (a["ratio_q"] - b["ratio_q"]).abs().max() < 0.03
    assert abs(a["ratio_std"] - b["ratio_std"]) < 0.008
    assert abs(a["centre_mean"] - b["centre_mean"]) < 0.006


def within_binomial(count: Tensor, n: int, p: float, k: float = 5.0) -> bool:
    return abs(float(count) / n - p) <= k * math.sqrt(p * (1 - p) / n) + 1e-12


@pytest.mark.parametrize("spec", [G.CIFAR_VIEW1, G.CIFAR_VIEW2, G.BYOL_VIEW1, G.BYOL_VIEW2])
def test_application_rates_and_factor_ranges(spec: G.ViewSpec) -> None:
    n = 20_000
    p = G.sample_view_params(spec, n, 32, 32, generator=torch.Generator().manual_seed(13))
    for mask, prob in (
        (p.flip, spec.hf_prob),
        (p.jitter, spec.cj_prob),
        (p.gray, spec.random_gray_scale),
        (p.blur, spec.gaussian_blur),
        (p.solarize, spec.solarization_prob),
    ):
        assert within_binomial(mask.sum(), n, prob)
    j = p.jitter
    for factor, low, high in (
        (p.brightness, 0.6, 1.4),
        (p.contrast, 0.6, 1.4),
        (p.saturation, 0.8, 1.2),
        (p.hue, -0.1, 0.1),
    ):
        drawn = factor[j]
        assert drawn.min() >= low and drawn.max() <= high
        # U[low, high]: mean (low + high) / 2, variance (high - low)² / 12
        width = high - low
        assert abs(drawn.mean() - (low + high) / 2) < 5 * width / math.sqrt(12 * drawn.numel())
        assert abs(drawn.var() - width**2 / 12) < 0.05 * width**2 / 12
    assert (p.brightness[~j] == 1).all() and (p.hue[~j] == 0).all()
    # a uniform random order: every op at every position with probability 1/4
    counts = torch.stack([(p.order == op).sum(0) for op in range(4)])
    assert all(within_binomial(c, n, 0.25) for c in counts.flatten())
    assert (p.order.sort(dim=1).values == torch.arange(4)).all()
    assert p.sigma.min() >= 0.1 and p.sigma.max() <= 2.0 and abs(p.sigma.mean() - 1.05) < 0.02


@pytest.mark.parametrize("views", ["cifar", "byol"])
def test_view_statistics_cpu_path_vs_device_path(views: str) -> None:
    """Per-channel mean/std of views 1 and 2 and the grayscale rate, over a fixed image set, CPU vs device.

    ``cifar``: ``cifar_ssl_transform`` (no blur); ``byol``: lightly's BYOL views at 32 px (blur p 1 / 0.1).
    """
    x = uint8_images(64, seed=14)
    repeats = 20  # 1,280 views per path and view
    normalize = {"mean": MEAN, "std": STD}
    if views == "cifar":
        transforms = cifar_ssl_transform(32, MEAN, STD).transforms[:2]
        aug = G.DeviceSSLAugment(32, MEAN, STD)
    else:
        transforms = [
            BYOLView1Transform(input_size=32, normalize=normalize),
            BYOLView2Transform(input_size=32, normalize=normalize),
        ]
        aug = G.DeviceSSLAugment(32, MEAN, STD, G.BYOL_VIEW1, G.BYOL_VIEW2)
    images = [to_pil(im) for im in x]
    torch.manual_seed(14)
    cpu = [torch.stack([t(im) for _ in range(repeats) for im in images]) for t in transforms]
    device: list[list[Tensor]] = [[], []]
    for _ in range(repeats):
        v1, v2, _ = aug(x)
        device[0].append(v1)
        device[1].append(v2)
    dev = [torch.cat(v) for v in device]
    std = torch.tensor(STD).view(3, 1, 1)
    mean = torch.tensor(MEAN).view(3, 1, 1)
    n = 64 * repeats
    for view in range(2):
        a, b = cpu[view], dev[view]
        # per-image means vary with the draws: SE of a channel mean ≈ 0.016 here (tolerance ≈ 3.5 SE of the
        # difference); PIL's per-step uint8 rounding (truncating blends) shifts the CPU path by ~0.01-0.02
        assert (a.mean(dim=(0, 2, 3)) - b.mean(dim=(0, 2, 3))).abs().max() < 0.08
        assert (a.std(dim=(0, 2, 3)) - b.std(dim=(0, 2, 3))).abs().max() < 0.07

        def gray_rate(v: Tensor) -> float:
            pixels = v * std + mean
            return float(((pixels - pixels.mean(1, keepdim=True)).abs().amax(dim=(1, 2, 3)) < 2e-3).float().mean())

        assert abs(gray_rate(a) - gray_rate(b)) < 5 * math.sqrt(2 * 0.2 * 0.8 / n)


# ------------------------------------------------------------------ (c) datamodule


def make(data_dir: Path, task: str = "ssl", **kwargs: Any) -> CIFAR10DataModule:
    args: dict[str, Any] = dict(batch_size=8, num_workers=0, seed=1997, input_height=32) | kwargs
    return CIFAR10DataModule(data_dir=data_dir, task=task, **IGNORED, **args)


def test_option_values(cifar10_dir: Path) -> None:
    assert make(cifar10_dir).device_augment is None  # default: the CPU path
    assert make(cifar10_dir, augment_on_device=False).augment_on_device is False
    assert make(cifar10_dir, augment_on_device="auto").augment_on_device is torch.cuda.is_available()
    assert make(cifar10_dir, "supervised", augment_on_device=True).augment_on_device is False  # ssl task type only
    with pytest.raises(ValueError, match="augment_on_device"):
        make(cifar10_dir, augment_on_device="gpu")


def test_datamodule_yields_uint8_and_the_hook_makes_the_ssl_batch(cifar10_dir: Path) -> None:
    dm = make(cifar10_dir, augment_on_device=True)
    dm.setup("fit")
    dm.setup("test")
    cpu = make(cifar10_dir)
    cpu.setup("fit")
    # the same split indices as the CPU path
    assert dm.train_ds.indices == cpu.train_ds.indices and dm.val_ds.indices == cpu.val_ds.indices  # type: ignore[union-attr]
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        x, y = next(iter(loader))
        assert x.dtype == torch.uint8 and x.shape == (8, 3, 32, 32) and y.dtype == torch.int64
        batch = dm.on_after_batch_transfer([x, y], 0)
        views, labels = batch
        assert len(views) == 3 and labels is y
        assert all(v.shape == (8, 3, 32, 32) and v.dtype == torch.float32 for v in views)
    # val is unshuffled: its finetune view equals the CPU path's, bit for bit
    (_, _, v3), y = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    (_, _, cpu_v3), cpu_y = next(iter(cpu.val_dataloader()))
    assert torch.equal(v3, cpu_v3) and torch.equal(y, cpu_y)
    # an already-augmented batch passes unchanged
    assert cpu.on_after_batch_transfer(batch, 0) is batch and dm.on_after_batch_transfer(batch, 0) is batch


class BatchRecorder(pl.Callback):
    def __init__(self) -> None:
        self.batches: list[Any] = []

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.batches.append(batch)


def test_lightning_fit_with_device_augmentation(cifar10_dir: Path, tmp_path: Path) -> None:
    pl.seed_everything(0)
    dm = make(cifar10_dir, augment_on_device=True)
    model = build_model("ssl", "barlow_twins", batch_size=8, num_classes=10)
    recorder = BatchRecorder()
    trainer = pl.Trainer(
        max_epochs=1,  # the cosine schedule needs an epoch count
        limit_train_batches=2,
        limit_val_batches=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
        callbacks=[recorder],
    )
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 2
    (x1, x2, x3), y = recorder.batches[0]
    assert y.dtype == torch.int64 and x1.dtype == torch.float32 and x1.shape == x2.shape == x3.shape == (8, 3, 32, 32)
    assert not torch.equal(x1, x2)
    # the epoch-end validation ran on device-augmented val batches too
    assert math.isfinite(float(trainer.callback_metrics["val_loss"]))
