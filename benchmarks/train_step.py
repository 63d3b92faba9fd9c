"""Train-step throughput of every model × loss combination: the project's step vs the reference's way.

One optimizer step = forward ``shared_step(batch)["loss"]``, backward, gradient clipping at 0.5
(global norm), AdamW step, under fp16 autocast + GradScaler on CUDA (fp32, or bf16 autocast with
``--precision bf16``, on CPU). The batch is random data already on the device, so the numbers
are the model's alone: the micro-benchmark of the step's maths (no data loading, probe, guard, logging or
Lightning loop; ``pipeline_throughput.py`` measures those).

Two paths per combination, on the same weights:

* ``project``: the real Lightning module's ``shared_step`` (Bayes-H projects all 2M MC slices in
  one call with per-slice BatchNorm statistics; the MC losses are one batched computation);
* ``reference``: the way the paper's release computed it, from the tests' plain reference
  implementations (``tests.reference.ssl_step.reference_step``, the one copy shared with the
  tests): the same encoder and weights, the clamp formula of the Gaussian head, the projector mapped
  over the MC samples one at a time (``torch.stack([projector(h[m]) for m in range(M)])``), the MC
  loss as a Python loop over the M sample pairs and the KL-style term as a loop over the samples
  (losses and KL in fp32 with autocast off, as the project computes them: T-Q30).

The module's constructor arguments are ``train.kwargs`` of the pipeline's config (read without Hydra) (CIFAR-10
stem, ResNet-18, the standard prior), shrunk to the chosen size. Before timing, both paths run one
batch with the same MC noise (the RNG seeded identically before each, so both draw the same ε) in
fp32; the loss terms, the parameter gradients and the projector's BatchNorm running statistics are
compared and the differences recorded.

Usage (repository root)::

    python -m benchmarks.train_step --device cuda --size full
    python -m benchmarks.train_step --device cpu --size small --cases ssl_bayes_h+mc_vicreg
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from benchmarks import plain_config
from benchmarks._timing import (
    PeakMemory,
    add_common_args,
    apply_threads,
    default_output,
    environment,
    markdown_table,
    mib,
    ratio,
    resolve_device,
    summarize,
    time_interleaved,
    write_result,
)
from src.model.loss import LOSSES
from src.task import SSL_MODELS
from src.task.ssl import BaseSelfSupervisedLearning, Batch
from tests.reference.ssl_step import reference_step

NAME = "train_step"

#: (model name, loss): every registered model with every registered loss it accepts (the paper's six)
COMBINATIONS: tuple[tuple[str, str], ...] = tuple(
    (model, loss)
    for model, cls in SSL_MODELS.items()
    for loss, loss_cls in LOSSES.items()
    if cls.accepts_loss(loss_cls)
)
PATHS: tuple[str, ...] = ("project", "reference")

#: equivalence tolerance of the fp32 check (relative to the magnitude of the compared values)
RTOL: float = 1e-4


@dataclass(frozen=True)
class TrainSize:
    """One size preset: model/batch shapes and how much to time."""

    batch_size: int
    image_size: int
    hidden_dim: int
    z_dim: int
    mc_samples: int
    warmup: int  # untimed steps per path
    repeats: int  # timed rounds per path (median reported)
    steps: int  # optimizer steps per timed round


SIZES: dict[str, TrainSize] = {
    "tiny": TrainSize(batch_size=8, image_size=8, hidden_dim=32, z_dim=32, mc_samples=3, warmup=0, repeats=1, steps=1),
    # small: 8×8 images keep the ResNet cheap on a CPU, so the MC machinery weighs more than at full size
    "small": TrainSize(
        batch_size=32, image_size=8, hidden_dim=512, z_dim=512, mc_samples=12, warmup=1, repeats=3, steps=1
    ),
    "full": TrainSize(
        batch_size=256, image_size=32, hidden_dim=1024, z_dim=1024, mc_samples=12, warmup=3, repeats=5, steps=5
    ),
}


# ----------------------------------------------------------------------------- model and data


def case_name(model_name: str, loss: str) -> str:
    """``model+loss``, e.g. ``ssl_bayes_h+mc_vicreg``."""
    return f"{model_name}+{loss}"


def module_kwargs(model_name: str, loss: str, size: TrainSize) -> dict[str, Any]:
    """Plain constructor arguments of the Lightning module: ``train.kwargs`` of the pipeline's config
    (CIFAR-10 stem, ResNet-18, AdamW, the standard prior), shrunk to ``size``; no scheduler. Composed
    from the YAML files without Hydra (:mod:`benchmarks.plain_config`)."""
    overrides: dict[str, Any] = {
        "dataset.batch_size": size.batch_size,
        "model.backbone.hidden_dim": size.hidden_dim,
        "model.backbone.z_dim": size.z_dim,
        "train.scheduler": None,
    }
    if model_name != "ssl":
        overrides["train.mc_samples"] = size.mc_samples
    return plain_config.module_kwargs(model_name, loss, overrides)


def build_module(model_name: str, loss: str, size: TrainSize, device: torch.device) -> BaseSelfSupervisedLearning:
    """The project's Lightning module (``SSL_MODELS[model_name]``) in train mode on ``device``."""
    module = SSL_MODELS[model_name](**module_kwargs(model_name, loss, size))
    assert isinstance(module, BaseSelfSupervisedLearning)
    return module.to(device).train()


