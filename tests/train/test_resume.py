"""Kill a run (SIGTERM in pretraining, SIGKILL in finetuning), start it again, and get the
uninterrupted run's weights and metrics; a finished run started again does nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from src.utils.checkpoint import load_checkpoint
from tests.conftest import ROOT
from tests.train.conftest import SCRIPT, script_env


def command(demo_root: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        str(SCRIPT),
        "dataset=demo",
        f"dataset.data_dir={demo_root}",
        "dataset.batch_size=32",
        "dataset.input_height=8",
        "+model/task/ssl@train=ssl_bayes_z",
        "model/loss=mc_vicreg",
        "+model/task@finetune=finetune",
        "model.backbone.hidden_dim=32",
        "model.backbone.z_dim=32",
        "train.mc_samples=2",
        "train.trainer.max_epochs=3",
        "finetune.trainer.max_epochs=3",
        "train.trainer.accelerator=cpu",
        "finetune.trainer.accelerator=cpu",
        "+train.trainer.limit_val_batches=3",
        "+finetune.trainer.limit_val_batches=3",
        "+finetune.trainer.limit_test_batches=3",
        f"output_path={out}",
        f"hydra.run.dir={out}/.hydra_run",
    ]


def start(demo_root: Path, out: Path) -> subprocess.Popen:
    # one thread each: the reference run and the interrupted one share the cores
    env = script_env(WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    out.mkdir(parents=True, exist_ok=True)
    log = open(out.parent / f"{out.name}.log", "a")  # a file, not a pipe: a full pipe would block the run
    proc = subprocess.Popen(command(demo_root, out), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = Path(log.name)  # type: ignore[attr-defined]
    log.close()
    return proc


def tail(proc: subprocess.Popen) -> str:
    return proc.log_path.read_text()[-4000:]  # type: ignore[attr-defined]


def kill_when(proc: subprocess.Popen, path: Path, sig: signal.Signals, timeout: float = 240) -> int:
    """Send ``sig`` as soon as ``path`` appears (the phase has finished an epoch), return the status."""
    deadline = time.monotonic() + timeout
    while not path.is_file():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {path} appeared:\n{tail(proc)}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.02)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    return proc.returncode


def finish(proc: subprocess.Popen) -> None:
    proc.wait(timeout=600)
    assert proc.returncode == 0, tail(proc)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(demo_root: Path, tmp_path: Path) -> None:
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    reference = start(demo_root, full)  # runs alongside the interrupted one
    try:
        # SIGTERM during pretraining epoch 1: Lightning's SystemExit(0) must become a failure
        status = kill_when(start(demo_root, resumed), resumed / "checkpoints" / "last.ckpt", signal.SIGTERM)
        assert status == 143
        assert not (resumed / "results.json").exists()
        assert not (resumed / "checkpoints" / "pretrain_done.json").exists()

        # SIGKILL during finetuning epoch 1
        status = kill_when(
            start(demo_root, resumed), resumed / "finetune" / "checkpoints" / "last.ckpt", signal.SIGKILL
        )
        assert status == -signal.SIGKILL
        assert (resumed / "checkpoints" / "pretrain_done.json").is_file()
        assert not (resumed / "results.json").exists()

        finish(start(demo_root, resumed))
        finish(reference)

    finally:
        if reference.poll() is None:
            reference.kill()

    a = json.loads((full / "results.json").read_text())
    b = json.loads((resumed / "results.json").read_text())
    assert a["metrics"] == b["metrics"]
    assert a["offline_metrics"] == b["offline_metrics"]
    assert {k: v for k, v in a["metadata"].items() if k != "run_id"} == {
        k: v for k, v in b["metadata"].items() if k != "run_id"
    }
    for rel in ("checkpoints/last.ckpt", "checkpoints/model.ckpt", "finetune/checkpoints/last.ckpt"):
        wa, wb = weights(full / rel), weights(resumed / rel)
        assert wa.keys() == wb.keys(), rel
        for key in wa:
            assert torch.equal(wa[key], wb[key]), f"{rel}: {key} differs after the resume"
    assert load_checkpoint(resumed / "finetune" / "checkpoints" / "last.ckpt")["epoch"] == 2

    # a finished run started again does nothing
    before = {p: p.stat().st_mtime_ns for p in resumed.rglob("*") if p.is_file() and ".hydra_run" not in p.parts}
    finish(start(demo_root, resumed))
    after = {p: p.stat().st_mtime_ns for p in resumed.rglob("*") if p.is_file() and ".hydra_run" not in p.parts}
    assert before == after
