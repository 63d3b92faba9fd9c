"""Training progress for people and for logs.

Two displays, one chosen per process by :func:`progress_callback` (``logging.progress``):

- ``bar``: Lightning's TQDM bar with the live training loss (and the KL/prior term of the stochastic
  models) and without Lightning's ``v_num``. The bar's counter moves every step; its metrics, which
  cost a host-device synchronisation to read, are refreshed at most once per ``metrics_every_s``.
- ``lines``: one plain log line per interval (every ``every_n_steps`` steps, or else every
  ``every_s`` seconds), with the phase, epoch, step/total, samples/s, the loss and an ETA; one line
  per finished epoch with its metrics. Meant for output that is not a terminal (CI, ``nohup``,
  ``dvc queue logs``), where a bar prints only its final state.

``auto`` (the default) picks ``bar`` when both stdout and stderr are terminals and ``lines``
otherwise; ``none`` shows nothing. Neither display adds work to the training step: both read what
Lightning already holds (``trainer.progress_bar_metrics``, ``trainer.global_step``), the line mode
only once per interval.

:class:`LogIntervalFit` makes ``log_every_n_steps`` at most the number of training batches per
epoch, so a short epoch (the demo's 13 batches against Lightning's default of 50) still writes its
training loss to the loggers.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, ProgressBar, TQDMProgressBar
from torch import Tensor

from src.utils.terminal import output_is_terminal

log = logging.getLogger(__name__)

#: the values of ``logging.progress``
PROGRESS_MODES = ("auto", "bar", "lines", "none")
#: the line mode's default interval in seconds (when no step interval is set)
DEFAULT_EVERY_S = 30.0


def resolve_progress_mode(mode: str | None) -> str:
    """``bar``, ``lines`` or ``none`` for a ``logging.progress`` value (``auto``/None: by the output)."""
    mode = "auto" if mode is None else str(mode).lower()
    if mode not in PROGRESS_MODES:
        raise ValueError(f"logging.progress={mode!r} is not a progress mode; use one of {', '.join(PROGRESS_MODES)}")
    if mode == "auto":
        return "bar" if output_is_terminal() else "lines"
    return mode


def batch_size(batch: Any) -> int | None:
    """The leading dimension of the first tensor in a batch (a shape: no device value is read)."""
    if isinstance(batch, Tensor):
        return int(batch.shape[0]) if batch.dim() > 0 else None
    items = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    for item in items:
        size = batch_size(item)
        if size is not None:
            return size
    return None


def _is_train_loss(key: str) -> bool:
    return key.startswith("train") and key.endswith("loss")


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return str(timedelta(seconds=round(seconds)))


class LiveProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar, showing the metrics logged with ``prog_bar=True`` and no ``v_num``.

    Reading the metrics converts device tensors to numbers (a host-device synchronisation), so the
    bar reads them at most once per ``metrics_every_s`` seconds and at the end of each epoch; the
    step counter, which needs no device value, moves every ``refresh_rate`` steps.
    """

    def __init__(self, refresh_rate: int = 1, metrics_every_s: float = 1.0) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.metrics_every_s = float(metrics_every_s)
        self._metrics_at = -math.inf

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        bar = self.train_progress_bar
        n = batch_idx + 1
        if bar is None or not self._should_update(n, bar.total):
            return
        now = time.monotonic()
        if now - self._metrics_at >= self.metrics_every_s or n == bar.total:
            self._metrics_at = now
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
        bar.n = n
        if not bar.disable:
            bar.refresh()


