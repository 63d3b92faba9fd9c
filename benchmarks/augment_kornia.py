"""The device SSL views: the project's hand-written ops vs the same views composed from kornia.

Measures one call of the two CIFAR SSL views (``DeviceSSLAugment``: crop+resize, flip, colour
jitter p 0.8, grayscale p 0.2, solarization p 0 / 0.2, normalisation) against the closest kornia
pipeline (``RandomResizedCrop`` → ``RandomHorizontalFlip`` → ``ColorJitter`` → ``RandomGrayscale``
→ ``RandomSolarize`` → ``Normalize``), on the same uint8 batch, timed interleaved. It also records
how far each path's view statistics lie from the CPU (PIL/torchvision) path of
``cifar_ssl_transform``: the per-channel mean and standard deviation of the views and the
grayscale rate, over the same image set (the quantities of
``tests/data/augment/test_device_views.py::test_view_statistics_cpu_path_vs_device_path``).

Where kornia's transforms differ from torchvision's by construction (kornia 0.9):

* ``ColorJitter`` draws ONE op order per call (``ColorJitterGenerator``: ``torch.randperm(4)``) and
  applies it to the whole batch; torchvision draws the order per image. The marginal distribution of
  one view is the same, but all views of a batch share their order.
* ``RandomResizedCrop`` resamples the crop without antialiasing (a bilinear warp), where torchvision
  resizes PIL images with an antialiased triangle filter (the same as the project's ``resized_crop``);
  for 32 px crops resized to 32 px (always an upscale) the two differ only in edge handling.
* ``RandomSolarize`` draws a threshold per image around 0.5 and adds a random brightness; with both
  ranges 0 it is the fixed 0.5 threshold of PIL's ``solarize(128)``.

kornia is not a dependency of the project; the benchmark needs ``pip install kornia``.

Usage (repository root)::

    python -m benchmarks.augment_kornia --device cpu --size small --threads 1
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks._timing import (
    add_common_args,
    apply_threads,
    default_output,
    environment,
    markdown_table,
    ratio,
    resolve_device,
    summarize,
    time_interleaved,
    write_result,
)
from src.data.augment.device_views import CIFAR_VIEW1, CIFAR_VIEW2, DeviceSSLAugment, ViewSpec
from src.data.augment.transforms import cifar_ssl_transform

NAME = "augment_kornia"
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)

#: batch size, image side, warm-up calls, timed rounds, images (× repeats) for the statistics
SIZE_PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"batch": 16, "side": 32, "warmup": 1, "repeats": 2, "stat_images": 16, "stat_repeats": 2},
    "small": {"batch": 256, "side": 32, "warmup": 3, "repeats": 15, "stat_images": 64, "stat_repeats": 20},
    "full": {"batch": 1024, "side": 32, "warmup": 5, "repeats": 30, "stat_images": 256, "stat_repeats": 20},
}


def import_kornia() -> Any:
    try:
        import kornia.augmentation as K
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise SystemExit(
            "benchmarks.augment_kornia needs kornia, which is not a dependency of the project: pip install kornia"
        ) from err
    return K


def kornia_view(K: Any, spec: ViewSpec, size: int) -> nn.Module:
    """The kornia transforms closest to one ``ViewSpec`` (input float [B, 3, H, W] in [0, 1])."""
    steps: list[nn.Module] = [
        K.RandomResizedCrop((size, size), scale=(spec.min_scale, spec.max_scale), align_corners=False),
        K.RandomHorizontalFlip(p=spec.hf_prob),
        K.ColorJitter(
            spec.cj_strength * spec.cj_bright,
            spec.cj_strength * spec.cj_contrast,
            spec.cj_strength * spec.cj_sat,
            spec.cj_strength * spec.cj_hue,
            p=spec.cj_prob,
        ),
        K.RandomGrayscale(p=spec.random_gray_scale),
    ]
    if spec.solarization_prob > 0:
        steps.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=spec.solarization_prob))
    steps.append(K.Normalize(mean=torch.tensor(MEAN), std=torch.tensor(STD)))
    return nn.Sequential(*steps)


class KorniaSSLAugment(nn.Module):
    """``DeviceSSLAugment``'s contract (uint8 [B, 3, H, W] → v1, v2, v3) with kornia's transforms for v1, v2."""

    def __init__(self, K: Any, size: int, views: Sequence[ViewSpec] = (CIFAR_VIEW1, CIFAR_VIEW2)) -> None:
        super().__init__()
        self.size = size
        self.views = nn.ModuleList(kornia_view(K, spec, size) for spec in views)
        self.finetune = K.Normalize(mean=torch.tensor(MEAN), std=torch.tensor(STD))

    @torch.no_grad()
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        images = x.to(torch.float32).div(255)
        v1, v2 = (view(images) for view in self.views)
        return v1, v2, self.finetune(images)


def image_batch(n: int, side: int, seed: int) -> Tensor:
    """Image-like uint8 [n, 3, side, side]: colour gradients, a texture and noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, side), torch.linspace(0, 1, side), indexing="ij")
    c = torch.rand(n, 3, 4, generator=g)[..., None, None]
    img = c[:, :, 0] + c[:, :, 1] * xx + c[:, :, 2] * yy + 0.3 * torch.sin(6.28 * (3 * c[:, :, 3] + 1) * xx * yy)
    img = img + 0.1 * torch.randn(n, 3, side, side, generator=g)
    lo = img.amin(dim=(1, 2, 3), keepdim=True)
    hi = img.amax(dim=(1, 2, 3), keepdim=True)
    return ((img - lo) / (hi - lo) * 255).round().to(torch.uint8)


