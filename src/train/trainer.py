"""One trainer builder for every training phase: pretraining, the offline finetune, semi-supervised
finetuning and the linear probes.

:func:`build_trainer` turns a phase's config (``trainer``, ``callbacks``) into a Lightning ``Trainer``
with the configured callbacks in the reference's order, the loggers of the ``logging`` node, the
project's reliability callbacks (resume state, non-finite-loss guard, a ``last.ckpt`` writer) and
atomic weights-only checkpoint I/O. The returned :class:`TrainingPhase` fits resuming from the
phase's ``last.ckpt`` and knows its best checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from src.train.callbacks.fault_guard import NonFiniteLossGuard
from src.train.callbacks.online_finetuner import OnlineFineTuner
from src.train.callbacks.progress import LogIntervalFit, progress_callback
from src.train.callbacks.resume_state import ResumeState
from src.train.checkpoint_io import AtomicCheckpointIO
from src.train.loggers import get_lightning_loggers
from src.utils.plain import to_plain
from src.utils.precision import resolve_precision
from src.utils.registry import Registry

log = logging.getLogger(__name__)

LAST_CKPT = "last.ckpt"
#: exit status of a run stopped by SIGTERM (128 + 15, what a shell reports for the signal)
SIGTERM_EXIT = 143


def trainer_kwargs(trainer_cfg: Mapping[str, Any], debug: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The configured Trainer arguments, adapted to the machine and the debug mode.

    The precision is resolved by :func:`~src.utils.precision.resolve_precision`: fp16 autocast
    (``16-mixed``) is a GPU feature, so without CUDA the run uses ``32-true``; ``bf16-mixed`` needs a
    GPU with native bf16 (a clear error otherwise) and runs as asked on a CPU. So is ``sync_batchnorm``
    a GPU feature: torch's DDP refuses SyncBatchNorm on CPU modules, so CPU processes keep per-process
    BatchNorm statistics. ``benchmark`` (cuDNN autotuning, the pretraining and finetuning default) gives
    way to ``deterministic``: PyTorch ignores cuDNN's deterministic flag while autotuning, so a
    deterministic run gets ``benchmark=False``.
    """
    kwargs = to_plain(trainer_cfg)
    precision = kwargs.get("precision", "32-true")
    on_gpu = torch.cuda.is_available() and kwargs.get("accelerator") != "cpu"
    resolved = resolve_precision(precision, on_gpu=on_gpu)
    if resolved != str(precision):
        log.info("trainer.precision=%s needs a GPU; running with %s on this machine", precision, resolved)
    if "precision" in kwargs or resolved != "32-true":
        kwargs["precision"] = resolved
    if kwargs.get("sync_batchnorm") and (kwargs.get("accelerator") == "cpu" or not torch.cuda.is_available()):
        log.info("trainer.sync_batchnorm needs GPUs; CPU processes keep their own BatchNorm statistics")
        kwargs["sync_batchnorm"] = False
    if debug:
        kwargs.update(to_plain(debug))
    if kwargs.get("benchmark") and kwargs.get("deterministic"):
        log.info("trainer.deterministic is set: running with benchmark=false (cuDNN autotuning is not deterministic)")
        kwargs["benchmark"] = False
    return kwargs


@dataclass(frozen=True)
class PhaseContext:
    """What a callback builder may need beside its own config node."""

    #: where the phase's checkpoints go
    checkpoint_dir: Path
    #: whether the Trainer has a logger (Lightning refuses a learning-rate monitor without one)
    has_logger: bool
    #: online-probe arguments that come from elsewhere in the config (``encoder_output_dim``, ``num_classes``)
    probe: Mapping[str, Any]


#: the callbacks a phase's ``callbacks`` node may name: ``builder(args, context) -> Callback | None``
#: (None: not wanted in this context). A new callback is one registration here.
CALLBACKS: Registry[Callable[[dict[str, Any], PhaseContext], Callback | None]] = Registry(
    "callback", config_key="callbacks"
)


@CALLBACKS.register("checkpoint")
def _checkpoint(args: dict[str, Any], ctx: PhaseContext) -> Callback:
    """The best checkpoint(s) (``model.ckpt``): weights, hyper-parameters and the epoch/step counters only.

    A best checkpoint is read to rebuild the model (``load_ssl_model``, the OOD study, the embedding
    and semi-supervised stages), never to resume, so the optimizer and scheduler states, the callbacks'
    states and the RNG streams stay out of it (a third of the size with AdamW). ``save_last`` is taken
    out too: the complete ``last.ckpt`` a resume needs comes from the last-checkpoint writer that
    :func:`reliability_callbacks` adds to every training phase. ``save_weights_only: false`` in the
    ``checkpoint`` node keeps the full content.
    """
    args = dict(args)
    args.pop("save_last", None)
    args.setdefault("save_weights_only", True)
    # overwrite model.ckpt in place rather than writing model-v1.ckpt
    return ModelCheckpoint(dirpath=ctx.checkpoint_dir, enable_version_counter=False, **args)


