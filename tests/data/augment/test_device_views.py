"""The device SSL views (src/data/augment/device_views.py) against torchvision / PIL and the CPU path.

(a) ``DeviceSSLAugment``'s output layout, its finetune view against the CPU path, and that a call
never syncs with the device; (b) the parameter distributions over many draws against
torchvision's samplers and the probabilities of ``cifar_ssl_transform``, and view statistics CPU
path vs device path. Everything runs on the CPU.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torchvision import transforms as T

from src.data.augment import device_views as G
from src.data.augment.transforms import (
    CIFAR10_NORMALIZE,
    BYOLView1Transform,
    BYOLView2Transform,
    FinetuneViewTransform,
    cifar_ssl_transform,
)
from tests.data.augment.conftest import to_pil, uint8_images

MEAN, STD = CIFAR10_NORMALIZE["mean"], CIFAR10_NORMALIZE["std"]


# --------------------------------------------------------------- (a) the module


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


# --------------------------------------------------------------- (c) Fashion-MNIST: grey images, its own views


def grey_images(n: int, size: int = 28, seed: int = 0) -> Tensor:
    """Grey uint8 [n, 1, size, size]: the luma of the colour test images (garment-like smooth shapes)."""
    x = uint8_images(n, size, seed).float()
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).round().to(torch.uint8).unsqueeze(1)


def grey_pil(x: Tensor) -> Any:
    from PIL import Image

    return Image.fromarray(x[0].numpy(), mode="L")


FM_MEAN, FM_STD = (0.2860,) * 3, (0.3530,) * 3


def test_fashion_mnist_views_are_the_cpu_transforms_parameters() -> None:
    from src.data.augment.transforms import fashion_mnist_ssl_transform

    v1, v2 = G.fashion_mnist_views(0.2)
    cpu = fashion_mnist_ssl_transform(28, FM_MEAN, FM_STD, 0.2).transforms
    for spec, transform in ((v1, cpu[0]), (v2, cpu[1])):
        steps = {type(t).__name__: t for t in transform.transforms}
        crop, jitter = steps["RandomResizedCrop"], steps["RandomApply"]
        assert (spec.min_scale, spec.max_scale) == tuple(crop.scale) and spec.hf_prob == steps["RandomHorizontalFlip"].p
        assert spec.cj_prob == jitter.p
        cj = jitter.transforms[0]
        assert list(cj.brightness) == [1 - spec.cj_bright, 1 + spec.cj_bright]
        assert list(cj.contrast) == [1 - spec.cj_contrast, 1 + spec.cj_contrast]
        assert cj.saturation is None and cj.hue is None and spec.cj_sat == 0 and spec.cj_hue == 0
        assert "RandomGrayscale" not in steps and spec.random_gray_scale == 0 and spec.gaussian_blur == 0
        solar = steps.get("RandomSolarization")
        assert spec.solarization_prob == (solar.prob if solar is not None else 0.0)
    assert (v1.solarization_prob, v2.solarization_prob) == (0.0, 0.2)
    assert G.fashion_mnist_views(0.5)[0].min_scale == 0.5


def test_fashion_mnist_finetune_view_is_bit_identical_from_grey_batches() -> None:
    from src.data.augment.transforms import FinetuneViewTransform, ToRGB

    x = grey_images(6, seed=3)
    v1, v2, v3 = G.DeviceSSLAugment(28, FM_MEAN, FM_STD, *G.fashion_mnist_views())(x)
    finetune = FinetuneViewTransform(28, {"mean": FM_MEAN, "std": FM_STD})
    cpu = torch.stack([finetune(ToRGB()(grey_pil(im))) for im in x])
    assert torch.equal(v3, cpu)
    for v in (v1, v2, v3):  # grey in, grey out: three equal channels, as the CPU path's
        assert v.shape == (6, 3, 28, 28) and torch.equal(v[:, 0], v[:, 1]) and torch.equal(v[:, 1], v[:, 2])


def test_jitter_without_hue_skips_only_the_identity_hue_step() -> None:
    """A hue strength of 0 leaves the HSV round trip out; on grey images that step was an exact identity."""
    x = grey_images(16, seed=4).expand(-1, 3, -1, -1).float() / 255
    spec = G.fashion_mnist_views()[0]
    p = G.sample_view_params(spec, 16, 28, 28, generator=torch.Generator().manual_seed(5))
    from src.data.augment.tensor_ops import color_jitter

    with_hue = color_jitter(x, p.brightness, p.contrast, p.saturation, p.hue, p.order, p.jitter)
    without = color_jitter(x, p.brightness, p.contrast, p.saturation, None, p.order, p.jitter)
    assert (p.hue == 0).all() and torch.equal(with_hue, without)
    assert not torch.equal(without, x)  # the brightness and contrast blends did apply


def test_fashion_mnist_crop_distribution_matches_torchvision_sampler() -> None:
    n = 20_000
    torch.manual_seed(21)
    ours = G.sample_crop_boxes(n, 28, 28, (0.2, 1.0)).double()
    img = torch.zeros(1, 28, 28)
    theirs = torch.tensor([T.RandomResizedCrop.get_params(img, [0.2, 1.0], list(G.CROP_RATIO)) for _ in range(n)])
    theirs = theirs.double()
    q = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)
    area = [b[:, 2] * b[:, 3] / 784 for b in (ours, theirs)]
    assert area[0].min() >= 0.15 and area[1].min() >= 0.15  # rounding of h and w around the 0.2 bound
    assert abs(area[0].mean() - area[1].mean()) < 0.01  # SE of the difference ≈ 0.0023
    assert (torch.quantile(area[0], q) - torch.quantile(area[1], q)).abs().max() < 0.03
    log_ratio = [torch.log(b[:, 3] / b[:, 2]) for b in (ours, theirs)]
    assert abs(log_ratio[0].mean() - log_ratio[1].mean()) < 0.008
    assert abs(log_ratio[0].std() - log_ratio[1].std()) < 0.008


@pytest.mark.parametrize("spec_index", [0, 1])
def test_fashion_mnist_application_rates(spec_index: int) -> None:
    spec = G.fashion_mnist_views()[spec_index]
    n = 20_000
    p = G.sample_view_params(spec, n, 28, 28, generator=torch.Generator().manual_seed(22))
    assert within_binomial(p.flip.sum(), n, 0.5) and within_binomial(p.jitter.sum(), n, 0.8)
    assert within_binomial(p.solarize.sum(), n, (0.0, 0.2)[spec_index])
    assert not p.gray.any() and not p.blur.any()
    j = p.jitter
    for factor in (p.brightness, p.contrast):
        drawn = factor[j]
        assert drawn.min() >= 0.6 and drawn.max() <= 1.4 and abs(drawn.mean() - 1.0) < 0.01
    assert (p.saturation == 1).all() and (p.hue == 0).all()


def test_fashion_mnist_view_statistics_cpu_path_vs_device_path() -> None:
    """Mean/std of views 1 and 2 over a fixed set of grey images, ``fashion_mnist_ssl_transform`` vs the device."""
    from src.data.augment.transforms import fashion_mnist_ssl_transform

    x = grey_images(64, seed=23)
    repeats = 20  # 1,280 views per path and view
    transforms = fashion_mnist_ssl_transform(28, FM_MEAN, FM_STD, 0.2).transforms[:2]
    aug = G.DeviceSSLAugment(28, FM_MEAN, FM_STD, *G.fashion_mnist_views(0.2))
    images = [grey_pil(im) for im in x]
    torch.manual_seed(23)
    cpu = [torch.stack([t(im) for _ in range(repeats) for im in images]) for t in transforms]
    dev: list[list[Tensor]] = [[], []]
    for _ in range(repeats):
        v1, v2, _ = aug(x)
        dev[0].append(v1)
        dev[1].append(v2)
    for view in range(2):
        a, b = cpu[view], torch.cat(dev[view])
        assert torch.equal(a[:, 0], a[:, 1]) and torch.equal(b[:, 0], b[:, 2])
        # the same tolerances as the CIFAR comparison (SE of a channel mean ≈ 0.016 in normalised units)
        assert abs(float(a.mean() - b.mean())) < 0.08
        assert abs(float(a.std() - b.std())) < 0.07
        # pixel quantiles (every 7th pixel): the crop scale and the solarization of view 2 move them
        qs = torch.tensor([0.1, 0.5, 0.9])
        assert (torch.quantile(a[:, 0].flatten()[::7], qs) - torch.quantile(b[:, 0].flatten()[::7], qs)).abs().max() < 0.08


# --------------------------------------------------------------- (d) torch.compile of the ops (opt-in)


@pytest.mark.slow
@pytest.mark.skipif(
    __import__("shutil").which("cc") is None and __import__("shutil").which("gcc") is None,
    reason="torch.compile's CPU backend needs a C compiler",
)
def test_compiled_ops_equal_eager_given_the_same_draws() -> None:
    """``compiled=True`` compiles only the ops: with the same seed the draws, and so the views, are the eager ones."""
    x = uint8_images(4, size=16, seed=31)
    eager = G.DeviceSSLAugment(16, MEAN, STD)
    compiled = G.DeviceSSLAugment(16, MEAN, STD, compiled=True)
    assert compiled.compiled and "compiled=True" in repr(compiled)
    for seed in (0, 1):
        torch.manual_seed(seed)
        want = eager(x)
        torch.manual_seed(seed)
        got = compiled(x)
        for a, b in zip(want, got, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