class LineProgress(ProgressBar):
    """Plain progress lines through :mod:`logging`, one per interval, for output that is not a terminal.

    A line reads, e.g.::

        pretrain epoch 1/2 step 2/54 (4%) 6.2 samples/s train_kl_prior_loss=3.257 train_loss=68.66 ETA 0:05:28

    Args:
        phase: the name the lines start with (``pretrain``, ``finetune``, ...).
        every_n_steps: a line every this many optimizer steps; None: by time.
        every_s: without ``every_n_steps``, a line when this many seconds have passed since the last.
    """

    def __init__(self, phase: str = "train", every_n_steps: int | None = None, every_s: float = DEFAULT_EVERY_S):
        super().__init__()
        if every_n_steps is not None and int(every_n_steps) < 1:
            raise ValueError(f"logging.progress_every_n_steps must be >= 1 or null, got {every_n_steps}")
        if float(every_s) <= 0:
            raise ValueError(f"logging.progress_every_s must be > 0, got {every_s}")
        self.phase = phase
        self.every_n_steps = None if every_n_steps is None else int(every_n_steps)
        self.every_s = float(every_s)
        self._enabled = True
        self._reset_counters()

    def _reset_counters(self) -> None:
        self._start_time = self._last_time = time.monotonic()
        self._start_step = self._last_step = 0
        self._samples = 0
        self._epoch_start = self._start_time
        self._lines = 0

    # -- the ProgressBar interface ---------------------------------------------------------------
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self.trainer.is_global_zero

    # -- what a line holds -----------------------------------------------------------------------
    def metrics(self, trainer: pl.Trainer, train_only: bool = False) -> dict[str, Any]:
        """The progress-bar metrics (only the ``train*`` ones with ``train_only``), with the training
        losses the module logs added when it shows none on the bar (the finetuners show validation)."""
        items: dict[str, Any] = dict(trainer.progress_bar_metrics)
        items.pop("v_num", None)
        if not any(_is_train_loss(k) for k in items):
            items.update({k: float(v) for k, v in trainer.callback_metrics.items() if _is_train_loss(k)})
        if train_only:
            items = {k: v for k, v in items.items() if k.startswith("train")}
        return items

    def _total_steps(self, trainer: pl.Trainer) -> float:
        try:
            return float(trainer.estimated_stepping_batches)
        except Exception:  # an iterable dataset without a length: no total, no ETA
            return math.inf

    def _epochs(self, trainer: pl.Trainer) -> str:
        max_epochs = trainer.max_epochs
        return (
            f"{trainer.current_epoch + 1}/{max_epochs}"
            if max_epochs and max_epochs > 0
            else str(trainer.current_epoch + 1)
        )

    def _emit(self, trainer: pl.Trainer, now: float) -> None:
        step = trainer.global_step
        total = self._total_steps(trainer)
        elapsed = now - self._last_time
        rate = self._samples / elapsed if elapsed > 0 else math.nan
        per_step = (now - self._start_time) / max(step - self._start_step, 1)
        eta = (total - step) * per_step if math.isfinite(total) else math.inf
        done = f"{step}/{int(total)} ({100 * step / total:.0f}%)" if math.isfinite(total) and total > 0 else str(step)
        metrics = " ".join(f"{k}={_format_value(v)}" for k, v in self.metrics(trainer, train_only=True).items())
        parts = [f"{self.phase} epoch {self._epochs(trainer)} step {done}", f"{rate:.1f} samples/s"]
        if metrics:
            parts.append(metrics)
        parts.append(f"ETA {_format_duration(eta)}")
        log.info(" ".join(parts))
        self._last_time = now
        self._last_step = step
        self._samples = 0
        self._lines += 1

    # -- hooks -----------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset_counters()
        self._start_step = self._last_step = trainer.global_step
        if not self.is_enabled:
            return
        total = self._total_steps(trainer)
        interval = f"every {self.every_n_steps} steps" if self.every_n_steps else f"every {self.every_s:g} s"
        steps = f"{int(total)} steps" if math.isfinite(total) else "an open number of steps"
        batches = trainer.num_training_batches
        log.info(
            "%s: %s (%s training batches per epoch), from step %d; progress %s",
            self.phase,
            steps,
            batches if math.isfinite(batches) else "?",
            trainer.global_step,
            interval,
        )

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = time.monotonic()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.is_enabled:
            return
        self._samples += (batch_size(batch) or 0) * trainer.world_size
        step = trainer.global_step
        now = time.monotonic()
        if self.every_n_steps is not None:
            due = step // self.every_n_steps > self._last_step // self.every_n_steps
        else:
            due = now - self._last_time >= self.every_s
        if due or self._lines == 0:  # the first line after the first step: the run has started
            self._emit(trainer, now)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.is_enabled:
            return
        metrics = " ".join(f"{k}={_format_value(v)}" for k, v in self.metrics(trainer).items())
        log.info(
            "%s epoch %s done in %s%s",
            self.phase,
            self._epochs(trainer),
            _format_duration(time.monotonic() - self._epoch_start),
            f": {metrics}" if metrics else "",
        )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.is_enabled:
            log.info(
                "%s: %d steps in %s",
                self.phase,
                trainer.global_step,
                _format_duration(time.monotonic() - self._start_time),
            )


class LogIntervalFit(Callback):
    """``log_every_n_steps`` at most the training batches per epoch, so every epoch logs its training loss.

    Logging more often changes what the loggers receive, not what is trained.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Lightning warns about a logging interval above the batches per epoch before on_train_start
        # can lower it; the interval is lowered there, so the warning would be wrong.
        warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        batches = trainer.num_training_batches
        if trainer.log_every_n_steps > 0 and math.isfinite(batches) and 0 < batches < trainer.log_every_n_steps:
            log.info(
                "log_every_n_steps %d > %d training batches per epoch: logging every %d steps",
                trainer.log_every_n_steps,
                batches,
                batches,
            )
            trainer.log_every_n_steps = int(batches)


def progress_callback(
    logging_cfg: Mapping[str, Any] | None, phase: str, trainer_kwargs: Mapping[str, Any]
) -> Callback | None:
    """The progress display of a phase from the ``logging`` node (``progress``, ``progress_every_n_steps``,
    ``progress_every_s``); None when the trainer's ``enable_progress_bar`` is false or the mode is ``none``."""
    cfg = dict(logging_cfg or {})
    if trainer_kwargs.get("enable_progress_bar") is False:
        return None
    mode = resolve_progress_mode(cfg.get("progress"))
    if mode == "bar":
        return LiveProgressBar()
    if mode == "lines":
        every_s = cfg.get("progress_every_s")
        return LineProgress(
            phase,
            every_n_steps=cfg.get("progress_every_n_steps"),
            every_s=DEFAULT_EVERY_S if every_s is None else float(every_s),
        )
    return None
