"""A tiny real DDP pretraining: two CPU processes (gloo), then the single-device finetuning on rank 0.

The pipeline script runs as a subprocess because Lightning's DDP launcher re-executes ``sys.argv``
for the other rank. The stock pretrain trainer config asks for ``sync_batchnorm: true``, which the
pipeline turns off on CPU (torch's DDP refuses SyncBatchNorm on CPU modules).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.train.conftest import SCRIPT, script_env


def run_ddp(demo_root: Path, tmp_path: Path, gather: bool) -> tuple[Path, str]:
    """A two-process pretraining (+ single-device finetuning) with ``model.loss.gather_distributed=<gather>``."""
    out = tmp_path / f"run_gather_{gather}"
    cmd = [
        sys.executable,
        str(SCRIPT),
        "dataset=demo",
        f"dataset.data_dir={demo_root}",
        "dataset.input_height=8",
        "dataset.batch_size=16",  # per device: a global batch of 32
        "+model/task/ssl@train=ssl_bayes_h",
        "model/loss=mc_vicreg",
        f"model.loss.gather_distributed={str(gather).lower()}",
        "train.mc_samples=2",
        "model.backbone.hidden_dim=16",
        "model.backbone.z_dim=16",
        "train.trainer.max_epochs=1",
        "+train.trainer.limit_train_batches=2",
        "+train.trainer.limit_val_batches=2",
        "train.trainer.accelerator=cpu",
        "train.trainer.devices=2",
        "train.trainer.strategy=ddp",
        "+model/task@finetune=finetune",
        "finetune.trainer.max_epochs=1",
        "+finetune.trainer.limit_train_batches=2",
        "+finetune.trainer.limit_val_batches=2",
        "+finetune.trainer.limit_test_batches=2",
        "finetune.trainer.accelerator=cpu",
        f"output_path={out}",
        f"hydra.run.dir={tmp_path / f'hydra_run_{gather}'}",
    ]
    # one thread per rank: the two ranks share the machine's cores
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=script_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return out, log


def check_run(out: Path, log: str, tmp_path: Path, gather: bool) -> dict[str, Any]:
    assert "Starting with 2 processes" in log and "GLOBAL_RANK: 1" in log  # really two ranks
    assert "sync_batchnorm needs GPUs" in log
    results = json.loads((out / "results.json").read_text())
    assert results["metadata"]["model_name"] == "ssl_bayes_h" and results["metadata"]["batch_size"] == 16
    assert results["metadata"]["cl_loss"]["gather_distributed"] is gather
    assert {"val_loss", "val_cl_loss", "val_online_acc"} <= set(results["metrics"])
    assert set(results["offline_metrics"]) >= {"test_offline_acc", "test_offline_loss"}
    assert (tmp_path / results["finetuner_ckpt_path"]).is_file()  # relative to the run's working directory
    # only rank 0 wrote outputs: one logger version per phase, one config
    assert [p.name for p in (out / "csv" / "lightning_logs").iterdir()] == ["version_0"]
    assert [p.name for p in (out / "finetune" / "csv" / "lightning_logs").iterdir()] == ["version_0"]
    assert (out / "hydra_config.yaml").is_file()
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2  # two steps per rank, each on its half of the global batch
    assert "online_finetuner.weight" in ckpt["state_dict"]
    assert ckpt["hyper_parameters"]["cl_loss"]["gather_distributed"] is gather
    return results


@pytest.mark.slow
def test_ddp_pretraining_on_two_cpu_processes_with_both_loss_settings(demo_root: Path, tmp_path: Path) -> None:
    """The default (per-device loss, as the reference) and the global-batch loss both train under DDP;
    they compute different losses (their numerics against references: tests/model/test_distributed.py)."""
    results = {gather: check_run(*run_ddp(demo_root, tmp_path, gather), tmp_path, gather) for gather in (False, True)}
    assert results[False]["metrics"]["val_cl_loss"] != results[True]["metrics"]["val_cl_loss"]
