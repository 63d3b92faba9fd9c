"""End-to-end pretraining throughput: data loading + augmentation + Lightning training steps.

A synthetic dataset in torchvision's CIFAR-10 on-disk format (``cifar-10-batches-py/data_batch_1..5``,
``test_batch``, ``batches.meta`` pickles of random uint8 images) is written to a temporary folder,
the project's ``CIFAR10DataModule`` reads it with the SSL three-view transform, and a Lightning
``Trainer`` (no validation, no logger, no checkpointing; fp16 mixed precision and gradient
clipping 0.5 on CUDA as in ``conf/trainer/pretrain.yaml``, fp32 on CPU) trains Bayes-H and
Bayes-Z for a fixed number of steps. Reported per (data path, model):

* ``samples_per_s``: steady-state images per second over the steps after the warm-up ones
  (synchronised at both ends); each image yields three views (two augmented, one plain);
* ``fit_wall_s``: the whole ``trainer.fit`` call (worker start-up, first batches included);
* ``data_wait_s``: median host time between the end of one step and the start of the next
  (the loader's ``next`` plus the host→device copy; on a GPU it overlaps queued kernels).

The loader is also timed alone (images/s through the DataLoader with the three-view transform)
with 0 and N worker processes.

Data paths are named in ``DATA_PATHS`` (name → extra datamodule arguments): ``cpu``, PIL/torchvision
augmentations in DataLoader workers (the project's default), and ``device``, uint8 batches
augmented on the training device (``augment_on_device=True``, ``src/data/augment/device_views.py``). Each
path's ``ratio`` is its samples/s over the ``cpu`` path's for the same model, in the same run.

Usage (repository root)::

    python -m benchmarks.epoch_throughput --device cuda --size full
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import logging
import os
import pickle
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytorch_lightning as pl
import torch

from benchmarks._timing import (
    add_common_args,
    apply_threads,
    default_output,
    environment,
    markdown_table,
    ratio,
    resolve_device,
    synchronize,
    write_result,
)
from benchmarks.train_step import TrainSize, module_kwargs
from src.data.datamodule.base import BaseDataModule
from src.data.datamodule.cifar import CIFAR10DataModule
from src.task import SSL_MODELS

NAME = "epoch_throughput"

#: data path name -> extra CIFAR10DataModule arguments. ``cpu``: PIL/torchvision augmentations in the
#: DataLoader workers (the project's default). Add the GPU-side augmentation path here by name.
DATA_PATHS: dict[str, dict[str, Any]] = {"cpu": {}, "device": {"augment_on_device": True}}
#: datamodule argument names that would select on-device augmentation (reported if one exists)
DEVICE_AUGMENTATION_ARGS: tuple[str, ...] = ("augment_on_device", "gpu_augmentation")
#: the (model, loss) pairs trained
MODELS: tuple[tuple[str, str], ...] = (("ssl_bayes_h", "mc_barlow_twins"), ("ssl_bayes_z", "mc_barlow_twins"))


@dataclass(frozen=True)
class EpochSize:
    """One size preset."""

    n_train: int  # images in data_batch_1..5 together
    n_test: int  # images in test_batch
    batch_size: int
    input_height: int  # side of the views (the stored images are 32×32; the random crop resizes)
    steps: int  # training steps per (data path, model)
    warmup_steps: int  # first steps left out of the steady-state throughput
    hidden_dim: int
    z_dim: int
    mc_samples: int
    workers: int  # DataLoader workers of the training runs and of the N-worker loader timing
    loader_batches: int  # batches of the loader-alone timing (after the first one)


SIZES: dict[str, EpochSize] = {
    "tiny": EpochSize(
        n_train=200,
        n_test=20,
        batch_size=8,
        input_height=8,
        steps=3,
        warmup_steps=1,
        hidden_dim=32,
        z_dim=32,
        mc_samples=3,
        workers=1,
        loader_batches=3,
    ),
    "small": EpochSize(
        n_train=2000,
        n_test=200,
        batch_size=16,
        input_height=32,
        steps=5,
        warmup_steps=2,
        hidden_dim=512,
        z_dim=512,
        mc_samples=12,
        workers=2,
        loader_batches=20,
    ),
    # conf/dataset/cifar10.yaml: batch 256, 8 workers, persistent workers, pinned memory
    "full": EpochSize(
        n_train=50000,
        n_test=10000,
        batch_size=256,
        input_height=32,
        steps=170,
        warmup_steps=20,
        hidden_dim=1024,
        z_dim=1024,
        mc_samples=12,
        workers=8,
        loader_batches=40,
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


def device_augmentation_arg() -> str | None:
    """The first of ``DEVICE_AUGMENTATION_ARGS`` that the CIFAR-10 datamodule accepts, if any."""
    params: set[str] = set()
    for cls in (CIFAR10DataModule, BaseDataModule):
        params |= set(inspect.signature(cls.__init__).parameters)
    return next((name for name in DEVICE_AUGMENTATION_ARGS if name in params), None)


def build_datamodule(
    root: Path, task: str, size: EpochSize, workers: int, data_path: str, seed: int
) -> CIFAR10DataModule:
    """The project's CIFAR-10 datamodule on ``root`` (all images train: ``val_split=0``), set up for fit."""
    dm = CIFAR10DataModule(
        data_dir=root,
        task=task,
        val_split=0,
        batch_size=size.batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=True,
        pin_memory=True,
        input_height=size.input_height,
        seed=seed,
        **DATA_PATHS[data_path],
    )
    with synthetic_cifar_accepted():
        dm.setup("fit")
    return dm


