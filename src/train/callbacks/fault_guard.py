"""Stop a run whose training loss stops being finite, before a bad checkpoint is written.

A NaN/inf loss (too high a learning rate, an fp16 overflow that the scaler cannot absorb,
a corrupted batch) poisons the weights at the optimizer step that follows, and every later
checkpoint would carry them. The guard keeps, on the device, a step counter, the counter's value
at the first bad step and which loss terms were non-finite there; the host keeps the (epoch,
batch, global step) of the steps since its last look. The host reads the device flags only every
``check_every_n_steps`` steps and before every checkpoint is saved, so the hot path has neither a
host-device synchronisation nor a host-to-device copy. A fault raises :class:`NonFiniteLossError`
naming the first bad step and the non-finite terms; the last checkpoint on disk is the last
good one, and the pipeline writes no results.

The reference had no such guard: it kept training (under fp16 the gradient scaler skips the
steps whose gradients overflow). ``stop=False`` (the configs' ``continue_on_non_finite_loss: true``)
does that too: the first bad step is reported once as a warning and training goes on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The training loss (or one of its terms) became NaN or infinite."""


class NonFiniteLossGuard(pl.Callback):
    """Raise :class:`NonFiniteLossError` when any training loss term is not finite.

    The terms are read from ``pl_module.last_step_terms`` (a dict of scalar tensors the
    module sets in ``training_step``), falling back to the step's returned loss.

    Args:
        check_every_n_steps: how often the host looks at the device-side flags; the check
            also runs at every validation start, epoch end, fit end and checkpoint save.
        stop: raise at the first check that finds a bad step (the default); False logs one warning
            naming the first bad step and lets training go on, as the reference did.
    """

    def __init__(self, check_every_n_steps: int = 50, stop: bool = True) -> None:
        super().__init__()
        if int(check_every_n_steps) < 1:
            raise ValueError(f"check_every_n_steps must be >= 1, got {check_every_n_steps}")
        if not isinstance(stop, bool):
            raise TypeError(f"stop must be a bool, got {stop!r}")
        self.check_every_n_steps = int(check_every_n_steps)
        self.stop = stop
        self.warned = False
        self._names: list[str] | None = None
        self._bad: Tensor | None = None  # [T] bool: term t was non-finite at the first bad step
        self._count: Tensor | None = None  # [] int64 on the device: steps recorded since the last look
        self._first: Tensor | None = None  # [] int64 on the device: _count at the first bad step; -1 = none yet
        self._where: list[tuple[int, int, int]] = []  # host: (epoch, batch, global step) of those steps
        self._steps = 0

    @staticmethod
    def _terms(pl_module: pl.LightningModule, outputs: Any) -> dict[str, Tensor]:
        terms = getattr(pl_module, "last_step_terms", None)
        if terms:
            return terms
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        return {"loss": loss} if isinstance(loss, Tensor) else {}

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.warned:
            return  # continue mode, already reported
        terms = self._terms(pl_module, outputs)
        if not terms:
            return
        names = list(terms)
        values = torch.stack([terms[k].detach().float().reshape(()) for k in names])
        bad_now = ~torch.isfinite(values)
        if self._bad is None or self._first is None or self._count is None or self._names != names:
            self._check(trainer)  # a different set of terms: settle the old flags first
            self._names = names
            self._bad = torch.zeros_like(bad_now)
            # filled on the device (no copy from host memory)
            self._first = torch.full((), -1, dtype=torch.long, device=values.device)
            self._count = torch.zeros((), dtype=torch.long, device=values.device)
            self._where = []
        # global_step has already been advanced by this batch's optimizer step
        self._where.append((trainer.current_epoch, batch_idx, max(trainer.global_step - 1, 0)))
        first_time = bad_now.any() & (self._first < 0)
        self._first = torch.where(first_time, self._count, self._first)
        # the terms of the first bad step: later steps are all NaN once the weights are
        self._bad = torch.where(first_time, bad_now, self._bad)
        self._count.add_(1)
        self._steps += 1
        if self._steps % self.check_every_n_steps == 0:
            self._check(trainer)

    def _check(self, trainer: pl.Trainer) -> None:
        if self.warned or self._bad is None or self._first is None or self._count is None:
            return
        first = int(self._first)  # the one host read of the device flags
        if first < 0:
            # nothing bad since the last look: forget those steps (the device counter restarts with the list)
            self._where.clear()
            self._count.zero_()
            return
        epoch, batch_idx, step = self._where[first]
        terms = [n for n, b in zip(self._names or [], self._bad.tolist(), strict=True) if b]
        if not self.stop:
            self.warned = True  # once per fit: the flags keep the first bad step only
            log.warning(
                "the training loss became non-finite at global step %d (epoch %d, batch %d); non-finite terms: "
                "%s. Training goes on (continue_on_non_finite_loss=true, as the reference did).",
                step,
                epoch,
                batch_idx,
                ", ".join(terms),
            )
            return
        # the last-checkpoint writer (src/train/trainer.py) keeps last.ckpt as its one "best" file
        written = [getattr(c, "last_model_path", "") for c in trainer.checkpoint_callbacks]
        written += [getattr(c, "best_model_path", "") for c in trainer.checkpoint_callbacks]
        ckpt = next((path for path in written if path and Path(path).name == "last.ckpt"), "none written yet")
        raise NonFiniteLossError(
            f"the training loss became non-finite at global step {step} (epoch {epoch}, batch {batch_idx}); "
            f"non-finite terms: {', '.join(terms)}. The run was stopped and nothing was marked done; the last "
            f"good checkpoint is {ckpt}. Lower the learning rate (or beta_scale), check the input data for "
            "NaN/inf values, or train in 32-bit precision, then run the same command again (or set "
            "continue_on_non_finite_loss=true to keep training, as the reference did)."
        )

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._check(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._check(trainer)  # raising here keeps the previous (good) checkpoint on disk
