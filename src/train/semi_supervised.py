"""Semi-supervised finetuning on ImageNet 1 % / 10 %.

``run_semi_supervised(cfg)`` (config ``semi_supervised``) reads ``<run_path>/results.json`` of a
pretraining run, finetunes its best checkpoint end to end with a new linear head
(``src.task.semi_supervised.SemiSupervised``) and writes, under ``cfg.output_path``:

    hydra_config.yaml            the composed config (interpolations unresolved)
    checkpoints/model.ckpt       best val_accuracy (ImageNet val = test set, D-Q3, T-Q32); weights
                                 and hyper-parameters only
    checkpoints/last.ckpt        complete: what a resume reads
    csv/lightning_logs/version_0/{metrics.csv,hparams.yaml}
    results.json                 test metrics of the *final* in-memory weights (after early
                                 stopping: 5 epochs past the best, D-Q3, T-Q25), the best checkpoint
                                 path relative to the working directory, and metadata; written
                                 last and atomically

    run_config.json              the resolved config (src/train/run_config.py)

Before it writes anything, a run compares its config with the folder's ``run_config.json``: a
different config stops it with the differing keys and the two ways on (another ``output_path``, or
``overwrite=true``); a finished run whose best checkpoint is missing or cut short stops it with the
files to delete. With the same config, a run whose ``results.json`` exists is finished: running it
again does nothing. A non-finite
training loss stops the run unless the config sets ``continue_on_non_finite_loss: true``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.utilities import rank_zero_only

from src.task.checkpoint import load_ssl_model
from src.task.semi_supervised import SemiSupervised
from src.train.loggers import wandb_session
from src.train.pipeline import (
    HYDRA_CONFIG_FILE,
    RESULTS_FILE,
    build_datamodule,
    save_hydra_config,
    stop_on_non_finite_loss,
)
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
from src.train.trainer import build_trainer, merge_metrics, relative, sigterm_exits_nonzero
from src.utils.io import read_json, write_json
from src.utils.plain import to_plain

log = logging.getLogger(__name__)

_TARGET = f"{SemiSupervised.__module__}.{SemiSupervised.__name__}"


def pretrained_checkpoint(run: dict[str, Any], run_path: Path) -> Path:
    """The best pretraining checkpoint named by a run's ``results.json``.

    The reference stored an absolute path, which breaks when the repository moves; when the
    recorded path does not exist, ``<run_path>/checkpoints/model.ckpt`` is used instead (D-Q27).

    Raises:
        FileNotFoundError: neither path exists.
    """
    recorded = run.get("model_ckpt_path")
    fallback = run_path / "checkpoints" / "model.ckpt"
    if recorded and Path(recorded).is_file():
        return Path(recorded)
    if fallback.is_file():
        if recorded:
            log.warning("model_ckpt_path %s of %s does not exist; using %s", recorded, run_path, fallback)
        return fallback
    raise FileNotFoundError(
        f"no pretraining checkpoint for {run_path}: neither model_ckpt_path={recorded!r} from its "
        f"{RESULTS_FILE} nor {fallback} exists (did the pretraining stage finish?)"
    )


def train(cfg: DictConfig, run: dict[str, Any], run_path: Path, output_path: Path) -> dict[str, Any]:
    """Finetune and test; returns ``{"metrics": test dict, "ckpt_path": best checkpoint or None}``."""
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")

    metadata = run.get("metadata") or {}
    model_name = metadata.get("model_name")
    if model_name is None:
        raise ValueError(f"{run_path / RESULTS_FILE} has no metadata.model_name; it is not a pretraining run")
    pl_module = load_ssl_model(pretrained_checkpoint(run, run_path), model_name)

    kwargs = to_plain(cfg.train.kwargs)
    target = kwargs.pop("_target_", _TARGET)
    if target != _TARGET:
        raise ValueError(f"train.kwargs._target_={target!r}; the semi-supervised stage trains {_TARGET}")
    extra: dict[str, Any] = {
        "run_name": run_path.name,
        "model_name": model_name,
        "cl_loss_name": metadata.get("cl_loss_name"),
        "original_run_id": metadata.get("run_id"),
    }
    if "beta_scale" in metadata:
        extra["beta_scale"] = metadata["beta_scale"]
    model = SemiSupervised(pl_module=pl_module, **kwargs, **extra)

    phase = build_trainer(
        cfg.train.trainer,
        output_path,
        callbacks_cfg=cfg.train.get("callbacks"),
        logging_cfg=cfg.logging,
        debug=cfg.get("debug"),
        stop_on_non_finite_loss=stop_on_non_finite_loss(cfg),
        phase="semi_supervised",
    )
    # an interrupted run continues from its last.ckpt (see src/train/pipeline.py)
    phase.fit(model, datamodule)
    # no checkpoint: the final in-memory weights are tested, as in the reference (D-Q3)
    metrics = phase.trainer.test(model, datamodule=datamodule)
    return {"metrics": merge_metrics(metrics), "ckpt_path": phase.best_checkpoint()}


def check_semi_supervised_folder(cfg: DictConfig, output_path: Path) -> RunConfig:
    """Compare the run's config with the folder's record before anything is written (see
    ``src/train/run_config.py``); with ``overwrite: true`` a stale or damaged folder is emptied here.

    Raises:
        RunConfigMismatch: the folder holds a run of another config and ``overwrite`` is false.
        DamagedRunError: the finished run's best checkpoint is missing or cut short and ``overwrite`` is false.
    """
    record = RunConfig.of_run(cfg)
    overwrite = bool(cfg.get("overwrite", False))
    entries = folder_entries(output_path, keep=hydra_records(output_path))
    if not entries:
        return record
    stored = RunConfig.read(output_path)
    if stored is None and not overwrite:
        log.warning(
            "%s has no %s (written by an earlier version of the code): its config could not be checked against "
            "this one, so the folder is taken as this run (finished work is skipped). Add overwrite=true to redo it.",
            output_path,
            RUN_CONFIG_FILE,
        )
    elif stored is not None:
        diff = differences(stored.parts.get("run", {}), record.parts["run"])
        if diff and not overwrite:
            raise mismatch_error(
                output_path, diff, "the folder's contents are deleted and the run starts afresh", "run"
            )
        if not diff:
            stored = record
    if stored is not record and overwrite:
        log.warning("overwrite=true: %s holds another (or an unrecorded) run; deleting its contents", output_path)
        remove(entries)
        return record
    results_path = output_path / RESULTS_FILE
    if results_path.is_file():
        try:
            recorded = read_json(results_path).get("model_ckpt_path")
            bad = [] if not recorded else [output_path / "checkpoints" / Path(recorded).name]
            bad = [p for p in bad if not checkpoint_is_intact(p)]
        except (ValueError, AttributeError):
            bad = [results_path]
        if bad:
            if not overwrite:
                raise damaged_error(output_path, bad, [output_path], "the run")
            log.warning("overwrite=true: %s is missing or cut short; deleting %s", bad[0], output_path)
            remove(entries)
    return record


def run_semi_supervised(cfg: DictConfig) -> dict[str, Any] | None:
    """Seed, finetune, test and write ``results.json``; None when the run was already finished.

    An interrupted run continues from ``checkpoints/last.ckpt`` when started again; SIGTERM
    exits with status 143. With wandb on, the wandb run is closed however the stage ends.
    """
    with sigterm_exits_nonzero(), wandb_session(cfg.get("logging")):
        return _run_semi_supervised(cfg)


def _run_semi_supervised(cfg: DictConfig) -> dict[str, Any] | None:
    if cfg.get("run_path") is None or cfg.get("output_path") is None:
        raise ValueError("set run_path=<pretraining run dir> and output_path=<output dir>")
    run_path, output_path = Path(cfg.run_path), Path(cfg.output_path)
    results_path = output_path / RESULTS_FILE
    record = check_semi_supervised_folder(cfg, output_path)
    if results_path.is_file():
        log.info("%s exists: this run is finished, nothing to do", results_path)
        return None
    pl.seed_everything(int(cfg.seed), workers=False)
    output_path.mkdir(parents=True, exist_ok=True)
    record.write(output_path)
    # the full config goes to hydra_config.yaml only; the screen gets a few lines
    if rank_zero_only.rank == 0:
        save_hydra_config(cfg, output_path)
    log.info(
        "semi-supervised finetuning of %s: data %s (batch %s), %s epochs, seed %s\noutput %s (full config: %s)",
        run_path,
        cfg.dataset.name,
        cfg.dataset.batch_size,
        cfg.train.trainer.max_epochs,
        cfg.seed,
        output_path,
        output_path / HYDRA_CONFIG_FILE,
    )
    run = read_json(run_path / RESULTS_FILE)

    out = train(cfg, run, run_path, output_path)
    results = {
        "metrics": out["metrics"],
        "model_ckpt_path": relative(out["ckpt_path"]) if out["ckpt_path"] else None,
        "metadata": {"dataset": cfg.dataset.name, **to_plain(cfg.train.kwargs)},
    }
    write_json(results_path, results)
    return results
