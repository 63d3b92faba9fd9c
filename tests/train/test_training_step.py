"""The training step through the pipeline's own Trainer (``build_trainer`` with the real callbacks: online
probe, non-finite-loss guard, progress display, CSV logger): logging throttled to ``log_every_n_steps``
writes the same rows as logging every step, and on CUDA a few steps of every model run without a host
synchronisation (``torch.cuda.set_sync_debug_mode("error")``)."""

from __future__ import annotations

import csv
import traceback
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, Dataset

import src.task.ssl
from src.train.callbacks import online_finetuner
from src.train.trainer import build_trainer
from tests.conftest import build_model, three_view_batch

CUDA = torch.cuda.is_available()
BATCH = 8


class RandomViews(Dataset):
    """``steps`` different three-view batches (a loader with batch_size=None)."""

    def __init__(self, steps: int, seed: int = 0) -> None:
        self.batches = [three_view_batch(batch_size=BATCH, seed=seed + i) for i in range(steps)]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        return self.batches[i]


def pipeline_trainer(root: Path, log_every: int, device: str, progress_every: int = 2, **trainer: object) -> pl.Trainer:
    """The pretraining phase's Trainer as the pipeline builds it (probe, guard, last checkpoint, progress
    lines every ``progress_every`` steps, CSV logger), on ``device``, for one epoch."""
    phase = build_trainer(
        {
            "max_epochs": 1,
            "accelerator": "gpu" if device == "cuda" else "cpu",
            "devices": 1,
            "log_every_n_steps": log_every,
            "num_sanity_val_steps": 0,
            "enable_model_summary": False,
            "gradient_clip_val": 0.5,
            **trainer,
        },
        root,
        callbacks_cfg={"online_finetuner": {"learning_rate": 1e-4}},
        logging_cfg={"csv": True, "progress": "lines", "progress_every_n_steps": progress_every},
        phase="pretrain",
        encoder_output_dim=512,
        num_classes=4,
    )
    return phase.trainer


def metrics_rows(root: Path) -> list[dict[str, str]]:
    (path,) = root.rglob("metrics.csv")
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def fit_logged(model_name: str, loss: str, root: Path) -> tuple[list[dict[str, str]], list[str]]:
    """Five steps logged every 2 and a validation epoch: the CSV rows and the names the module logged."""
    pl.seed_everything(0)
    model = build_model(model_name, loss, batch_size=BATCH)
    trainer = pipeline_trainer(root, log_every=2, device="cpu")
    calls: list[str] = []
    log = model.log

    def recording_log(name: str, *args: object, **kwargs: object) -> None:
        calls.append(name)
        log(name, *args, **kwargs)

    model.log = recording_log  # type: ignore[method-assign]
    trainer.fit(model, DataLoader(RandomViews(5), batch_size=None), DataLoader(RandomViews(2, 9), batch_size=None))
    return metrics_rows(root), calls