def random_batch(size: TrainSize, device: torch.device, seed: int) -> Batch:
    """``((x1, x2, x3), y)`` of standard-normal images [B, 3, S, S] on ``device``."""
    g = torch.Generator().manual_seed(seed)
    shape = (size.batch_size, 3, size.image_size, size.image_size)
    views = tuple(torch.randn(shape, generator=g).to(device) for _ in range(3))
    y = torch.randint(0, 10, (size.batch_size,), generator=g).to(device)
    return (views[0], views[1], views[2]), y


def forward_fn(module: BaseSelfSupervisedLearning, path: str) -> Callable[[Batch], dict[str, Any]]:
    """The step's forward for ``path`` (``project`` or ``reference``)."""
    if path == "project":
        return module.shared_step
    return lambda batch: reference_step(module, batch)


# -------------------------------------------------------------------------------- equivalence


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """fp32 matmuls without TF32 (``highest``) inside the block; restores the previous setting."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _max_abs(tensors: Sequence[Tensor]) -> float:
    return max((float(t.detach().abs().max()) for t in tensors if t.numel()), default=0.0)


def check_equivalence(model_name: str, loss: str, size: TrainSize, device: torch.device, seed: int) -> dict[str, Any]:
    """Both paths on one batch with the same weights and MC noise, in fp32: differences of the
    loss terms, the parameter gradients and the projector's BatchNorm running statistics."""
    torch.manual_seed(seed)  # reproducible weights
    project = build_module(model_name, loss, size, device)
    reference = copy.deepcopy(project)
    batch = random_batch(size, device, seed + 1)
    outs = {}
    with exact_fp32():
        for path, module in (("project", project), ("reference", reference)):
            torch.manual_seed(seed)  # the same ε for both paths (CPU and CUDA generators)
            out = forward_fn(module, path)(batch)
            out["loss"].backward()
            outs[path] = out
    keys = sorted(k for k, v in outs["reference"].items() if k.endswith("loss") and isinstance(v, Tensor))
    missing = [k for k in keys if k not in outs["project"]]
    loss_diffs = {
        k: float((outs["project"][k] - outs["reference"][k]).detach().abs()) for k in keys if k not in missing
    }
    loss_scale = _max_abs([outs["reference"][k] for k in keys])
    grads_p = [p.grad for p in project.parameters() if p.grad is not None]
    grads_r = [p.grad for p in reference.parameters() if p.grad is not None]
    grad_diff = _max_abs([a - b for a, b in zip(grads_p, grads_r)]) if len(grads_p) == len(grads_r) else float("inf")
    grad_scale = _max_abs(grads_r)
    stats_p = [b for n, b in project.projection_head.named_buffers() if "running" in n]
    stats_r = [b for n, b in reference.projection_head.named_buffers() if "running" in n]
    stats_diff = _max_abs([a - b for a, b in zip(stats_p, stats_r)])
    max_abs_diff = max(loss_diffs.values(), default=0.0)
    ok = (
        not missing
        and max_abs_diff <= RTOL * max(loss_scale, 1.0)
        and grad_diff <= RTOL * max(grad_scale, 1e-12)
        and stats_diff <= RTOL * max(_max_abs(stats_r), 1.0)
    )
    return {
        "precision": "fp32 (autocast off, matmul precision 'highest')",
        "max_abs_diff": max_abs_diff,
        "max_rel_diff": max_abs_diff / loss_scale if loss_scale else 0.0,
        "loss_abs_diff": loss_diffs,
        "loss_value": float(outs["reference"]["loss"].detach()),
        "missing_terms": missing,
        "grad_max_abs_diff": grad_diff,
        "grad_max_rel_diff": grad_diff / grad_scale if grad_scale else 0.0,
        "bn_running_stats_max_abs_diff": stats_diff,
        "rtol": RTOL,
        "ok": bool(ok),
    }


# -------------------------------------------------------------------------------------- timing


def resolve_precision(choice: str, device: torch.device) -> str:
    """``auto`` → fp16 (autocast + GradScaler) on CUDA, fp32 on CPU."""
    if choice == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if choice == "fp16" and device.type != "cuda":
        raise SystemExit("--precision fp16 needs CUDA (the project runs 16-mixed only on a GPU)")
    return choice


