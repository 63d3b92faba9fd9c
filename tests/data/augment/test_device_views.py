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
