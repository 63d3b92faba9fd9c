"""Pretraining and offline finetuning, driven by the composed Hydra config.

``run_pipeline(cfg)`` writes, under ``cfg.output_path``:

    hydra_config.yaml            the composed config (interpolations unresolved)
    checkpoints/model.ckpt       best pretraining checkpoint (max val_online_acc)
    checkpoints/last.ckpt
    csv/lightning_logs/version_0/metrics.csv
    finetune/checkpoints/{epoch=E-step=S,last}.ckpt     when `finetune` is configured
    results.json                 metrics, metadata and checkpoint paths (relative to the
                                 working directory), written last and atomically

    checkpoints/pretrain_done.json   pretraining metrics, once pretraining is complete

A run whose ``results.json`` exists is finished: running it again does nothing. A run that
was interrupted (killed, SIGTERM, a crash) continues, when started again with the same
command, from the last checkpoint of the phase it was in: pretraining resumes from
``checkpoints/last.ckpt`` unless ``pretrain_done.json`` says it is complete, finetuning from
``finetune/checkpoints/last.ckpt``. Checkpoints carry the RNG streams (``ResumeState``), so
on CPU a resumed run ends with the same weights and metrics as an uninterrupted one.

A non-finite training loss stops the run (``NonFiniteLossError``) unless the config sets
``continue_on_non_finite_loss: true``, which keeps training as the reference did.
"""

from __future__ import annotations

import logging
import secrets
import string
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from src.data.datamodule import datamodule_from_config
from src.task import SSL_MODELS
from src.task.checkpoint import load_ssl_model
from src.task.finetuning import LastLayerFinetuner
from src.train.loggers import wandb_session
from src.train.summary import config_summary
from src.train.trainer import build_trainer, merge_metrics, relative, sigterm_exits_nonzero
from src.utils.io import read_json, write_json, write_text
from src.utils.plain import to_plain

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
#: the composed config of the run (the only place it is written in full)
HYDRA_CONFIG_FILE = "hydra_config.yaml"
#: written once pretraining (fit + final validation) is complete, so a rerun after a kill
#: during finetuning does not pretrain again
PRETRAIN_DONE_FILE = "checkpoints/pretrain_done.json"


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    """The datamodule of ``cfg.dataset``, through the datamodule registry (no import by name)."""
    return datamodule_from_config(to_plain(cfg.dataset))


def ssl_model_kwargs(cfg: DictConfig, train_iters_per_epoch: int) -> tuple[str, dict[str, Any]]:
    """The model name and its plain constructor arguments from ``train.kwargs``."""
    kwargs = to_plain(cfg.train.kwargs)
    if "_target_" not in kwargs:
        raise ValueError(f"train.kwargs has no `_target_` naming an SSL model (one of {SSL_MODELS.targets()})")
    name = SSL_MODELS.name_of_target(kwargs.pop("_target_"))
    kwargs["train_iters_per_epoch"] = train_iters_per_epoch
    return name, kwargs


def stop_on_non_finite_loss(cfg: DictConfig) -> bool:
    """False when the config asks to keep training through a NaN/inf loss (``continue_on_non_finite_loss``)."""
    return not bool(cfg.get("continue_on_non_finite_loss", False))