def view_statistics(views: Tensor) -> dict[str, Any]:
    """Per-channel mean and std of normalised views [N, 3, S, S] and their grayscale rate."""
    pixels = views * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
    gray = (pixels - pixels.mean(1, keepdim=True)).abs().amax(dim=(1, 2, 3)) < 2e-3
    return {
        "channel_mean": views.mean(dim=(0, 2, 3)).tolist(),
        "channel_std": views.std(dim=(0, 2, 3)).tolist(),
        "gray_rate": float(gray.float().mean()),
    }


def distance(stats: dict[str, Any], cpu: dict[str, Any]) -> dict[str, float]:
    """Largest per-channel |Δ mean| and |Δ std| and |Δ gray rate| against the CPU path."""
    return {
        "max_abs_mean_diff": max(abs(a - b) for a, b in zip(stats["channel_mean"], cpu["channel_mean"], strict=True)),
        "max_abs_std_diff": max(abs(a - b) for a, b in zip(stats["channel_std"], cpu["channel_std"], strict=True)),
        "abs_gray_rate_diff": abs(stats["gray_rate"] - cpu["gray_rate"]),
    }


def compare_statistics(
    paths: dict[str, Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]], n_images: int, repeats: int, seed: int
) -> dict[str, Any]:
    """Views 1 and 2 of every path and of the CPU path on ``n_images`` images × ``repeats`` draws (on the CPU)."""
    x = image_batch(n_images, 32, seed)
    pil = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in x]
    torch.manual_seed(seed)
    transforms = cifar_ssl_transform(32, MEAN, STD).transforms[:2]
    cpu = [view_statistics(torch.stack([t(im) for _ in range(repeats) for im in pil])) for t in transforms]
    out: dict[str, Any] = {"cpu_pil": {f"view{i + 1}": cpu[i] for i in range(2)}, "n_views": n_images * repeats}
    for name, fn in paths.items():
        draws = [fn(x) for _ in range(repeats)]
        out[name] = {}
        for i in range(2):
            stats = view_statistics(torch.cat([d[i] for d in draws]))
            out[name][f"view{i + 1}"] = {**stats, "vs_cpu": distance(stats, cpu[i])}
    return out


class OpCounter(TorchDispatchMode):
    """Counts dispatched aten ops and host reads of tensor values (``.item()``, ``bool(t)``, ``.tolist()``:
    ``aten._local_scalar_dense``). On an accelerator every host read waits for the device's queue, and
    every op is at least one kernel launch, so both counts bound what a GPU call costs beyond its arithmetic."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.host_reads = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops += 1
        if func is torch.ops.aten._local_scalar_dense.default:
            self.host_reads += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn: Callable[[], Any]) -> dict[str, int]:
    with OpCounter() as counter:
        fn()
    return {"aten_ops": counter.ops, "host_reads": counter.host_reads}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    device = resolve_device(args.device)
    K = import_kornia()
    import kornia

    preset = SIZE_PRESETS[args.size]
    torch.manual_seed(args.seed)
    project = DeviceSSLAugment(32, MEAN, STD).to(device)
    korn = KorniaSSLAugment(K, 32).to(device)
    x = image_batch(preset["batch"], preset["side"], args.seed).to(device)
    times = time_interleaved(
        {"project": lambda: project(x), "kornia": lambda: korn(x)}, device, preset["warmup"], preset["repeats"]
    )
    summary = {name: summarize(t) for name, t in times.items()}
    batch = preset["batch"]
    for s in summary.values():
        s["images_per_s"] = batch / s["median_s"] if s["median_s"] else math.inf
    summary["project"].update(count_ops(lambda: project(x)))
    summary["kornia"].update(count_ops(lambda: korn(x)))
    stats = compare_statistics(
        {"project": DeviceSSLAugment(32, MEAN, STD), "kornia": KorniaSSLAugment(K, 32)},
        preset["stat_images"],
        preset["stat_repeats"],
        args.seed,
    )
    result = {
        "benchmark": NAME,
        "size": args.size,
        "sizes": preset,
        "kornia_version": kornia.__version__,
        "environment": environment(device),
        "timing": summary,
        "kornia_over_project": ratio(summary["kornia"]["median_s"], summary["project"]["median_s"]),
        "statistics": stats,
    }
    output = args.output or default_output(NAME, device)
    write_result(Path(output), result)
    rows = [
        [name, f"{s['median_s'] * 1e3:.2f}", f"{s['images_per_s']:.0f}", s["aten_ops"], s["host_reads"]]
        + [f"{stats[name][v]['vs_cpu']['max_abs_mean_diff']:.3f}" for v in ("view1", "view2")]
        for name, s in summary.items()
    ]
    print(
        markdown_table(
            ["path", "ms / call", "images/s", "aten ops", "host reads", "|Δmean| v1 vs CPU", "|Δmean| v2 vs CPU"], rows
        )
    )
    print(f"kornia / project time: {result['kornia_over_project']:.2f}  → {output}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