@CALLBACKS.register("early_stopping")
def _early_stopping(args: dict[str, Any], ctx: PhaseContext) -> Callback:
    return EarlyStopping(**args)


@CALLBACKS.register("online_finetuner")
def _online_finetuner(args: dict[str, Any], ctx: PhaseContext) -> Callback:
    return OnlineFineTuner(**ctx.probe, **args)


@CALLBACKS.register("learning_rate_monitor")
def _learning_rate_monitor(args: dict[str, Any], ctx: PhaseContext) -> Callback | None:
    # Lightning refuses the monitor without a logger (T-Q18g)
    return LearningRateMonitor(**args) if ctx.has_logger else None


#: the callbacks a phase's ``callbacks`` node may name, in registration order
CALLBACK_NAMES = tuple(CALLBACKS.keys())


def build_callbacks(
    callbacks_cfg: Mapping[str, Any] | None, checkpoint_dir: Path, has_logger: bool, **probe: Any
) -> list[Callback]:
    """Callbacks of a phase in the config's order (the reference's); unknown names are an error.

    ``probe`` holds the online probe's arguments that come from elsewhere in the config
    (``encoder_output_dim``, ``num_classes``).
    """
    ctx = PhaseContext(checkpoint_dir=checkpoint_dir, has_logger=has_logger, probe=probe)
    callbacks: list[Callback] = []
    for name, args in (to_plain(callbacks_cfg) or {}).items():
        if name not in CALLBACKS:
            raise ValueError(f"callbacks.{name} is not a known callback; use one of {', '.join(CALLBACKS.keys())}")
        callback = CALLBACKS[name](dict(args or {}), ctx)
        if callback is not None:
            callbacks.append(callback)
    return callbacks


def last_checkpoint_writer(checkpoint_dir: Path) -> ModelCheckpoint:
    """A complete ``last.ckpt`` at the end of every epoch, whatever the monitored metrics do.

    Not ``save_last=True``: Lightning (2.6) writes ``last.ckpt`` only in a step where the same callback
    also saved a top-k checkpoint, i.e. only on improving epochs, or never with ``save_top_k=0``. A
    monitor-less top-1 checkpoint named ``last`` is rewritten every epoch.
    """
    return ModelCheckpoint(
        dirpath=checkpoint_dir, filename=LAST_CKPT.removesuffix(".ckpt"), save_top_k=1, enable_version_counter=False
    )


def reliability_callbacks(
    callbacks: list[Callback], checkpoint_dir: Path, check_every_n_steps: int, stop_on_non_finite_loss: bool = True
) -> list[Callback]:
    """The callbacks every training phase gets on top of the configured ones.

    ``ResumeState`` (RNG streams, stop flag) and ``NonFiniteLossGuard`` always (it stops the run, or
    with ``stop_on_non_finite_loss=False`` only warns, as the reference kept training); a
    last-checkpoint writer when no configured checkpoint keeps ``last.ckpt``, so that every phase
    can resume. The configured ``checkpoint`` node's ``save_last`` is served by this writer (see
    ``_checkpoint``), so ``last.ckpt`` is always complete (optimizer, schedulers, callbacks, RNG).
    """
    extra: list[Callback] = [ResumeState(), NonFiniteLossGuard(check_every_n_steps, stop=stop_on_non_finite_loss)]
    if not any(isinstance(c, ModelCheckpoint) and c.save_last for c in callbacks):
        extra.append(last_checkpoint_writer(checkpoint_dir))
    return callbacks + extra


@dataclass
class TrainingPhase:
    """A configured Trainer and where its phase keeps checkpoints."""

    trainer: pl.Trainer
    #: the phase's configured callbacks (the reliability ones excluded)
    callbacks: list[Callback]
    checkpoint_dir: Path

    def resume_checkpoint(self) -> str | None:
        """``last.ckpt`` of an interrupted run of this phase, if there is one (the fit continues from it)."""
        last = self.checkpoint_dir / LAST_CKPT
        if last.is_file():
            log.info("resuming from %s", last)
            return str(last)
        return None

    def fit(self, model: pl.LightningModule, datamodule: Any) -> None:
        """``trainer.fit``, resuming from the phase's ``last.ckpt`` (loaded weights-only) when it exists."""
        self.trainer.fit(model, datamodule=datamodule, ckpt_path=self.resume_checkpoint(), weights_only=True)

    def best_checkpoint(self) -> str | None:
        """The best checkpoint of the first configured ``ModelCheckpoint``, if any was written."""
        ckpt = next((c for c in self.callbacks if isinstance(c, ModelCheckpoint)), None)
        return ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None


