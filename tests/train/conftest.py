"""Fixtures of the training tests: the demo data (built once per session), the tiny pipeline overrides,
the composed pipeline config, and the environment of a script started as a subprocess."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import DictConfig

from src.data.prepare.demo_data import prepare_demo_data
from tests.conftest import ROOT, compose_config

SCRIPT = ROOT / "src" / "experiments" / "scripts" / "run_pipeline.py"
#: a pipeline run in seconds: 8x8 demo digits, small heads, a few batches
TINY = [
    "dataset.batch_size=32",
    "dataset.input_height=8",  # the demo digits are 8x8 at source: 4x fewer FLOPs than 16
    "model.backbone.hidden_dim=64",
    "model.backbone.z_dim=64",
    "train.trainer.max_epochs=1",
    "+train.trainer.limit_train_batches=3",
    "+train.trainer.limit_val_batches=2",
    "finetune.trainer.max_epochs=3",
    "+finetune.trainer.limit_val_batches=2",
    "train.trainer.accelerator=cpu",
    "finetune.trainer.accelerator=cpu",
]


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_demo_data(tmp_path_factory.mktemp("datasets") / "demo")


def compose_run(
    model_name: str, loss: str, demo_root: Path, output: Path, extra: list[str] | None = None
) -> DictConfig:
    """The pipeline config of one tiny run on the demo data, pretraining and finetuning."""
    overrides = [
        "dataset=demo",
        f"dataset.data_dir={demo_root}",
        f"+model/task/ssl@train={model_name}",
        f"model/loss={loss}",
        "+model/task@finetune=finetune",
        f"output_path={output}",
        *TINY,
        *(extra or []),
    ]
    if model_name != "ssl":
        overrides.append("train.mc_samples=2")
    return compose_config(*overrides)


def script_env(**extra: str) -> dict[str, str]:
    """The environment of a script run as a subprocess: this checkout's ``src`` first on the path."""
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}
