"""Train and test a linear probe on a frozen backbone (``evaluate_linear_probing.py``).

The DVC stage command, on stored embeddings and in test mode:

    python src/experiments/scripts/evaluate_linear_probing.py \\
        --backbone-experiment-dir data/results/imagenet/ssl/<model> \\
        --config-path src/experiments/conf/linear_probing/<dataset>.yaml \\
        --pre-embedded-root-dir data/embeddings/<dataset>/<model> --test-mode

Outputs, in ``<config.experiment_dir>/<model>/<dataset>/lightning_logs/version_0/``: the
TensorBoard event file, ``hparams.yaml``, ``checkpoints/epoch=E-step=S.ckpt`` and
``metrics.json`` = ``{"test/accuracy": …, "test/ece": …}`` (macro accuracy, D-Q8), written last and
atomically. A probe whose ``metrics.json`` exists is finished and is not trained again; the
folders of an interrupted run (no ``metrics.json``) are removed first, so the finished run is
always ``version_0`` and the report never sees duplicates (D-Q18).

Recipe: ``seed_everything(config.seed)``; AdamW(``optim_kwargs``); MultiStepLR(milestones, gamma)
per epoch; ``max_epochs``; batch ``config.batch_size``; ``norm_repr``; TF32 matmuls allowed
(``high``), fp32 weights (D-Q35). Splits: without a test split the official val split is the test
set (Flowers-102, ImageNet; D-Q5). ``test_mode``: no validation, the last epoch's checkpoint is
tested (D-Q16). Without it, val is a stratified 20 % of train and the best ``val/accuracy``
checkpoint is tested.

Without ``pre_embedded_root_dir`` the probe runs on images through the frozen encoder. The
reference's image path failed for datasets without a test or val split (D-Q32); here it follows
the same split protocol as the embedding path, so it works for every dataset.

``probe_runs`` runs the whole chain (pre-embedding, then the probe in test mode) for every
finished pretraining run of a folder: the demo's ``demo_linear_probing.py``.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

from src.data.datamodule.transfer_learning import (
    PrecomputedRepresentationsDatamodule,
    get_transfer_learning_datamodule,
)
from src.downstream.embed import pre_embed
from src.downstream.inputs import load_probe_config, num_workers_from_env, run_model_info
from src.task.evaluation import (
    PRETRAINED_BASELINES,
    LinearProbingClassifier,
    PreEmbeddedLinearProbingClassifier,
)
from src.train.trainer import build_trainer
from src.utils.io import read_json, write_json

log = logging.getLogger("evaluate_linear_probing")

METRICS_FILE = "metrics.json"
LOGS_DIR = "lightning_logs"


def finished_metrics(experiment_dir: Path) -> Path | None:
    """The ``metrics.json`` of a finished probe under ``experiment_dir``, if any."""
    found = sorted((experiment_dir / LOGS_DIR).glob(f"version_*/{METRICS_FILE}"))
    return found[0] if found else None


def remove_unfinished(experiment_dir: Path) -> None:
    """Delete ``version_*`` folders without ``metrics.json`` (left by an interrupted probe)."""
    for version in sorted((experiment_dir / LOGS_DIR).glob("version_*")):
        if version.is_dir() and not (version / METRICS_FILE).is_file():
            log.warning("removing %s, left by an interrupted run", version)
            shutil.rmtree(version)


def probe_trainer(experiment_dir: Path, max_epochs: int, test_mode: bool, monitor: str) -> pl.Trainer:
    """The probe's Trainer (``build_trainer``): TensorBoard logs in ``<experiment_dir>/lightning_logs``.

    Callbacks: a per-step learning-rate monitor, and outside ``test_mode`` a checkpoint of the best
    ``monitor``. In ``test_mode`` validation is off and Lightning's own checkpoint callback keeps
    the last epoch, which ``ckpt_path="best"`` then tests (D-Q16). No reliability callbacks: a probe
    is short and its interrupted folders are removed, not resumed.
    """
    callbacks: list[Callback] = [LearningRateMonitor(logging_interval="step")]
    if not test_mode:
        callbacks.append(ModelCheckpoint(monitor=monitor, mode="max"))
    trainer_cfg = {
        "max_epochs": int(max_epochs),
        "accelerator": "cuda" if torch.cuda.is_available() else "cpu",
        "devices": 1,
        "limit_val_batches": 0 if test_mode else 1.0,
    }
    loggers = [TensorBoardLogger(save_dir=str(experiment_dir), name=LOGS_DIR)]
    return build_trainer(
        trainer_cfg, experiment_dir, loggers=loggers, callbacks=callbacks, reliability=False, phase="linear_probe"
    ).trainer


def evaluate(
    config_path: str | os.PathLike[str],
    backbone_experiment_dir: str | os.PathLike[str] | None = None,
    pre_trained_model: str | None = None,
    pre_embedded_root_dir: str | os.PathLike[str] | None = None,
    test_mode: bool = False,
) -> dict[str, float]:
    """Train the probe, test it and write ``metrics.json`` (see the module docstring).

    Returns:
        The test metrics (read back from ``metrics.json`` when the probe had already finished).

    Raises:
        ValueError: not exactly one backbone option, an unknown baseline, an embedding dir that
            does not end in ``<dataset>/<model>``, or embeddings of the wrong width.
    """
    torch.set_float32_matmul_precision("high")
    if test_mode:
        print("Test mode: no validation; the last epoch's checkpoint is tested.")
    if (backbone_experiment_dir is None) == (pre_trained_model is None):
        raise ValueError("give exactly one of --backbone-experiment-dir and --pre-trained-model")
    if backbone_experiment_dir is not None:
        pre_train_name, _, model_path = run_model_info(backbone_experiment_dir)
        model_name = Path(backbone_experiment_dir).name
    else:
        if pre_trained_model not in PRETRAINED_BASELINES:
            raise ValueError(f"--pre-trained-model must be one of {sorted(PRETRAINED_BASELINES)}")
        pre_train_name = model_name = str(pre_trained_model)
        model_path = None
    config = load_probe_config(config_path)
    if pre_embedded_root_dir is not None and Path(pre_embedded_root_dir).parts[-2:] != (
        str(config.dataset),
        model_name,
    ):
        raise ValueError(
            f"--pre-embedded-root-dir {pre_embedded_root_dir} must end in <dataset>/<model> = "
            f"{config.dataset}/{model_name}"
        )

    experiment_dir = Path(config.experiment_dir) / model_name / str(config.dataset)
    done = finished_metrics(experiment_dir)
    if done is not None:
        log.info("%s exists: this probe is finished, nothing to do", done)
        return read_json(done)
    remove_unfinished(experiment_dir)

    pl.seed_everything(int(config.seed), workers=False)
    common: dict[str, Any] = dict(
        model_name=pre_train_name,
        model_path=model_path,
        optim_kwargs=OmegaConf.to_container(config.optim_kwargs),
        max_epochs=int(config.max_epochs),
        scheduler_kwargs=OmegaConf.to_container(config.scheduler_kwargs) if config.scheduler_kwargs else None,
        num_classes=int(config.num_classes),
        task=str(config.task),
        norm_repr=bool(config.norm_repr),
    )
    datamodule: pl.LightningDataModule
    if pre_embedded_root_dir is not None:
        root = Path(pre_embedded_root_dir)
        datamodule = PrecomputedRepresentationsDatamodule(
            root, int(config.batch_size), num_workers_from_env(), str(config.task), int(config.num_classes), test_mode
        )
        model: LinearProbingClassifier = PreEmbeddedLinearProbingClassifier(**common)
        datamodule.setup("fit")
        shape = datamodule.repr_shape
        if shape[-1] != model.repr_dim:
            raise ValueError(
                f"the embeddings in {root} are {shape[-1]}-d but {model_name} gives {model.repr_dim}-d "
                "representations; re-run pre_embed_datasets.py for this model"
            )
    else:
        datamodule = get_transfer_learning_datamodule(
            config.dataset_dir,
            str(config.dataset),
            int(config.batch_size),
            num_workers_from_env(),
            image_size=config.get("image_size"),
            test_mode=test_mode,
        )
        model = LinearProbingClassifier(**common, frozen_encoder=True)

    monitor = "val/accuracy" if config.task == "multiclass" else "val/mAP"
    trainer = probe_trainer(experiment_dir, int(config.max_epochs), test_mode, monitor)
    trainer.fit(model, datamodule=datamodule)
    results = trainer.test(model, datamodule=datamodule, ckpt_path="best")
    metrics = {key: float(value) for key, value in results[0].items()}
    assert trainer.log_dir is not None
    write_json(Path(trainer.log_dir) / METRICS_FILE, metrics, indent=2)
    return metrics


def finished_runs(runs_dir: str | os.PathLike[str]) -> list[Path]:
    """The finished pretraining runs (``<run>/results.json``) in ``runs_dir``, sorted by name.

    Raises:
        FileNotFoundError: ``runs_dir`` is not a folder, or holds no finished run.
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise FileNotFoundError(
            f"--runs-dir {runs_dir} does not exist or is not a folder; run the demo pretraining first "
            "(`dvc repro demo_pretrain`) or pass the folder that holds the demo's run folders"
        )
    runs = sorted(p for p in runs_dir.iterdir() if (p / "results.json").is_file())
    if not runs:
        raise FileNotFoundError(
            f"--runs-dir {runs_dir} holds no finished run (no <run>/results.json); run the demo pretraining "
            "first (`dvc repro demo_pretrain`) or pass the folder that holds the demo's run folders"
        )
    return runs


def probe_runs(
    runs_dir: str | os.PathLike[str], config_path: str | os.PathLike[str], embeddings_dir: str | os.PathLike[str]
) -> dict[str, dict[str, float]]:
    """Pre-embed (into ``<embeddings_dir>/<run>``) and probe in test mode every finished run of ``runs_dir``.

    Each step skips work whose output exists (see ``pre_embed`` and ``evaluate``).

    Returns:
        ``{run name: test metrics}``.

    Raises:
        FileNotFoundError: ``runs_dir`` is not a folder, or holds no finished run.
    """
    metrics = {}
    for run in finished_runs(runs_dir):
        target = Path(embeddings_dir) / run.name
        pre_embed(config_path, target, experiment_dir=run)
        metrics[run.name] = evaluate(
            config_path, backbone_experiment_dir=run, pre_embedded_root_dir=target, test_mode=True
        )
    return metrics