def generate_run_id(length: int = 8) -> str:
    """An 8-character lowercase/digit id, the format of wandb's ``generate_id``."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def pretrain(cfg: DictConfig, output_path: Path) -> dict[str, Any]:
    """Fit the SSL model, then validate its final weights (which, not the best checkpoint's, are reported: T-Q25)."""
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    datamodule.check_batches()
    name, kwargs = ssl_model_kwargs(cfg, datamodule.train_iters_per_epoch)
    model = SSL_MODELS[name](**kwargs, seed=cfg.seed)

    phase = build_trainer(
        cfg.train.trainer,
        output_path,
        callbacks_cfg=cfg.train.get("callbacks"),
        logging_cfg=cfg.logging,
        debug=cfg.get("debug"),
        stop_on_non_finite_loss=stop_on_non_finite_loss(cfg),
        phase="pretrain",
        encoder_output_dim=int(cfg.train.kwargs.latent_dim),
        num_classes=int(cfg.dataset.num_classes),
    )
    trainer = phase.trainer
    phase.fit(model, datamodule)
    metrics = trainer.validate(model, datamodule=datamodule)
    if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        # The DDP pretraining is over and the other ranks stop here (see _run_pipeline); a group
        # left behind would make rank 0's later single-device trainers wait for them forever.
        torch.distributed.destroy_process_group()
    return {
        "metrics": merge_metrics(metrics),
        "ckpt_path": phase.best_checkpoint(),
        "train_iters_per_epoch": datamodule.train_iters_per_epoch,
    }


def finetune(cfg: DictConfig, output_path: Path, model_ckpt_path: str | Path) -> dict[str, Any]:
    """Train the last layer on the finetune view, then validate and test the final weights (T-Q25)."""
    root = output_path / "finetune"
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    datamodule.check_batches()
    pl_module = load_ssl_model(model_ckpt_path, cfg.train.name)
    pl_module.train()  # the reference's loaded module is never put in eval mode (T-Q15b)
    kwargs = to_plain(cfg.finetune.kwargs)
    kwargs.pop("_target_", None)
    model = LastLayerFinetuner(pl_module=pl_module, **kwargs)

    phase = build_trainer(
        cfg.finetune.trainer,
        root,
        callbacks_cfg=cfg.finetune.get("callbacks"),
        logging_cfg=cfg.logging,
        debug=cfg.get("debug"),
        stop_on_non_finite_loss=stop_on_non_finite_loss(cfg),
        phase="finetune",
    )
    phase.fit(model, datamodule)
    phase.trainer.validate(model, datamodule=datamodule)
    metrics = phase.trainer.test(model, datamodule=datamodule)
    return {"metrics": merge_metrics(metrics), "ckpt_path": phase.best_checkpoint()}


def save_hydra_config(cfg: DictConfig, output_path: Path) -> None:
    """The composed config, interpolations unresolved; ``output_path`` as a plain string (D-Q36)."""
    cfg = cfg.copy()
    OmegaConf.set_struct(cfg, False)
    cfg.output_path = str(output_path)
    write_text(output_path / HYDRA_CONFIG_FILE, OmegaConf.to_yaml(cfg))


def run_pipeline(cfg: DictConfig) -> dict[str, Any] | None:
    """Seed, pretrain, optionally finetune, and write ``results.json``.

    A run stopped by SIGTERM exits with status 143 (Lightning's own exception is a
    ``SystemExit`` with status 0, which DVC would take for success); running the same
    command again resumes from the phase's ``last.ckpt``. With wandb on, the wandb run is
    closed however the stage ends.
    """
    with sigterm_exits_nonzero(), wandb_session(cfg.get("logging")):
        return _run_pipeline(cfg)


def _run_pipeline(cfg: DictConfig) -> dict[str, Any] | None:
    if "train" not in cfg:
        raise ValueError(
            "no task configured: add +model/task/ssl@train=<ssl|ssl_bayes_h|ssl_bayes_z> "
            "(and +model/task@finetune=finetune for the offline finetune stage)"
        )
    if "finetune" in cfg and "kwargs" not in cfg.finetune:
        raise ValueError(
            "the config has a `finetune` node but no finetune task: add +model/task@finetune=finetune "
            "(overrides such as finetune.trainer.* need it)"
        )
    output_path = Path(cfg.output_path)
    results_path = output_path / RESULTS_FILE
    if results_path.is_file():
        log.info("%s exists: this run is finished, nothing to do", results_path)
        return None
    pl.seed_everything(int(cfg.seed), workers=False)
    # The reference sets this at the start of pretrain() and it stays in force for the
    # finetune; setting it here keeps it in force when a resumed run skips pretraining.
    torch.set_float32_matmul_precision("medium")
    run_id = generate_run_id()
    # the full config goes to hydra_config.yaml only; the screen gets a few lines
    log.info("run %s\n%s", run_id, config_summary(cfg, str(output_path / HYDRA_CONFIG_FILE)))
    output_path.mkdir(parents=True, exist_ok=True)
    if rank_zero_only.rank == 0:  # a DDP launch re-runs this script for every other rank
        save_hydra_config(cfg, output_path)

    done = output_path / PRETRAIN_DONE_FILE
    if done.is_file():
        log.info("%s exists: pretraining is complete, going on with what follows it", done)
        train_out = read_json(done)
    else:
        train_out = pretrain(cfg, output_path)
        if rank_zero_only.rank != 0:
            # another rank of a DDP pretraining: its part is done; rank 0 writes the outputs
            # and runs the (single-device) finetuning
            return None
        if train_out["ckpt_path"]:
            train_out["ckpt_path"] = relative(train_out["ckpt_path"])
        write_json(done, train_out)
    metadata = {"dataset": cfg.dataset.name, **to_plain(cfg.train.kwargs)}
    metadata["train_iters_per_epoch"] = train_out["train_iters_per_epoch"]
    metadata["run_id"] = run_id
    results: dict[str, Any] = {
        "metrics": train_out["metrics"],
        "model_ckpt_path": relative(train_out["ckpt_path"]) if train_out["ckpt_path"] else None,
        "metadata": metadata,
    }
    if "finetune" in cfg:
        ckpt = train_out["ckpt_path"] or output_path / "checkpoints" / "last.ckpt"
        finetune_out = finetune(cfg, output_path, ckpt)
        results["offline_metrics"] = finetune_out["metrics"]
        results["finetuner_ckpt_path"] = relative(finetune_out["ckpt_path"]) if finetune_out["ckpt_path"] else None
    write_json(results_path, results)
    return results
