"""Pretraining throughput through the pipeline's own Trainer: data, step, probe, guard, logger, checkpoints.

Every run is what ``run_pipeline.py`` builds for CIFAR-10, shortened to a fixed number of steps: the
config composed from ``src/experiments/conf`` without Hydra (:mod:`benchmarks.plain_config`), the
project's ``CIFAR10DataModule`` on a synthetic dataset in torchvision's CIFAR-10 on-disk format, the
Lightning module of ``SSL_MODELS``, and ``build_trainer`` with the pretraining callbacks (online probe,
checkpoint to a temporary folder, early stopping, learning-rate monitor), the reliability callbacks
(non-finite-loss guard, resume state, ``last.ckpt``), the CSV logger and the progress display in line mode.
Cases: det / Bayes-H / Bayes-Z × Barlow Twins / VICReg, each on both data paths (``pil``: PIL/torchvision
augmentations in DataLoader workers; ``device``: ``dataset.augment_on_device=true``), plus one
*reference-style* run per model and loss: the same Trainer with every switch of :data:`REFERENCE_STYLE`
(the reference's per-MC-sample step of ``tests/reference/ssl_step.py``, its probe and data path).

One run = ``warmup_steps`` untimed steps, ``e2e_steps`` timed end to end (CUDA synchronised only at the
two ends of the window), one validation of ``val_batches`` batches, ``sync_steps`` steps under the torch
profiler (CUDA only: host synchronisations per step), then ``step_steps`` steps timed one by one from
``on_train_batch_start`` (before every other callback) to ``on_train_batch_end`` (after every other
callback), synchronised at both boundaries. Reported per run: end-to-end samples/s (data loading, host→device
copy, device augmentation, step, probe, guard, logging, scheduler), per-step samples/s (the training
step with the probe, guard and progress callbacks; not the data), validation samples/s, the first step's
loss terms, peak memory, syncs per step; ratios to the deterministic model (same loss, data path, style)
and to the reference-style run (same model and loss). A ``projections`` block prices the paper's
CIFAR-10 ablation grid and OOD study from these numbers (:mod:`benchmarks.projections`).

Usage (repository root)::

    python -m benchmarks.pipeline_throughput --device cuda --size full --output $OUT/pipeline.json
    python -m benchmarks.pipeline_throughput --device cpu --size small --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import logging
import os
import pickle
import resource
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytorch_lightning as pl
import torch

from benchmarks import plain_config, projections
from benchmarks._timing import (
    add_common_args,
    apply_threads,
    default_output,
    environment,
    markdown_table,
    mib,
    ratio,
    resolve_device,
    synchronize,
    write_result,
)
from src.data.datamodule import datamodule_from_config
from src.model.loss import LOSSES
from src.task import SSL_MODELS
from src.task.ssl import BaseSelfSupervisedLearning

NAME = "pipeline"

#: (model, loss): every registered model with every loss it accepts (the paper's six)
COMBINATIONS: tuple[tuple[str, str], ...] = tuple(
    (model, loss)
    for model, cls in SSL_MODELS.items()
    for loss, loss_cls in LOSSES.items()
    if cls.accepts_loss(loss_cls)
)
#: data path -> config overrides (dotted keys of the composed pipeline config)
DATA_PATHS: dict[str, dict[str, Any]] = {
    "pil": {"dataset.augment_on_device": False},
    "device": {"dataset.augment_on_device": True},
}
#: Every override of the reference-style run, in one place (dotted keys of the composed config, as
#: ``run_pipeline.py`` takes them), beside its step (:func:`reference_style_step`: the per-MC-sample loop
#: of ``tests/reference/ssl_step.py``).
REFERENCE_STYLE: dict[str, Any] = {
    "dataset.augment_on_device": False,  # PIL/torchvision augmentations in DataLoader workers
    "train.channels_last": False,  # NCHW encoder and inputs
    "train.trainer.benchmark": False,  # cuDNN's default algorithm choice
    "train.callbacks.online_finetuner.autocast": False,  # the probe's forward in fp32 outside autocast
    "train.callbacks.online_finetuner.single_pass": False,  # Bayes-H: the probe's two encoder passes
}
STYLES: tuple[str, ...] = ("project", "reference")
#: relative tolerance of the first-step loss check (project vs reference-style step, same batch and noise)
RTOL: dict[str, float] = {"32-true": 1e-4, "mixed": 2e-2}
#: CUDA runtime calls that block the host until the device is done (counted as synchronisations)
SYNC_EVENTS: tuple[str, ...] = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")


@dataclass(frozen=True)
class PipelineSize:
    """One size preset."""

    n_train: int  # images in data_batch_1..5 (80 % train, 20 % validation: the config's val_split)
    n_test: int
    batch_size: int
    input_height: int
    hidden_dim: int
    z_dim: int
    mc_samples: int
    workers: int  # DataLoader workers (the config's num_workers at full size)
    warmup_steps: int
    e2e_steps: int
    sync_steps: int  # steps under the profiler (CUDA only)
    step_steps: int  # steps timed one by one
    val_batches: int
    loader_batches: int  # loader-alone timing with N workers (a quarter with 0 workers)

    @property
    def total_steps(self) -> int:
        return self.warmup_steps + self.e2e_steps + self.sync_steps + self.step_steps


SIZES: dict[str, PipelineSize] = {
    "tiny": PipelineSize(
        n_train=200,
        n_test=20,
        batch_size=8,
        input_height=8,
        hidden_dim=32,
        z_dim=32,
        mc_samples=3,
        workers=0,
        warmup_steps=1,
        e2e_steps=3,
        sync_steps=1,
        step_steps=2,
        val_batches=2,
        loader_batches=2,
    ),
    "small": PipelineSize(
        n_train=2000,
        n_test=200,
        batch_size=16,
        input_height=16,
        hidden_dim=512,
        z_dim=512,
        mc_samples=12,
        workers=2,
        warmup_steps=2,
        e2e_steps=4,
        sync_steps=2,
        step_steps=3,
        val_batches=3,
        loader_batches=12,
    ),
    # conf/dataset/cifar10.yaml: batch 256, 8 workers; 50,000 images (40,000 train, 10,000 validation).
    # 18 runs of 77 steps (about 20k images each): estimated at about 3 minutes on one H100/H200 with the
    # PIL runs near the reference's measured 3.9k samples/s (not yet timed on one)
    "full": PipelineSize(
        n_train=50000,
        n_test=10000,
        batch_size=256,
        input_height=32,
        hidden_dim=1024,
        z_dim=1024,
        mc_samples=12,
        workers=8,
        warmup_steps=12,
        e2e_steps=50,
        sync_steps=3,
        step_steps=12,
        val_batches=8,
        loader_batches=20,
    ),
}


# ---------------------------------------------------------------------------------------- data


def write_cifar10(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Random images in torchvision's CIFAR-10 layout under ``root/cifar-10-batches-py``; returns ``root``.

    Each batch file is a pickle of ``{"data": uint8 [n, 3072] (R, G, B planes of 32×32), "labels":
    [int], "batch_label", "filenames"}``; ``batches.meta`` holds ``label_names``.
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    per_batch = [n_train // 5 + (1 if i < n_train % 5 else 0) for i in range(5)]
    files = [(f"data_batch_{i + 1}", n, f"training batch {i + 1} of 5") for i, n in enumerate(per_batch)]
    files.append(("test_batch", n_test, "testing batch 1 of 1"))
    for name, n, label in files:
        entry = {
            "batch_label": label,
            "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            "labels": [int(v) for v in rng.integers(0, 10, size=n)],
            "filenames": [f"img_{i}.png" for i in range(n)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"num_cases_per_batch": per_batch[0], "label_names": names, "num_vis": 3072}, f, protocol=2)
    return root


@contextlib.contextmanager
def synthetic_cifar_accepted() -> Iterator[None]:
    """torchvision verifies CIFAR files by md5; synthetic files only need to be present."""
    import torchvision.datasets.cifar as cifar

    with mock.patch.object(cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath)):
        yield


# -------------------------------------------------------------------------------------- config


def run_config(
    model: str,
    loss: str,
    data_path: str,
    style: str,
    size: PipelineSize,
    root: Path,
    seed: int,
    progress: str,
    workers: int | None = None,
) -> dict[str, Any]:
    """The composed pipeline config of one run (plain dicts), shrunk to ``size``."""
    overrides: dict[str, Any] = {
        "seed": seed,
        "dataset.data_dir": str(root),
        "dataset.batch_size": size.batch_size,
        "dataset.input_height": size.input_height,
        "dataset.num_workers": size.workers if workers is None else workers,
        "model.backbone.hidden_dim": size.hidden_dim,
        "model.backbone.z_dim": size.z_dim,
        "logging.progress": progress,
        **DATA_PATHS[data_path],
    }
    if model != "ssl":
        overrides["train.mc_samples"] = size.mc_samples
    if style == "reference":
        overrides.update(REFERENCE_STYLE)
    return plain_config.compose(model, loss, overrides)


def trainer_config(cfg: Mapping[str, Any], size: PipelineSize, device: torch.device) -> dict[str, Any]:
    """``train.trainer`` of the config, on one ``device``, stopped after ``size.total_steps`` steps with
    one validation of ``size.val_batches`` batches after the end-to-end window."""
    trainer = dict(cfg["train"]["trainer"])
    trainer.update(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        max_steps=size.total_steps,
        val_check_interval=size.warmup_steps + size.e2e_steps,
        limit_val_batches=size.val_batches,
        num_sanity_val_steps=0,
        enable_model_summary=False,
    )
    if device.type == "cpu":
        trainer["precision"] = "32-true"
    return trainer


def reference_style_step(model: Any, batch: Any) -> dict[str, Any]:
    """The reference's step (``tests.reference.ssl_step.reference_step``) on the model's layers."""
    from tests.reference.ssl_step import reference_step

    return reference_step(model, batch)


# --------------------------------------------------------------------------------------- clocks


class RssSampler:
    """Peak resident memory of this process (``/proc/self/statm`` sampled by a thread; ``ru_maxrss`` elsewhere)."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def current(self) -> int | None:
        """The resident set size now (bytes), or None where /proc is missing."""
        return self._rss()

    def _rss(self) -> int | None:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page
        except (OSError, ValueError, IndexError):
            return None

    def start(self) -> None:
        if self._rss() is None:
            return
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() or 0)
            self._stop.wait(self.interval_s)

    def stop(self) -> dict[str, Any]:
        if self._thread is None:
            return {"kind": "cpu_ru_maxrss", "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
        self._stop.set()
        self._thread.join()
        return {"kind": "cpu_rss_sampled_main_process", "peak_bytes": self.peak}


def profiler_counts(prof: Any) -> dict[str, int]:
    """Calls per event name recorded by a stopped ``torch.profiler.profile``."""
    counts: dict[str, int] = {}
    for event in prof.key_averages():
        counts[event.key] = counts.get(event.key, 0) + int(event.count)
    return counts


def count_syncs(counts: Mapping[str, int], steps: int) -> dict[str, Any]:
    """Synchronisations per step from profiler event counts (name → calls over ``steps`` steps)."""
    syncs = {name: int(counts.get(name, 0)) for name in SYNC_EVENTS}
    total = sum(syncs.values())
    return {
        "per_step": total / steps if steps else None,
        "events": syncs,
        "cudaMemcpyAsync": int(counts.get("cudaMemcpyAsync", 0)),
        "steps": steps,
    }


class PipelineClock(pl.Callback):
    """The timing windows of one run; first in the Trainer's callback list (its hooks run before the others)."""

    def __init__(self, size: PipelineSize, device: torch.device) -> None:
        super().__init__()
        self.size = size
        self.device = device
        self.step = 0  # index of the current training step
        self.t_e2e: list[float] = []
        self.step_s: list[float] = []
        self.val_t0: float | None = None
        self.val_t1: float | None = None
        self.val_batches = 0
        self.first_terms: dict[str, torch.Tensor] | None = None
        self.first_batch_sum: float | None = None
        self.sync_counts: dict[str, Any] | None = None
        self.memory: dict[str, Any] = {}
        self._t0 = 0.0
        self._profiler: Any = None
        self._rss = RssSampler()
        self._start_bytes = 0

    # windows: [0, W) warm-up | [W, W+E) end to end | validation | [.., +P) profiled | [.., +S) per step
    @property
    def _e2e_end(self) -> int:
        return self.size.warmup_steps + self.size.e2e_steps

    @property
    def _step_start(self) -> int:
        return self._e2e_end + (self.size.sync_steps if self.device.type == "cuda" else 0)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start_bytes = torch.cuda.memory_allocated(self.device)
        else:
            self._start_bytes = self._rss.current() or 0
            self._rss.start()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        i = self.step
        if i == 0:  # identifies the first batch (a host read: the warm-up is not timed)
            self.first_batch_sum = float(batch[0][0].double().sum())
        if self._profiler is not None and i == self._step_start:
            self._stop_profiler()
        if self.device.type == "cuda" and self.size.sync_steps and i == self._e2e_end:
            from torch.profiler import ProfilerActivity, profile

            self._profiler = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            self._profiler.start()
        if i >= self._step_start:
            synchronize(self.device)
            self._t0 = time.perf_counter()

    def _stop_profiler(self) -> None:
        self._profiler.stop()
        self.sync_counts = count_syncs(profiler_counts(self._profiler), self.size.sync_steps)
        self._profiler = None

    def batch_end(self, pl_module: pl.LightningModule) -> None:
        """End of a training step (called by :class:`ClockEnd`, after every other callback)."""
        i = self.step
        if i == 0:
            self.first_terms = {k: v.detach().clone() for k, v in getattr(pl_module, "last_step_terms", {}).items()}
        if i >= self._step_start:
            synchronize(self.device)
            self.step_s.append(time.perf_counter() - self._t0)
        if i in (self.size.warmup_steps - 1, self._e2e_end - 1):
            synchronize(self.device)
            self.t_e2e.append(time.perf_counter())
        self.step += 1

    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self.val_t1 is not None:  # only the first validation is timed
            return
        if batch_idx == 1:  # from the second batch: the loader's start-up is not charged
            synchronize(self.device)
            self.val_t0 = time.perf_counter()
        if batch_idx >= 1:
            self.val_batches += 1

    def validation_end(self) -> None:
        if self.val_t0 is not None and self.val_t1 is None:
            synchronize(self.device)
            self.val_t1 = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._profiler is not None:  # fewer steps than planned
            self._stop_profiler()
        if self.device.type == "cuda":
            synchronize(self.device)
            self.memory = {
                "kind": "cuda_max_memory_allocated",
                "peak_bytes": torch.cuda.max_memory_allocated(self.device),
                "reserved_bytes": torch.cuda.max_memory_reserved(self.device),
            }
        else:
            self.memory = self._rss.stop()
        self.memory["start_bytes"] = self._start_bytes
        self.memory["delta_bytes"] = self.memory["peak_bytes"] - self._start_bytes


class ClockEnd(pl.Callback):
    """The end of the clock's windows; last in the Trainer's callback list."""

    def __init__(self, clock: PipelineClock) -> None:
        super().__init__()
        self.clock = clock

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.clock.batch_end(pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clock.validation_end()


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's info logging and its few-workers warnings off inside the block."""
    loggers = [logging.getLogger(n) for n in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            warnings.filterwarnings("ignore", ".*LeafSpec.*")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# ------------------------------------------------------------------------------------------- runs


def measure_run(
    root: Path,
    model_name: str,
    loss: str,
    data_path: str,
    style: str,
    size: PipelineSize,
    device: torch.device,
    seed: int,
    progress: str,
) -> dict[str, Any]:
    """One shortened pretraining run through ``build_trainer``; its timings, memory and first-step terms."""
    from src.train.trainer import build_trainer

    if size.total_steps >= 2 * (size.warmup_steps + size.e2e_steps):
        raise ValueError("the run must end before a second validation: total_steps < 2 (warmup_steps + e2e_steps)")
    gc.collect()  # the previous run's tensors, so that its memory is not charged to this one
    if device.type == "cuda":
        torch.cuda.empty_cache()
    cfg = run_config(model_name, loss, data_path, style, size, root, seed, progress)
    pl.seed_everything(seed, workers=False)  # as run_pipeline does before it builds anything
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")  # as run_pipeline does
    start = time.perf_counter()
    try:
        with quiet_lightning(), synthetic_cifar_accepted(), tempfile.TemporaryDirectory(prefix="bench-run-") as out:
            dm = datamodule_from_config(cfg["dataset"])
            dm.setup("fit")
            dm.check_batches()
            if size.total_steps > dm.train_iters_per_epoch:
                raise ValueError(
                    f"{size.total_steps} steps do not fit in one epoch of {dm.train_iters_per_epoch} batches"
                )
            kwargs = dict(cfg["train"]["kwargs"])
            name = SSL_MODELS.name_of_target(kwargs.pop("_target_"))
            kwargs["train_iters_per_epoch"] = dm.train_iters_per_epoch
            model = SSL_MODELS[name](**kwargs, seed=cfg["seed"])
            if style == "reference":  # the reference's per-MC-sample step on the same layers
                model.shared_step = functools.partial(reference_style_step, model)
                # its output has the loss terms only, not the distributions behind the mu/sigma statistics
                model.log_step_outputs = functools.partial(BaseSelfSupervisedLearning.log_step_outputs, model)
            phase = build_trainer(
                trainer_config(cfg, size, device),
                Path(out),
                callbacks_cfg=cfg["train"]["callbacks"],
                logging_cfg=cfg["logging"],
                phase="pretrain",
                encoder_output_dim=int(model.encoder_out_dim),
                num_classes=int(cfg["dataset"]["num_classes"]),
            )
            clock = PipelineClock(size, device)
            phase.trainer.callbacks.insert(0, clock)
            phase.trainer.callbacks.append(ClockEnd(clock))
            fit_start = time.perf_counter()
            phase.fit(model, dm)
            fit_wall = time.perf_counter() - fit_start
            callbacks = sorted(type(c).__name__ for c in phase.trainer.callbacks if c not in (clock,))
            loggers = [type(lg).__name__ for lg in phase.trainer.loggers]
    finally:
        torch.set_float32_matmul_precision(previous)
    wall = time.perf_counter() - start
    if clock.step != size.total_steps or len(clock.t_e2e) != 2 or clock.val_t1 is None:
        raise RuntimeError(
            f"{model_name}/{loss}/{data_path}/{style}: {clock.step} of {size.total_steps} steps, "
            f"{len(clock.t_e2e)} of 2 window marks, validation {'missing' if clock.val_t1 is None else 'timed'}"
        )
    e2e_s = clock.t_e2e[1] - clock.t_e2e[0]
    step_median = statistics.median(clock.step_s)
    val_s = clock.val_t1 - (clock.val_t0 or clock.val_t1)
    b = size.batch_size
    return {
        "case": f"{model_name}+{loss}",
        "model": model_name,
        "loss": loss,
        "data_path": data_path,
        "style": style,
        "augment_on_device": bool(dm.augment_on_device),
        "e2e_samples_per_s": size.e2e_steps * b / e2e_s,
        "e2e_s": e2e_s,
        "step_samples_per_s": b / step_median,
        "step_s": {
            "median_s": step_median,
            "min_s": min(clock.step_s),
            "max_s": max(clock.step_s),
            "repeats_s": clock.step_s,
        },
        "val_samples_per_s": clock.val_batches * b / val_s if val_s > 0 else None,
        "fit_wall_s": fit_wall,
        "run_wall_s": wall,
        "fit_samples_per_s": size.total_steps * b / fit_wall,
        "memory": clock.memory,
        "syncs": clock.sync_counts if device.type == "cuda" else "n/a",
        "first_batch_sum": clock.first_batch_sum,
        "first_step_terms": {k: float(v) for k, v in (clock.first_terms or {}).items()},
        "callbacks": callbacks,
        "loggers": loggers,
    }


def measure_loader(root: Path, size: PipelineSize, workers: int, batches: int, seed: int) -> dict[str, Any]:
    """Images/s of the PIL path's training loader alone (three-view transform); the first batch timed apart."""
    cfg = run_config("ssl_bayes_h", "mc_barlow_twins", "pil", "project", size, root, seed, "none", workers=workers)
    with synthetic_cifar_accepted():
        dm = datamodule_from_config(cfg["dataset"])
        dm.setup("fit")
        start = time.perf_counter()
        it = iter(dm.train_dataloader())
        next(it)
        first = time.perf_counter() - start
        n = 0
        start = time.perf_counter()
        for _ in range(batches):
            n += int(next(it)[1].shape[0])
        elapsed = time.perf_counter() - start
        del it
    return {"workers": workers, "first_batch_s": first, "batches": batches, "images_per_s": n / elapsed}


def first_step_check(cases: list[dict[str, Any]], precision: str) -> list[dict[str, Any]]:
    """Project vs reference-style step on the first batch of the ``pil`` path (same seed, weights, batch and
    MC noise): the loss terms must agree within :data:`RTOL`."""
    rtol = RTOL["32-true" if precision == "32-true" else "mixed"]
    checks = []
    for ref in (c for c in cases if c["style"] == "reference"):
        proj = next(
            (
                c
                for c in cases
                if c["style"] == "project" and c["data_path"] == ref["data_path"] and c["case"] == ref["case"]
            ),
            None,
        )
        if proj is None:
            continue
        keys = sorted(set(ref["first_step_terms"]) & set(proj["first_step_terms"]))
        diffs = {k: abs(proj["first_step_terms"][k] - ref["first_step_terms"][k]) for k in keys}
        scale = max((abs(ref["first_step_terms"][k]) for k in keys), default=0.0)
        a, b = proj["first_batch_sum"], ref["first_batch_sum"]
        same_batch = a is not None and b is not None and abs(a - b) <= 1e-9 * max(abs(a), 1.0)
        max_diff = max(diffs.values(), default=float("inf"))
        checks.append(
            {
                "case": ref["case"],
                "data_path": ref["data_path"],
                "same_first_batch": same_batch,
                "terms": keys,
                "missing_terms": sorted(set(ref["first_step_terms"]) ^ set(proj["first_step_terms"])),
                "loss": ref["first_step_terms"].get("loss"),
                "max_abs_diff": max_diff,
                "max_rel_diff": max_diff / scale if scale else None,
                "rtol": rtol,
                "ok": bool(same_batch and keys and max_diff <= rtol * max(scale, 1.0)),
            }
        )
    return checks


def add_ratios(cases: list[dict[str, Any]]) -> None:
    """``vs_deterministic`` (same loss base, data path, style) and ``vs_reference`` (same model and loss)."""
    for c in cases:
        det = next(
            (
                d
                for d in cases
                if d["model"] == "ssl"
                and d["loss"] == c["loss"].removeprefix("mc_")
                and d["data_path"] == c["data_path"]
                and d["style"] == c["style"]
            ),
            None,
        )
        ref = next((r for r in cases if r["style"] == "reference" and r["case"] == c["case"]), None)
        for kind in ("e2e", "step"):
            key = f"{kind}_samples_per_s"
            c[f"{kind}_vs_deterministic"] = ratio(c[key], det[key]) if det is not None else None
            c[f"{kind}_vs_reference"] = ratio(c[key], ref[key]) if ref is not None else None


# ------------------------------------------------------------------------------------------ CLI


def table(result: dict[str, Any]) -> str:
    """The readable summary of a result dict."""
    rows = []
    for c in result["cases"]:
        syncs = c["syncs"]["per_step"] if isinstance(c["syncs"], dict) else c["syncs"]
        rows.append(
            [
                c["case"],
                c["data_path"],
                c["style"],
                c["e2e_samples_per_s"],
                c["step_samples_per_s"],
                c["val_samples_per_s"],
                c["e2e_vs_deterministic"],
                c["step_vs_deterministic"],
                c["e2e_vs_reference"],
                c["step_vs_reference"],
                mib(c["memory"]["peak_bytes" if c["memory"]["kind"].startswith("cuda") else "delta_bytes"]),
                syncs,
            ]
        )
    headers = [
        "case",
        "data",
        "style",
        "e2e samples/s",
        "step samples/s",
        "val samples/s",
        "e2e vs det",
        "step vs det",
        "e2e vs ref",
        "step vs ref",
        "peak MiB (CPU: RSS growth)",
        "syncs/step",
    ]
    out = markdown_table(headers, rows)
    checks = [
        [k["case"], k["data_path"], k["loss"], k["max_abs_diff"], "ok" if k["ok"] else "MISMATCH"]
        for k in result["first_step_check"]
    ]
    if checks:
        out += "\n\nfirst step, project vs reference-style (same batch and noise):\n\n"
        out += markdown_table(["case", "data", "loss", "max abs diff", "check"], checks)
    loader = [[f"{r['workers']} workers", r["images_per_s"], r["first_batch_s"]] for r in result["loader"]]
    if loader:
        out += "\n\nPIL loader alone (three-view transform):\n\n"
        out += markdown_table(["loader", "images/s", "first batch s"], loader)
    proj = result.get("projections", {}).get("by_data_path", {})
    if proj:
        rows = [
            [path, p["ablation_grid_gpu_days"], p["ablation_runs_priced"], p["ood_study_encoding_gpu_hours"]]
            for path, p in proj.items()
        ]
        runs = result["projections"]["grid_runs"]
        out += f"\n\nprojections ({runs}-run CIFAR-10 ablation grid; OOD study encoding):\n\n"
        out += markdown_table(["data path", "grid GPU-days", "runs priced", "study encoding GPU-hours"], rows)
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line arguments (see the module docstring)."""
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    names = sorted({m for m, _ in COMBINATIONS})
    parser.add_argument("--models", nargs="+", choices=names, default=None, help="default: all three")
    parser.add_argument(
        "--losses", nargs="+", choices=("barlow_twins", "vicreg"), default=None, help="base losses (default: both)"
    )
    parser.add_argument("--data-paths", nargs="+", choices=sorted(DATA_PATHS), default=None, help="default: both")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference-style runs")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: per size)")
    parser.add_argument("--progress", choices=("lines", "none"), default="lines", help="the runs' progress display")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, write the JSON; returns the result dict."""
    args = parse_args(argv)
    apply_threads(args.threads)
    device = resolve_device(args.device)
    size = SIZES[args.size]
    if args.workers is not None:
        size = replace(size, workers=args.workers)
    combos = [
        (m, lo)
        for m, lo in COMBINATIONS
        if (args.models is None or m in args.models) and (args.losses is None or lo.removeprefix("mc_") in args.losses)
    ]
    paths = args.data_paths or list(DATA_PATHS)
    # the device path first, then per model and loss the PIL path beside its reference-style run: a
    # benchmark cut short by a time budget (benchmarks/device_check.sh) keeps the cases the targets are
    # stated on, and every reference-style run it kept has its first-step check
    runs = [(m, lo, "device", "project") for m, lo in combos] if "device" in paths else []
    for m, lo in combos:
        runs += [(m, lo, p, "project") for p in paths if p != "device"]
        if not args.no_reference:
            runs.append((m, lo, "pil", "reference"))
    precision = (
        "32-true"
        if device.type == "cpu"
        else str(plain_config.compose("ssl", "barlow_twins")["train"]["trainer"]["precision"])
    )
    if not runs:
        raise SystemExit("nothing to run: --models/--losses/--data-paths select no run")

    def assemble(cases: list[dict[str, Any]], complete: bool) -> dict[str, Any]:
        add_ratios(cases)
        checks = first_step_check(cases, precision)
        result: dict[str, Any] = {
            "benchmark": NAME,
            "environment": environment(device),
            "size": args.size,
            "sizes": asdict(size),
            "precision": precision,
            "dataset": {"format": "torchvision CIFAR-10 pickles, random uint8 images", "write_s": write_s},
            "data_paths": DATA_PATHS,
            "reference_style": {
                "overrides": REFERENCE_STYLE,
                "step": "tests.reference.ssl_step.reference_step (projector and MC loss per sample)",
            },
            "timing": {
                "e2e_samples_per_s": "e2e_steps x batch / seconds from the end of the warm-up to the end of the "
                "window (CUDA synchronised at both ends only): loading, transfer, device augmentation, step, "
                "callbacks, logging",
                "step_samples_per_s": "batch / median seconds from on_train_batch_start (first callback) to "
                "on_train_batch_end (last callback), synchronised at both: step, probe, guard, progress",
                "val_samples_per_s": "validation images per second from the second validation batch to its end",
                "syncs": "CUDA runtime synchronising calls per step under torch.profiler (n/a on CPU)",
                "memory": "CUDA max_memory_allocated over the fit (peak_bytes); on CPU the sampled RSS of the main "
                "process (workers excluded), peak_bytes and delta_bytes = peak - RSS at the fit's start",
            },
            "ratios": {
                "vs_deterministic": "samples/s over ssl's with the same base loss, data path and style",
                "vs_reference": "samples/s over the reference-style run of the same model and loss (pil data path)",
            },
            "loader": loader,
            "cases": cases,
            "first_step_check": checks,
            # None: no reference-style run was paired with its project run (nothing was checked)
            "all_equivalent": all(k["ok"] for k in checks) if checks else None,
            "complete": complete,
        }
        result["projections"] = projections.project(cases, size.mc_samples)
        return result

    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-cifar-")))
        print(f"[{NAME}] writing {size.n_train} synthetic CIFAR-10 images to {root}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        write_cifar10(root, size.n_train, size.n_test, args.seed)
        write_s = time.perf_counter() - start
        loader = []
        for workers in sorted({0, size.workers}):
            batches = size.loader_batches if workers else max(1, size.loader_batches // 4)
            loader.append(measure_loader(root, size, workers, batches, args.seed))
        cases: list[dict[str, Any]] = []
        output = args.output or default_output(NAME, device)
        for model_name, loss, data_path, style in runs:
            print(f"[{NAME}] {model_name}+{loss} / {data_path} / {style} ...", file=sys.stderr, flush=True)
            cases.append(measure_run(root, model_name, loss, data_path, style, size, device, args.seed, args.progress))
            # written after every run (``complete`` false until the last): a run stopped by a time limit
            # still leaves what it measured
            result = assemble(cases, len(cases) == len(runs))
            write_result(output, result)
    print(f"\n## {NAME} ({args.size}, {device.type}: {result['environment']['device_name']}, {precision})\n")
    print(table(result))
    print(f"\nwritten to {output}")
    return result


if __name__ == "__main__":
    main()
