"""What a downstream run reads: the linear-probing config, the pretraining run and the worker count."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def num_workers_from_env() -> int:
    """DataLoader workers from env ``NUM_WORKERS`` (default 0, as the reference; D-Q14).

    Raises:
        ValueError: ``NUM_WORKERS`` is not an integer.
    """
    value = os.environ.get("NUM_WORKERS", "0")
    try:
        return int(value)
    except ValueError as err:
        raise ValueError(f"NUM_WORKERS={value!r} is not an integer") from err


def load_probe_config(config_path: str | os.PathLike[str]) -> DictConfig:
    """A linear-probing YAML (``conf/linear_probing/*.yaml``), loaded with OmegaConf (so ``1e-2`` is a
    float) and resolved.

    Raises:
        FileNotFoundError: ``config_path`` does not exist.
    """
    path = Path(config_path)
    if not path.is_file():
        raise FileNotFoundError(f"linear-probing config {path} does not exist; see src/experiments/conf/linear_probing")
    cfg = OmegaConf.load(path)
    OmegaConf.resolve(cfg)
    return cfg


def run_model_info(experiment_dir: str | os.PathLike[str]) -> tuple[str, int, Path]:
    """(model name, MC samples, checkpoint) of a pretraining run.

    The name is ``train.name`` of the run's ``hydra_config.yaml``; the MC count is
    ``train.mc_samples`` (1 when absent) and is forced to 1 for names ending in ``ssl_bayes_z``
    (D-Q11). The checkpoint is ``checkpoints/model.ckpt``.

    Raises:
        FileNotFoundError: the run has no ``hydra_config.yaml`` or no ``checkpoints/model.ckpt``.
        ValueError: the config has no ``train.name``.
    """
    run = Path(experiment_dir)
    config_file = run / "hydra_config.yaml"
    ckpt = run / "checkpoints" / "model.ckpt"
    for path in (config_file, ckpt):
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: {run} is not a finished pretraining run")
    cfg = OmegaConf.load(config_file)
    model_name = OmegaConf.select(cfg, "train.name")
    if model_name is None:
        raise ValueError(f"{config_file} has no train.name")
    mc = int(OmegaConf.select(cfg, "train.mc_samples", default=1))
    if str(model_name).endswith("ssl_bayes_z"):
        mc = 1
    return str(model_name), mc, ckpt