def make_step(
    module: BaseSelfSupervisedLearning, path: str, batch: Batch, precision: str, device: torch.device
) -> Callable[[], None]:
    """One optimizer step of ``path`` on a fixed batch: forward, backward, clip 0.5, AdamW."""
    params = list(module.optimizer_parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    forward = forward_fn(module, path)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = forward(batch)["loss"]
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 0.5)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure_case(
    model_name: str, loss: str, size: TrainSize, device: torch.device, precision: str, seed: int
) -> dict[str, Any]:
    """Samples/s and peak memory of both paths (interleaved rounds), plus the equivalence check."""
    equivalence = check_equivalence(model_name, loss, size, device, seed)
    torch.manual_seed(seed)
    project = build_module(model_name, loss, size, device)
    modules = {"project": project, "reference": copy.deepcopy(project)}
    batch = random_batch(size, device, seed + 2)
    steps = {path: make_step(modules[path], path, batch, precision, device) for path in PATHS}

    def repeat(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(size.steps):
                fn()

        return run

    times = time_interleaved({p: repeat(s) for p, s in steps.items()}, device, size.warmup, size.repeats)
    result: dict[str, Any] = {"case": case_name(model_name, loss), "model": model_name, "loss": loss}
    result["mc_samples"] = size.mc_samples if model_name != "ssl" else None
    for path in PATHS:
        per_step = [t / size.steps for t in times[path]]
        with PeakMemory(device) as mem:
            steps[path]()
        summary = summarize(per_step)
        result[path] = {
            "samples_per_s": size.batch_size / summary["median_s"],
            "step_time": summary,
            "memory": mem.result,
        }
    result["ratio"] = ratio(result["project"]["samples_per_s"], result["reference"]["samples_per_s"])
    result["equivalence"] = equivalence
    return result


def add_deterministic_ratios(cases: list[dict[str, Any]]) -> None:
    """``ratio_vs_deterministic`` (per path): samples/s over that of ``ssl`` with the same base loss."""
    base = {c["loss"]: c for c in cases if c["model"] == "ssl"}
    for case in cases:
        det = base.get(case["loss"].removeprefix("mc_"))
        for path in PATHS:
            case[path]["ratio_vs_deterministic"] = (
                ratio(case[path]["samples_per_s"], det[path]["samples_per_s"]) if det is not None else None
            )
        case["ratio_vs_deterministic"] = case["project"]["ratio_vs_deterministic"]


def table(result: dict[str, Any]) -> str:
    """The readable summary of a result dict."""
    rows = []
    for c in result["cases"]:
        eq = c["equivalence"]
        rows.append(
            [
                c["case"],
                c["project"]["samples_per_s"],
                c["reference"]["samples_per_s"],
                c["ratio"],
                c["ratio_vs_deterministic"],
                mib(c["project"]["memory"].get("delta_bytes")),
                mib(c["reference"]["memory"].get("delta_bytes")),
                eq["max_abs_diff"],
                "ok" if eq["ok"] else "MISMATCH",
            ]
        )
    headers = [
        "case",
        "project samples/s",
        "reference samples/s",
        "ratio proj/ref",
        "proj vs ssl",
        "proj mem MiB",
        "ref mem MiB",
        "max_abs_diff",
        "equiv",
    ]
    return markdown_table(headers, rows)


# ------------------------------------------------------------------------------------------ CLI


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line arguments (see the module docstring)."""
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument(
        "--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto", help="auto: fp16 on CUDA, fp32 on CPU"
    )
    parser.add_argument(
        "--cases",
        nargs="+",
        default=None,
        choices=[case_name(m, lo) for m, lo in COMBINATIONS],
        help="only these model+loss cases (default: all)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, write the JSON; returns the result dict."""
    args = parse_args(argv)
    apply_threads(args.threads)
    device = resolve_device(args.device)
    size = SIZES[args.size]
    precision = resolve_precision(args.precision, device)
    wanted = set(args.cases) if args.cases else None
    cases = []
    for model_name, loss in COMBINATIONS:
        if wanted is not None and case_name(model_name, loss) not in wanted:
            continue
        print(f"[train_step] {case_name(model_name, loss)} ...", file=sys.stderr, flush=True)
        cases.append(measure_case(model_name, loss, size, device, precision, args.seed))
    add_deterministic_ratios(cases)
    result: dict[str, Any] = {
        "benchmark": NAME,
        "environment": environment(device),
        "size": args.size,
        "sizes": asdict(size),
        "precision": precision,
        "timing": {
            "unit": "samples/s = batch_size / median seconds per optimizer step (each sample has two views)",
            "warmup_steps": size.warmup * size.steps,
            "repeats": size.repeats,
            "steps_per_repeat": size.steps,
            "order": "project and reference interleaved per repeat",
        },
        "paths": {
            "project": "module.shared_step (batched MC projection and MC loss)",
            "reference": "projector per MC slice + Python loop over the M loss pairs (paper release)",
        },
        "ratio": "project samples/s / reference samples/s (> 1: the project is faster)",
        "ratio_vs_deterministic": "samples/s / samples/s of ssl with the same base loss, same path",
        "cases": cases,
        "all_equivalent": all(c["equivalence"]["ok"] for c in cases),
    }
    output = args.output or default_output(NAME, device)
    write_result(output, result)
    print(f"\n## train_step ({args.size}, {device.type}: {result['environment']['device_name']}, {precision})\n")
    print(table(result))
    print(f"\nwritten to {output}")
    return result


if __name__ == "__main__":
    main()
