"""Fixtures of the downstream tests: tiny datasets in the real on-disk formats and pretrained demo runs.

- SUN397, Flowers-102, ImageNet: the writers of ``tests/data/conftest.py`` (``datasets_root``).
- demo: ``prepare_demo_data`` at 8 px.
- runs: one real ``run_pipeline`` run (``ssl`` + Barlow Twins, a few batches) and two runs written
  directly in the same layout (``hydra_config.yaml``, ``checkpoints/model.ckpt`` with plain
  hyper-parameters, ``results.json``) around untrained Bayes-H / Bayes-Z modules.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from src.data.prepare.demo_data import prepare_demo_data
from src.train.pipeline import run_pipeline
from tests.conftest import build_model
from tests.data.conftest import write_flowers102, write_imagenet, write_sun397

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "src" / "experiments" / "conf"


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """One intra-op thread: the tiny 8-px workloads gain nothing from two, and a busy second core
    (parallel test runs) makes two-thread OpenMP kernels an order of magnitude slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def subprocess_env() -> dict[str, str]:
    """The environment of a script run as DVC runs it: no PYTHONPATH, one intra-op thread."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="session")
def datasets_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("datasets")
    write_sun397(root)
    write_flowers102(root)
    write_imagenet(root / "imagenet")
    return root


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_demo_data(tmp_path_factory.mktemp("demo_data") / "demo", image_size=8)


@pytest.fixture
def chdir(tmp_path: Path) -> Iterator[Path]:
    """Run the test in ``tmp_path`` (scripts resolve the configs' relative paths from the working directory)."""
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(old)


def write_fake_run(run_dir: Path, model_name: str, loss: str, mc_samples: int = 3) -> Path:
    """A pretraining run in run_pipeline's layout around an untrained module (plain-value checkpoint)."""
    model = build_model(model_name, loss, dataset="demo", num_classes=8, mc_samples=mc_samples)
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save(
        {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)},
        run_dir / "checkpoints" / "model.ckpt",
    )
    train = {"name": model_name, "mc_samples": mc_samples} if model_name != "ssl" else {"name": model_name}
    (run_dir / "hydra_config.yaml").write_text(OmegaConf.to_yaml({"train": train, "seed": 1997}))
    metadata = {"dataset": "demo", **dict(model.hparams), "run_id": "fake0001"}
    results = {"metrics": {}, "model_ckpt_path": str(run_dir / "checkpoints" / "model.ckpt"), "metadata": metadata}
    (run_dir / "results.json").write_text(json.dumps(results, indent="\t"))
    return run_dir


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory: pytest.TempPathFactory, demo_root: Path) -> Path:
    """``<base>/data/results/imagenet/ssl/<model>`` for ssl_barlow_twins (trained), Bayes-H and Bayes-Z (untrained).

    The real run is made with ``<base>`` as working directory, so its results.json holds paths
    relative to ``<base>``.
    """
    base = tmp_path_factory.mktemp("runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # session fixtures run before the per-test single_thread fixture
    ssl_dir = base / "data" / "results" / "imagenet" / "ssl"
    overrides = [
        "dataset=demo",
        f"dataset.data_dir={demo_root}",
        "dataset.input_height=8",
        "dataset.batch_size=16",
        "+model/task/ssl@train=ssl",
        "model/loss=barlow_twins",
        "model.backbone.hidden_dim=32",
        "model.backbone.z_dim=32",
        "train.trainer.max_epochs=1",
        "+train.trainer.limit_train_batches=2",
        "+train.trainer.limit_val_batches=1",
        "+train.trainer.num_sanity_val_steps=0",
        "train.trainer.accelerator=cpu",
        "output_path=data/results/imagenet/ssl/ssl_barlow_twins",
    ]
    with initialize_config_dir(version_base=None, config_dir=str(CONF)):
        cfg = compose(config_name="config", overrides=overrides)
    old = Path.cwd()
    os.chdir(base)
    try:
        run_pipeline(cfg)
    finally:
        os.chdir(old)
    write_fake_run(ssl_dir / "ssl_bayes_h_barlow_beta_0.001", "ssl_bayes_h", "mc_barlow_twins")
    write_fake_run(ssl_dir / "ssl_bayes_z_barlow_beta_0.01", "ssl_bayes_z", "mc_barlow_twins")
    torch.set_num_threads(threads)
    return base


def probe_config(path: Path, dataset: str, dataset_dir: Path, experiment_dir: Path, **extra: object) -> Path:
    """A linear-probing YAML like the shipped ones, pointed at fixture data, tiny by default."""
    cfg = {
        "dataset": dataset,
        "num_classes": {"SUN397": 397, "flowers-102": 102, "imagenet": 1000, "demo": 8}[dataset],
        "task": "multiclass",
        "dataset_dir": str(dataset_dir),
        "experiment_dir": str(experiment_dir),
        "optim_kwargs": {"lr": 1e-2, "weight_decay": 5e-4},
        "max_epochs": 2,
        "scheduler_kwargs": {"milestones": [1], "gamma": 0.1},
        "batch_size": 4,
        "seed": 1537,
        "norm_repr": True,
        "image_size": 8,
    }
    cfg.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(cfg))
    return path