@pytest.mark.parametrize(("model_name", "loss"), [("ssl_bayes_h", "mc_vicreg")])  # every term: loss, mu/sigma, probe
def test_throttled_logging_writes_the_rows_of_logging_every_step(
    model_name: str, loss: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CSV logger's rows (training steps 1 and 3, the validation epoch means) are the same whether the
    modules and the probe call ``self.log`` at every step (as before the throttle) or only at the logged ones."""
    rows, calls = fit_logged(model_name, loss, tmp_path / "throttled")
    monkeypatch.setattr(src.task.ssl, "logs_this_step", lambda trainer: True)
    monkeypatch.setattr(online_finetuner, "logs_this_step", lambda trainer: True)
    rows_every, calls_every = fit_logged(model_name, loss, tmp_path / "every")
    assert rows == rows_every
    assert [r["step"] for r in rows if r.get("train_loss")] == ["1", "3"]  # log_every_n_steps=2
    assert any(r.get("val_loss") for r in rows) and any(r.get("train_online_acc") for r in rows)
    assert any(r.get("train_mu_h_mean") for r in rows)
    for name in ("train_loss", "train_sigma_h_std", "train_online_acc"):  # logged at 2 of the 5 steps
        assert calls.count(name) == 2 and calls_every.count(name) == 5, name


# ----------------------------------------------------------------------------- host reads (CPU proxy of the sync test)


class HostReads(TorchDispatchMode):
    """Records the ops that read a tensor value back to the host (``.item()``, ``bool()``, ``float()``) or make a
    tensor from Python values, with the innermost frames of the code that asked. The optimizers' step counters
    are left out: torch keeps them on the CPU on every device, so reading them is no device synchronisation."""

    OPS = ("_local_scalar_dense", "lift_fresh")

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func.overloadpacket.__name__ in self.OPS:
            frames = [f for f in traceback.extract_stack() if "torch/utils/_python_dispatch" not in f.filename]
            if not any("/torch/optim/" in f.filename for f in frames):
                self.reads.append(" <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames[-6:])))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    ("model_name", "loss"), [("ssl", "barlow_twins"), ("ssl_bayes_h", "mc_barlow_twins"), ("ssl_bayes_z", "mc_vicreg")]
)
def test_training_steps_read_nothing_back_to_the_host(model_name: str, loss: str, tmp_path: Path) -> None:
    """The CPU side of the CUDA sync test: steps 2-6 through the pipeline's Trainer (probe, guard, progress lines,
    CSV logger) read no tensor value back to the host and make no tensor from Python values. (Logging every
    step would: Lightning converts the progress-bar terms with ``.item()`` after every step that logs them.)"""
    reads = HostReads()

    class Window(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == 1:
                reads.__enter__()

    class WindowEnd(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if batch_idx == 5:
                reads.__exit__(None, None, None)

    pl.seed_everything(0)
    model = build_model(model_name, loss, batch_size=BATCH)
    trainer = pipeline_trainer(tmp_path, log_every=50, device="cpu", progress_every=100, limit_val_batches=0)
    trainer.callbacks.insert(0, Window())
    trainer.callbacks.append(WindowEnd())
    trainer.fit(model, DataLoader(RandomViews(8), batch_size=None))
    assert trainer.global_step == 8
    assert reads.reads == []


# ----------------------------------------------------------------------------- CUDA: no host synchronisation


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize(
    ("model_name", "loss", "precision"),
    [
        ("ssl", "barlow_twins", "32-true"),
        ("ssl", "vicreg", "bf16-mixed"),
        ("ssl_bayes_h", "mc_barlow_twins", "bf16-mixed"),
        ("ssl_bayes_h", "mc_vicreg", "32-true"),
        ("ssl_bayes_z", "mc_barlow_twins", "bf16-mixed"),
    ],
)
def test_training_steps_do_not_synchronise_the_host(model_name: str, loss: str, precision: str, tmp_path: Path) -> None:
    """Steps 2-6 of each model through the pipeline's Trainer under ``set_sync_debug_mode("error")``: any
    host-device synchronisation in the step, the probe, the guard, the logging calls or the progress
    display raises. Step 1 allocates and warms up; the 8th is the epoch's logged step (Lightning lowers
    ``log_every_n_steps`` to the 8 batches of the epoch), where Lightning itself reads the logged values
    for the loggers, as are the guard's checks (every 50 steps) and the progress lines (every 100).

    bf16-mixed has no GradScaler; 16-mixed's scaler reads its inf flag on the host at every step (torch's
    and Lightning's own synchronisation), so it is left out here."""

    class SyncDebug(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == 1:
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("error")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if batch_idx == 5:
                torch.cuda.set_sync_debug_mode("default")

    class OnDevice(Dataset):
        """Batches already on the GPU (the device data path): no per-step host-to-device copy of the data."""

        def __init__(self, steps: int) -> None:
            self.batches = [((a.cuda(), b.cuda(), c.cuda()), y.cuda()) for (a, b, c), y in RandomViews(steps).batches]

        def __len__(self) -> int:
            return len(self.batches)

        def __getitem__(self, i: int):
            return self.batches[i]

    pl.seed_everything(0)
    model = build_model(model_name, loss, batch_size=BATCH)
    trainer = pipeline_trainer(
        tmp_path, log_every=50, device="cuda", progress_every=100, precision=precision, limit_val_batches=0
    )
    trainer.callbacks.insert(0, SyncDebug())
    try:
        trainer.fit(model, DataLoader(OnDevice(8), batch_size=None))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert trainer.global_step == 8
