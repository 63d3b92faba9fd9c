"""Pretraining and offline finetuning, driven by the composed Hydra config (spec §13.1–§13.5).

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
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from src.data.datamodule import datamodule_from_config
from src.model.callbacks.fault_guard import NonFiniteLossGuard
from src.model.callbacks.online_finetuner import OnlineFineTuner
from src.model.callbacks.resume_state import ResumeState
from src.task import SSL_MODELS
from src.task.checkpoint import load_ssl_model
from src.task.finetuning import LastLayerFinetuner
from src.utils.checkpoint_io import AtomicCheckpointIO
from src.utils.io import read_json, write_json, write_text
from src.utils.loggers import get_lightning_loggers
from src.utils.plain import to_plain

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
#: written once pretraining (fit + final validation) is complete, so a rerun after a kill
#: during finetuning does not pretrain again
PRETRAIN_DONE_FILE = "checkpoints/pretrain_done.json"
LAST_CKPT = "last.ckpt"


def generate_run_id(length: int = 8) -> str:
    """An 8-character lowercase/digit id, the format of wandb's ``generate_id``."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def relative(path: str | Path) -> str:
    """``path`` relative to the working directory when inside it (results files stay portable)."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def trainer_kwargs(trainer_cfg: DictConfig | dict[str, Any], debug: DictConfig | None) -> dict[str, Any]:
    """The configured Trainer arguments, adapted to the machine and the debug mode.

    fp16 autocast (``16-mixed``) is a GPU feature: without CUDA the run uses ``32-true``.
    So is ``sync_batchnorm``: torch's DDP refuses SyncBatchNorm on CPU modules, so CPU
    processes keep per-process BatchNorm statistics.
    """
    kwargs = to_plain(trainer_cfg)
    precision = str(kwargs.get("precision", "32-true"))
    if precision in ("16-mixed", "16") and not torch.cuda.is_available():
        log.info("trainer.precision=%s needs a GPU; running with 32-true on this machine", precision)
        kwargs["precision"] = "32-true"
    if kwargs.get("sync_batchnorm") and (kwargs.get("accelerator") == "cpu" or not torch.cuda.is_available()):
        log.info("trainer.sync_batchnorm needs GPUs; CPU processes keep their own BatchNorm statistics")
        kwargs["sync_batchnorm"] = False
    if debug:
        kwargs.update(to_plain(debug))
    return kwargs


def build_callbacks(
    callbacks_cfg: DictConfig | None, checkpoint_dir: Path, has_logger: bool, **probe: Any
) -> list[Callback]:
    """Callbacks of a phase in the reference's order; unknown names are an error."""
    callbacks: list[Callback] = []
    for name, args in (to_plain(callbacks_cfg) or {}).items():
        args = dict(args or {})
        if name == "checkpoint":
            # overwrite model.ckpt in place rather than writing model-v1.ckpt
            callbacks.append(ModelCheckpoint(dirpath=checkpoint_dir, enable_version_counter=False, **args))
        elif name == "early_stopping":
            callbacks.append(EarlyStopping(**args))
        elif name == "online_finetuner":
            callbacks.append(OnlineFineTuner(**probe, **args))
        elif name == "learning_rate_monitor":
            if has_logger:  # Lightning refuses the monitor without a logger (Quirk Q18g)
                callbacks.append(LearningRateMonitor(**args))
        else:
            raise ValueError(
                f"callbacks.{name} is not a known callback; use checkpoint, early_stopping, online_finetuner "
                "or learning_rate_monitor"
            )
    return callbacks


def reliability_callbacks(callbacks: list[Callback], checkpoint_dir: Path, check_every_n_steps: int) -> list[Callback]:
    """The callbacks every training phase gets on top of the configured ones.

    ``ResumeState`` (RNG streams, stop flag) and ``NonFiniteLossGuard`` always; a
    last-checkpoint writer when no configured checkpoint keeps ``last.ckpt``, so that every
    phase can resume.
    """
    extra: list[Callback] = [ResumeState(), NonFiniteLossGuard(check_every_n_steps)]
    if not any(isinstance(c, ModelCheckpoint) and c.save_last for c in callbacks):
        extra.append(ModelCheckpoint(dirpath=checkpoint_dir, save_top_k=0, save_last=True))
    return callbacks + extra


def resume_from(checkpoint_dir: Path) -> str | None:
    """``last.ckpt`` of an interrupted phase, if there is one (the phase then continues from it)."""
    last = checkpoint_dir / LAST_CKPT
    if last.is_file():
        log.info("resuming from %s", last)
        return str(last)
    return None


def fit_resuming(trainer: pl.Trainer, model: pl.LightningModule, datamodule: Any, ckpt_path: str | None) -> None:
    """``trainer.fit``, resuming from ``ckpt_path`` (weights-only loading) when given."""
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)


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


