"""Shared OOD fixtures: one torch thread per test, and demo runs trained once per session (only built
when a test asks for them)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from src.data.prepare.demo_data import prepare_demo_data
from src.train.pipeline import run_pipeline
from tests.ood.fakes import DEMO_RUNS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: the tests' networks and batches are tiny, and on a shared machine a second
    thread costs more in contention than it gains (measured 5-20x on 8-32 images); restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny) demo dataset: image lists, images and protocol.json."""
    return prepare_demo_data(tmp_path_factory.mktemp("demo") / "demo", image_size=8)


@pytest.fixture(scope="session")
def demo_runs(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A runs folder with one briefly trained, finetuned run per model variant (and a dot-entry)."""
    runs_dir = tmp_path_factory.mktemp("study") / "runs"
    for run, model_name, loss in DEMO_RUNS:
        overrides = [
            "dataset=demo",
            f"dataset.data_dir={demo_root}",
            "dataset.input_height=8",
            f"+model/task/ssl@train={model_name}",
            f"model/loss={loss}",
            "+model/task@finetune=finetune",
            f"output_path={runs_dir / run}",
            "dataset.batch_size=64",
            "model.backbone.hidden_dim=32",
            "model.backbone.z_dim=32",
            "train.trainer.max_epochs=1",
            "+train.trainer.limit_train_batches=2",
            "+train.trainer.limit_val_batches=1",
            "finetune.trainer.max_epochs=2",
            "train.trainer.accelerator=cpu",
            "finetune.trainer.accelerator=cpu",
        ]
        if model_name != "ssl":
            overrides.append("train.mc_samples=2")
        with initialize_config_dir(version_base=None, config_dir=str(ROOT / "src/experiments/conf")):
            run_pipeline(compose(config_name="config", overrides=overrides))
    (runs_dir / ".gitignore").write_text("*\n")  # dot-entries are not runs
    return runs_dir