# ------------------------------------------------------------------------------------- loaders


def measure_loader(dm: CIFAR10DataModule, batches: int) -> dict[str, Any]:
    """Images/s through ``dm.train_dataloader()``: the first batch (worker start-up) timed apart."""
    start = time.perf_counter()
    it = iter(dm.train_dataloader())
    next(it)
    first = time.perf_counter() - start
    n = 0
    start = time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(dm.train_dataloader())
            batch = next(it)
        n += int(batch[1].shape[0])
    elapsed = time.perf_counter() - start
    del it
    return {
        "workers": dm.num_workers,
        "first_batch_s": first,
        "batches": batches,
        "images": n,
        "images_per_s": n / elapsed,
        "views_per_image": 3,
    }


# ------------------------------------------------------------------------------------ training


class StepClock(pl.Callback):
    """Timestamps of a training run: steady-state window after ``warmup_steps``, host waits between steps."""

    def __init__(self, warmup_steps: int, total_steps: int, device: torch.device) -> None:
        super().__init__()
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.device = device
        self.steps = 0
        self.samples = 0
        self.t_train_start: float | None = None
        self.t_first_batch: float | None = None
        self.t_warm: float | None = None
        self.t_last: float | None = None
        self._last_end: float | None = None
        self.waits: list[float] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.t_train_start = time.perf_counter()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        if self._last_end is None:
            self.t_first_batch = now
        elif self.steps >= self.warmup_steps:
            self.waits.append(now - self._last_end)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.steps += 1
        if self.steps == self.warmup_steps:
            synchronize(self.device)
            self.t_warm = time.perf_counter()
        elif self.steps > self.warmup_steps:
            self.samples += int(batch[1].shape[0])
            if self.steps == self.total_steps:
                synchronize(self.device)
                self.t_last = time.perf_counter()
        self._last_end = time.perf_counter()


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's info logging and its few-workers warning off inside the block."""
    loggers = [logging.getLogger(n) for n in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            warnings.filterwarnings("ignore", ".*LeafSpec.*")
            warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\).*")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def train_size(size: EpochSize) -> TrainSize:
    """The model-shape part of ``size`` as a ``train_step.TrainSize`` (timing fields unused)."""
    return TrainSize(
        batch_size=size.batch_size,
        image_size=size.input_height,
        hidden_dim=size.hidden_dim,
        z_dim=size.z_dim,
        mc_samples=size.mc_samples,
        warmup=0,
        repeats=0,
        steps=0,
    )


def make_trainer(size: EpochSize, device: torch.device, epochs: int, clock: StepClock) -> pl.Trainer:
    """A Trainer like pretraining's (16-mixed on CUDA, clip 0.5) without validation, logger or checkpoints."""
    return pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision="16-mixed" if device.type == "cuda" else "32-true",
        gradient_clip_val=0.5,
        max_epochs=epochs,
        max_steps=size.steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )


