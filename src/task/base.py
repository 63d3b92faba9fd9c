"""The Lightning base of every task: plain-value hyper-parameters, optimizer and scheduler."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
from torch import nn

from src.task.optim import build_optimizer, build_scheduler
from src.utils.plain import to_plain


def logs_this_step(trainer: pl.Trainer | None) -> bool:
    """Whether the loggers write the values logged in this training step.

    Lightning writes a training step's ``on_step`` values only every ``log_every_n_steps`` optimizer steps
    (and at a step where the run stops, and every step under ``fast_dev_run``); at the other steps a
    ``self.log`` call is work (a reduction, a DDP all-reduce with ``sync_dist``) whose value nobody reads
    but the progress bar, so the SSL modules and the online probe log only when this is true. Without
    a trainer (a bare call) every step logs. Reads Lightning's own decision (``should_update_logs``,
    evaluated the same way before the step as after it).
    """
    if trainer is None:
        return True
    return bool(trainer.fast_dev_run) or bool(trainer._logger_connector.should_update_logs)


class BaseTask(pl.LightningModule):
    """Stores its constructor arguments as plain hyper-parameters and builds its optimizer.

    Subclasses pass every constructor argument (plus extras such as ``seed``) to
    :meth:`save_plain_hparams`; ``load_from_checkpoint`` calls the constructor with them.
    """

    def save_plain_hparams(self, hparams: dict[str, Any], logger: bool = False) -> None:
        """Store ``hparams`` as plain values (``logger``: also hand them to the experiment loggers)."""
        self.save_hyperparameters(to_plain(hparams), logger=logger)

    def optimizer_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the main optimizer (all, unless a subclass excludes some)."""
        return self.parameters()

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = build_optimizer(self.optimizer_parameters(), dict(hp["optimizer"]), int(hp["batch_size"]))
        trainer = self.trainer
        scheduler = build_scheduler(
            hp.get("scheduler"),
            optimizer,
            learning_rate=float(hp["learning_rate"]),
            eta_min_scale=float(hp.get("sch_eta_min_scale", 0.01)),
            max_epochs=int(trainer.max_epochs) if trainer.max_epochs is not None else 0,
            total_steps=int(trainer.estimated_stepping_batches),
            train_iters_per_epoch=hp.get("train_iters_per_epoch"),
            warmup_epochs=hp.get("warmup_epochs"),
        )
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
