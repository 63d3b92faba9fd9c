"""The Lightning base of every task: plain-value hyper-parameters, optimizer and scheduler."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
from torch import nn

from src.task.optim import build_optimizer, build_scheduler
from src.utils.plain import to_plain


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
