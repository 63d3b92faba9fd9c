"""Pretraining and offline finetuning, driven by the composed Hydra config.

``run_pipeline(cfg)`` writes, under ``cfg.output_path``:

    hydra_config.yaml            the composed config (interpolations unresolved)
    checkpoints/model.ckpt       best pretraining checkpoint (max val_online_acc): weights and
                                 hyper-parameters only
    checkpoints/last.ckpt        complete (optimizer, schedulers, callbacks, RNG): what a resume reads
    csv/lightning_logs/version_0/metrics.csv
    finetune/checkpoints/{epoch=E-step=S,last}.ckpt     when `finetune` is configured
    results.json                 metrics, metadata and checkpoint paths (relative to the
                                 working directory), written last and atomically

    checkpoints/pretrain_done.json   pretraining metrics, once pretraining is complete

    run_config.json              the resolved config by part (pretrain, finetune), with hashes
                                 (src/train/run_config.py)

Before it writes anything, a run compares its config with the folder's ``run_config.json``
(:func:`check_pipeline_folder`): a different config stops it with the differing keys and the two
ways on (another ``output_path``, or ``overwrite=true``); a finished run whose checkpoints are
missing or cut short stops it with the files to delete (``overwrite=true`` deletes them). With
the same config, a run whose ``results.json`` exists is finished: running it again does nothing,
except that a finished run without a finetune gets one when ``+model/task@finetune=finetune`` is
added (its pretraining is kept). A run that
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
from src.train.run_config import (
    RUN_CONFIG_FILE,
    RunConfig,
    checkpoint_is_intact,
    damaged_error,
    differences,
    folder_entries,
    hydra_records,
    mismatch_error,
    remove,
)
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
FINETUNE_DIR = "finetune"


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


def pretrain(cfg: DictConfig, output_path: Path, run_id: str | None = None) -> dict[str, Any]:
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
        encoder_output_dim=int(model.encoder_out_dim),  # = latent_dim of the ResNet configs; a timm model's width
        num_classes=int(cfg.dataset.num_classes),
        group=run_id,
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


def finetune(
    cfg: DictConfig, output_path: Path, model_ckpt_path: str | Path, run_id: str | None = None
) -> dict[str, Any]:
    """Train the last layer on the finetune view, then validate and test the final weights (T-Q25)."""
    root = output_path / "finetune"
    datamodule = build_datamodule(cfg)
    # the finetuner reads only x3: x1 and x2 are not built where dataset.skip_unread_views allows it
    datamodule.read_views(LastLayerFinetuner.views_read)
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
        group=run_id,
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


def _recorded_checkpoint(output_path: Path, recorded: str | None, phase_dir: str = "checkpoints") -> Path | None:
    """A checkpoint a results file names, looked up in the run folder (the recorded path is relative to the
    working directory of that run, which need not be this one)."""
    return output_path / phase_dir / Path(recorded).name if recorded else None


def damaged_pipeline_outputs(output_path: Path) -> tuple[list[Path], str | None]:
    """The missing or cut-short checkpoints of a finished (or finished-pretraining) run, and what to redo.

    Returns ``(bad files, scope)``: scope ``"all"`` when the pretraining's best checkpoint is bad (the
    pretraining and what follows are redone), ``"finetune"`` when only the finetune's checkpoints or
    ``results.json`` are (the finetune is redone, the pretraining kept), None when nothing is bad.
    """
    results_path, done = output_path / RESULTS_FILE, output_path / PRETRAIN_DONE_FILE
    bad: list[Path] = []
    results: dict[str, Any] | None = None
    if results_path.is_file():
        try:
            results = read_json(results_path)
        except ValueError:
            bad.append(results_path)
    pretrain_ckpt: str | None = None
    if done.is_file():
        try:
            pretrain_ckpt = read_json(done).get("ckpt_path")
        except (ValueError, AttributeError):
            return [done], "all"
    elif isinstance(results, dict):
        pretrain_ckpt = results.get("model_ckpt_path")
    model_ckpt = _recorded_checkpoint(output_path, pretrain_ckpt)
    if model_ckpt is not None and not checkpoint_is_intact(model_ckpt):
        return [model_ckpt, *bad], "all"
    if isinstance(results, dict) and "offline_metrics" in results:
        ft_dir = f"{FINETUNE_DIR}/checkpoints"
        for ckpt in (
            output_path / ft_dir / "last.ckpt",
            _recorded_checkpoint(output_path, results.get("finetuner_ckpt_path"), ft_dir),
        ):
            if ckpt is not None and not checkpoint_is_intact(ckpt) and ckpt not in bad:
                bad.append(ckpt)
    if not bad:
        return [], None
    return bad, "finetune" if done.is_file() else "all"


def check_pipeline_folder(cfg: DictConfig, output_path: Path) -> tuple[RunConfig, RunConfig | None]:
    """Compare the run's config with the folder's record before anything is written; returns both records.

    With ``overwrite: true`` the stale part of the folder is deleted here (the whole run, or only the
    finetune when only ``finetune.*`` changed) and the stored record returned is what is left of it.

    Raises:
        RunConfigMismatch: the folder holds a run of another config and ``overwrite`` is false.
        DamagedRunError: a finished run's checkpoint is missing or cut short and ``overwrite`` is false.
    """
    record = RunConfig.of_pipeline(cfg)
    overwrite = bool(cfg.get("overwrite", False))
    entries = folder_entries(output_path, keep=hydra_records(output_path))
    if not entries:
        return record, None
    stored = RunConfig.read(output_path)
    if stored is None:
        if overwrite:
            log.warning("overwrite=true: %s has no record of its config; deleting its contents", output_path)
            remove(entries)
            return record, None
        log.warning(
            "%s has no %s (written by an earlier version of the code): its config could not be checked against "
            "this one, so the folder is taken as this run (finished work is skipped). Add overwrite=true to redo it.",
            output_path,
            RUN_CONFIG_FILE,
        )
    else:
        pre = differences(stored.parts.get("pretrain", {}), record.parts["pretrain"])
        if pre:
            if not overwrite:
                raise mismatch_error(
                    output_path, pre, "the folder's contents are deleted and the run starts afresh", "pretraining"
                )
            log.warning("overwrite=true: %s holds a run of another config; deleting its contents", output_path)
            remove(entries)
            return record, None
        if "finetune" in record.parts and "finetune" in stored.parts:
            ft = differences(stored.parts["finetune"], record.parts["finetune"])
            if ft:
                stale = [output_path / FINETUNE_DIR, output_path / RESULTS_FILE]
                if not overwrite:
                    raise mismatch_error(
                        output_path,
                        ft,
                        f"it deletes {stale[0]} and {stale[1]} and finetunes again; the pretraining is kept",
                        "finetune",
                    )
                log.warning("overwrite=true: the finetune of %s had another config; deleting it", output_path)
                remove(stale)
                stored = RunConfig({k: v for k, v in stored.parts.items() if k != "finetune"})
    bad, scope = damaged_pipeline_outputs(output_path)
    if scope is not None:
        if scope == "all":
            stale, redo = folder_entries(output_path, keep=hydra_records(output_path)), "the run"
        else:
            stale, redo = [output_path / FINETUNE_DIR, output_path / RESULTS_FILE], "the finetune"
        stale = [p for p in stale if p.exists()]
        if not overwrite:
            raise damaged_error(output_path, bad, stale if scope != "all" else [output_path], redo)
        log.warning("overwrite=true: %s is missing or cut short; deleting %s", ", ".join(map(str, bad)), stale)
        remove(stale)
        if scope == "all":
            return record, None
    return record, stored


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
    # another rank of a DDP launch (the script run again) finds rank 0's record: it only checks
    record, stored = check_pipeline_folder(cfg, output_path)
    previous: dict[str, Any] | None = None
    if results_path.is_file():
        previous = read_json(results_path)
        adds_finetune = "finetune" in cfg and "offline_metrics" not in previous and stored is not None
        if not adds_finetune:
            log.info("%s exists: this run is finished, nothing to do", results_path)
            return None
        log.info("%s has no finetune: finetuning its pretrained model (the pretraining is kept)", output_path)
    pl.seed_everything(int(cfg.seed), workers=False)
    # The reference sets this at the start of pretrain() and it stays in force for the
    # finetune; setting it here keeps it in force when a resumed run skips pretraining.
    torch.set_float32_matmul_precision("medium")
    done = output_path / PRETRAIN_DONE_FILE
    train_out = read_json(done) if done.is_file() else None
    # a resumed pipeline, or a finetune added to a finished run, keeps the run's id (the wandb group of
    # its phases; semi-supervised runs refer to it)
    run_id = str(
        (previous or {}).get("metadata", {}).get("run_id") or (train_out or {}).get("run_id") or generate_run_id()
    )
    # the full config goes to hydra_config.yaml only; the screen gets a few lines
    log.info("run %s\n%s", run_id, config_summary(cfg, str(output_path / HYDRA_CONFIG_FILE)))
    output_path.mkdir(parents=True, exist_ok=True)
    if rank_zero_only.rank == 0:  # a DDP launch re-runs this script for every other rank
        save_hydra_config(cfg, output_path)
        record.merged(stored).write(output_path)

    if train_out is not None:
        log.info("%s exists: pretraining is complete, going on with what follows it", done)
    else:
        with wandb_session(cfg.get("logging")):  # the pretraining is one wandb run (job_type pretrain)
            train_out = pretrain(cfg, output_path, run_id)
        if rank_zero_only.rank != 0:
            # another rank of a DDP pretraining: its part is done; rank 0 writes the outputs
            # and runs the (single-device) finetuning
            return None
        if train_out["ckpt_path"]:
            train_out["ckpt_path"] = relative(train_out["ckpt_path"])
        train_out["run_id"] = run_id
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
        with wandb_session(cfg.get("logging")):  # a second wandb run of the group (job_type finetune)
            finetune_out = finetune(cfg, output_path, ckpt, run_id)
        results["offline_metrics"] = finetune_out["metrics"]
        results["finetuner_ckpt_path"] = relative(finetune_out["ckpt_path"]) if finetune_out["ckpt_path"] else None
    write_json(results_path, results)
    return results
