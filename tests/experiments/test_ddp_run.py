"""A tiny real DDP pretraining: two CPU processes (gloo), then the single-device finetuning on rank 0.

The pipeline script runs as a subprocess because Lightning's DDP launcher re-executes ``sys.argv``
for the other rank. The stock pretrain trainer config asks for ``sync_batchnorm: true``, which the
pipeline turns off on CPU (torch's DDP refuses SyncBatchNorm on CPU modules).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from src.data.prepare.demo_data import prepare_demo_data

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_demo_data(tmp_path_factory.mktemp("datasets") / "demo")


def test_ddp_pretraining_on_two_cpu_processes(demo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        str(ROOT / "src/experiments/scripts/run_pipeline.py"),
        "dataset=demo",
        f"dataset.data_dir={demo_root}",
        "dataset.input_height=8",
        "dataset.batch_size=16",  # per device: a global batch of 32
        "+model/task/ssl@train=ssl_bayes_h",
        "model/loss=mc_vicreg",
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
        f"hydra.run.dir={tmp_path / 'hydra_run'}",
    ]
    # one thread per rank: the two ranks share the machine's cores
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "Starting with 2 processes" in log and "GLOBAL_RANK: 1" in log  # really two ranks
    assert "sync_batchnorm needs GPUs" in log

    results = json.loads((out / "results.json").read_text())
    assert results["metadata"]["model_name"] == "ssl_bayes_h" and results["metadata"]["batch_size"] == 16
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