def measure_training(
    root: Path, model_name: str, loss: str, data_path: str, size: EpochSize, device: torch.device, seed: int
) -> dict[str, Any]:
    """Train ``size.steps`` steps of ``model_name`` with Lightning on the ``data_path`` datamodule."""
    dm = build_datamodule(root, model_name, size, size.workers, data_path, seed)
    torch.manual_seed(seed)
    kwargs = module_kwargs(model_name, loss, train_size(size))
    kwargs.update(scheduler="cosine", train_iters_per_epoch=dm.train_iters_per_epoch)
    model = SSL_MODELS[model_name](**kwargs)
    clock = StepClock(size.warmup_steps, size.steps, device)
    epochs = -(-size.steps // dm.train_iters_per_epoch)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")  # as the pretraining pipeline does
    start = time.perf_counter()
    try:
        with quiet_lightning(), synthetic_cifar_accepted():
            trainer = make_trainer(size, device, epochs, clock)
            trainer.fit(model, datamodule=dm)
    finally:
        torch.set_float32_matmul_precision(previous)
    wall = time.perf_counter() - start
    if clock.t_warm is None or clock.t_last is None or clock.steps != size.steps:
        raise RuntimeError(
            f"{model_name}: trained {clock.steps} of {size.steps} steps; the timing window is incomplete"
        )
    steady = clock.t_last - clock.t_warm
    return {
        "data_path": data_path,
        "model": model_name,
        "loss": loss,
        "steps": size.steps,
        "warmup_steps": size.warmup_steps,
        "timed_samples": clock.samples,
        "samples_per_s": clock.samples / steady,
        "steady_s": steady,
        "fit_wall_s": wall,
        "fit_samples_per_s": size.steps * size.batch_size / wall,
        "first_batch_after_train_start_s": (clock.t_first_batch or 0.0) - (clock.t_train_start or 0.0),
        "data_wait_s": statistics.median(clock.waits) if clock.waits else None,
        "data_wait_fraction": (sum(clock.waits) / steady) if clock.waits else None,
        "workers": size.workers,
    }


# ------------------------------------------------------------------------------------------ CLI


def table(result: dict[str, Any]) -> str:
    """The readable summary of a result dict."""
    rows = [
        [
            r["data_path"],
            r["model"],
            r["samples_per_s"],
            r["fit_samples_per_s"],
            r["data_wait_s"],
            r["data_wait_fraction"],
            r["ratio"],
        ]
        for r in result["training"]
    ]
    headers = ["data path", "model", "samples/s", "incl. start-up", "data wait s/step", "wait fraction", "ratio"]
    out = markdown_table(headers, rows)
    loader_rows = [
        [f"{r['workers']} workers", r["images_per_s"], r["first_batch_s"], r["ratio"]] for r in result["loader"]
    ]
    out += "\n\nloader alone (three-view transform):\n\n"
    out += markdown_table(["loader", "images/s", "first batch s", "ratio vs 0 workers"], loader_rows)
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line arguments (see the module docstring)."""
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument(
        "--data-paths", nargs="+", choices=sorted(DATA_PATHS), default=None, help="data paths (default: all)"
    )
    parser.add_argument(
        "--models",
        nargs="+",
        choices=[m for m, _ in MODELS],
        default=None,
        help="models to train (default: ssl_bayes_h and ssl_bayes_z, both with mc_barlow_twins)",
    )
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers N (default: per size)")
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="write the synthetic dataset here (default: a temp dir)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, write the JSON; returns the result dict."""
    args = parse_args(argv)
    apply_threads(args.threads)
    device = resolve_device(args.device)
    size = SIZES[args.size]
    if args.workers is not None:
        size = EpochSize(**{**asdict(size), "workers": args.workers})
    paths = args.data_paths or list(DATA_PATHS)
    models = [(m, lo) for m, lo in MODELS if args.models is None or m in args.models]
    with contextlib.ExitStack() as stack:
        root = args.data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-cifar-")))
        print(f"[epoch_throughput] writing {size.n_train} synthetic CIFAR-10 images to {root}", file=sys.stderr)
        start = time.perf_counter()
        write_cifar10(root, size.n_train, size.n_test, args.seed)
        write_s = time.perf_counter() - start

        loader = []
        for workers in (0, size.workers):
            print(f"[epoch_throughput] loader alone, {workers} workers ...", file=sys.stderr, flush=True)
            dm = build_datamodule(root, "ssl_bayes_h", size, workers, "cpu", args.seed)
            loader.append(measure_loader(dm, size.loader_batches if workers else max(1, size.loader_batches // 4)))
        for entry in loader:
            entry["ratio"] = ratio(entry["images_per_s"], loader[0]["images_per_s"])

        training = []
        for data_path in paths:
            for model_name, loss in models:
                print(f"[epoch_throughput] {data_path} / {model_name} ...", file=sys.stderr, flush=True)
                training.append(measure_training(root, model_name, loss, data_path, size, device, args.seed))
    cpu = {r["model"]: r["samples_per_s"] for r in training if r["data_path"] == "cpu"}
    for r in training:
        r["ratio"] = ratio(r["samples_per_s"], cpu[r["model"]]) if r["model"] in cpu else None

    result: dict[str, Any] = {
        "benchmark": NAME,
        "environment": environment(device),
        "size": args.size,
        "sizes": asdict(size),
        "precision": "16-mixed" if device.type == "cuda" else "32-true",
        "dataset": {"format": "torchvision CIFAR-10 pickles, random uint8 images", "write_s": write_s},
        "data_paths": {name: DATA_PATHS[name] for name in paths},
        "device_augmentation_arg": device_augmentation_arg(),
        "timing": {
            "samples_per_s": "images per second over the steps after warmup_steps, synchronised at both ends",
            "fit_samples_per_s": "steps * batch_size / wall time of trainer.fit (start-up included)",
            "data_wait_s": "median host seconds between a step's end and the next step's start",
        },
        "ratio": "training: samples/s over the cpu data path's for the same model; loader: over 0 workers",
        "loader": loader,
        "training": training,
    }
    output = args.output or default_output(NAME, device)
    write_result(output, result)
    print(f"\n## epoch_throughput ({args.size}, {device.type}: {result['environment']['device_name']})\n")
    print(table(result))
    print(f"\nwritten to {output}")
    return result


if __name__ == "__main__":
    main()