def pretrain(cfg: DictConfig, output_path: Path) -> dict[str, Any]:
    """Fit the SSL model, then validate its final weights (spec §13.2)."""
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    datamodule.check_batches()
    name, kwargs = ssl_model_kwargs(cfg, datamodule.train_iters_per_epoch)
    model = SSL_MODELS[name](**kwargs, seed=cfg.seed)

    loggers = get_lightning_loggers(cfg.logging, output_path)
    ckpt_dir = output_path / "checkpoints"
    callbacks = build_callbacks(
        cfg.train.get("callbacks"),
        ckpt_dir,
        bool(loggers),
        encoder_output_dim=int(cfg.train.kwargs.latent_dim),
        num_classes=int(cfg.dataset.num_classes),
    )
    kwargs = trainer_kwargs(cfg.train.trainer, cfg.get("debug"))
    trainer = pl.Trainer(
        default_root_dir=output_path,
        callbacks=reliability_callbacks(callbacks, ckpt_dir, int(kwargs.get("log_every_n_steps", 50))),
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        **kwargs,
    )
    fit_resuming(trainer, model, datamodule, resume_from(ckpt_dir))
    metrics = trainer.validate(model, datamodule=datamodule)
    if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        # The DDP pretraining is over and the other ranks stop here (see _run_pipeline); a group
        # left behind would make rank 0's later single-device trainers wait for them forever.
        torch.distributed.destroy_process_group()
    ckpt = next((c for c in callbacks if isinstance(c, ModelCheckpoint)), None)
    return {
        "metrics": _merge(metrics),
        "ckpt_path": ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None,
        "train_iters_per_epoch": datamodule.train_iters_per_epoch,
    }


def finetune(cfg: DictConfig, output_path: Path, model_ckpt_path: str | Path) -> dict[str, Any]:
    """Train the last layer on the finetune view, then validate and test the final weights (§13.3)."""
    root = output_path / "finetune"
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    datamodule.check_batches()
    pl_module = load_ssl_model(model_ckpt_path, cfg.train.name)
    pl_module.train()  # the reference's loaded module is never put in eval mode (Quirk Q15b)
    kwargs = to_plain(cfg.finetune.kwargs)
    kwargs.pop("_target_", None)
    model = LastLayerFinetuner(pl_module=pl_module, **kwargs)

    loggers = get_lightning_loggers(cfg.logging, root)
    ckpt_dir = root / "checkpoints"
    callbacks = build_callbacks(cfg.finetune.get("callbacks"), ckpt_dir, bool(loggers))
    kwargs = trainer_kwargs(cfg.finetune.trainer, cfg.get("debug"))
    trainer = pl.Trainer(
        default_root_dir=root,
        callbacks=reliability_callbacks(callbacks, ckpt_dir, int(kwargs.get("log_every_n_steps", 50))),
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        **kwargs,
    )
    fit_resuming(trainer, model, datamodule, resume_from(ckpt_dir))
    trainer.validate(model, datamodule=datamodule)
    metrics = trainer.test(model, datamodule=datamodule)
    ckpt = next((c for c in callbacks if isinstance(c, ModelCheckpoint)), None)
    return {
        "metrics": _merge(metrics),
        "ckpt_path": ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None,
    }


def _merge(results: list[dict[str, Any]]) -> dict[str, float]:
    merged: dict[str, float] = {}
    for r in results:
        merged.update({k: float(v) for k, v in r.items()})
    return merged


def save_hydra_config(cfg: DictConfig, output_path: Path) -> None:
    """The composed config, interpolations unresolved; ``output_path`` as a plain string (Q36)."""
    cfg = cfg.copy()
    OmegaConf.set_struct(cfg, False)
    cfg.output_path = str(output_path)
    write_text(output_path / "hydra_config.yaml", OmegaConf.to_yaml(cfg))


#: exit status of a run stopped by SIGTERM (128 + 15, what a shell reports for the signal)
SIGTERM_EXIT = 143


def run_pipeline(cfg: DictConfig) -> dict[str, Any] | None:
    """Seed, pretrain, optionally finetune, and write ``results.json`` (spec §13.1).

    A run stopped by SIGTERM exits with status 143 (Lightning's own exception is a
    ``SystemExit`` with status 0, which DVC would take for success); running the same
    command again resumes from the phase's ``last.ckpt``.
    """
    with sigterm_exits_nonzero():
        return _run_pipeline(cfg)


@contextlib.contextmanager
def sigterm_exits_nonzero() -> Iterator[None]:
    """Turn Lightning's ``SIGTERMException`` (a ``SystemExit`` with status 0) into status 143."""
    try:
        yield
    except SIGTERMException as err:
        log.error("stopped by SIGTERM; run the same command again to resume from the last checkpoint")
        raise SystemExit(SIGTERM_EXIT) from err


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
    log.info("run %s, output %s\n%s", run_id, output_path, OmegaConf.to_yaml(cfg))
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