def build_trainer(
    trainer_cfg: Mapping[str, Any],
    root: Path,
    *,
    callbacks_cfg: Mapping[str, Any] | None = None,
    logging_cfg: Mapping[str, Any] | None = None,
    loggers: Sequence[Logger] | None = None,
    callbacks: Sequence[Callback] = (),
    debug: Mapping[str, Any] | None = None,
    checkpoint_dir: Path | None = None,
    reliability: bool = True,
    stop_on_non_finite_loss: bool = True,
    group: str | None = None,
    phase: str = "train",
    **probe: Any,
) -> TrainingPhase:
    """The Trainer of one phase, writing under ``root``.

    Args:
        trainer_cfg: the phase's ``trainer`` node (Lightning Trainer arguments).
        root: the phase's output folder (``default_root_dir``; loggers write below it).
        callbacks_cfg: the phase's ``callbacks`` node (see :func:`build_callbacks`).
        logging_cfg: the ``logging`` node; its loggers are rooted at ``root``. Ignored when ``loggers`` is given.
        loggers: explicit loggers instead of those of ``logging_cfg``.
        callbacks: further callbacks, after the configured ones.
        debug: the ``debug`` node; its keys override the Trainer arguments.
        checkpoint_dir: where checkpoints go (default ``root / "checkpoints"``).
        reliability: add the resume-state, non-finite-loss and ``last.ckpt`` callbacks and the atomic
            weights-only checkpoint I/O (every training phase; off only for throw-away trainers).
        stop_on_non_finite_loss: stop the run at a NaN/inf training loss (the default); False only warns
            and keeps training, as the reference did (the configs' ``continue_on_non_finite_loss``).
        group: the pipeline's run id, for the loggers that group the runs of its phases (wandb).
        phase: the phase's name (``pretrain``, ``finetune``, ``semi_supervised``, ...): in progress lines, and
            the wandb job type.
        **probe: online-probe arguments for :func:`build_callbacks`.

    Every phase gets the progress display of ``logging_cfg`` (``logging.progress``: a bar in a terminal,
    plain lines otherwise; see :mod:`src.train.callbacks.progress`) and a logging interval of at most one
    epoch (:class:`~src.train.callbacks.progress.LogIntervalFit`).
    """
    checkpoint_dir = checkpoint_dir or root / "checkpoints"
    if loggers is None:
        loggers = get_lightning_loggers(logging_cfg or {}, root, group=group, job_type=phase)
    configured = build_callbacks(callbacks_cfg, checkpoint_dir, bool(loggers), **probe) + list(callbacks)
    kwargs = trainer_kwargs(trainer_cfg, debug)
    all_callbacks = configured
    plugins: list[Any] = []
    if reliability:
        all_callbacks = reliability_callbacks(
            configured, checkpoint_dir, int(kwargs.get("log_every_n_steps", 50)), stop_on_non_finite_loss
        )
        plugins.append(AtomicCheckpointIO())
    progress = progress_callback(logging_cfg, phase, kwargs)
    if progress is None:
        kwargs["enable_progress_bar"] = False
    all_callbacks = [*all_callbacks, LogIntervalFit(), *([progress] if progress is not None else [])]
    trainer = pl.Trainer(
        default_root_dir=root, callbacks=all_callbacks, logger=list(loggers) or False, plugins=plugins, **kwargs
    )
    return TrainingPhase(trainer=trainer, callbacks=configured, checkpoint_dir=checkpoint_dir)


def merge_metrics(results: list[dict[str, Any]]) -> dict[str, float]:
    """The metric dicts ``trainer.validate``/``test`` return, merged into one of floats."""
    merged: dict[str, float] = {}
    for r in results:
        merged.update({k: float(v) for k, v in r.items()})
    return merged


def relative(path: str | Path) -> str:
    """``path`` relative to the working directory when inside it (results files stay portable)."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@contextlib.contextmanager
def sigterm_exits_nonzero() -> Iterator[None]:
    """Turn Lightning's ``SIGTERMException`` (a ``SystemExit`` with status 0) into status 143."""
    try:
        yield
    except SIGTERMException as err:
        log.error("stopped by SIGTERM; run the same command again to resume from the last checkpoint")
        raise SystemExit(SIGTERM_EXIT) from err
