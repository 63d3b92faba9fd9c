"""Offline last-layer finetuning of a pretrained SSL module (spec: model_training.md §10).

A single Linear(E -> C) (``finetune_model="simple_mlp"``) is trained on the finetune view x3
of the three-view SSL batch, with AdamW on the head only and a per-epoch cosine schedule.
The wrapped SSL module is *not* put in eval mode for the fit (Quirk Q15b): its BatchNorm
layers normalise with batch statistics and update their running averages on x3, and those
statistics are saved in this module's checkpoint (``model.*``), which the OOD study loads.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

FINETUNE_MODELS = ("simple_mlp",)


def offline_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """``offline_acc`` (micro top-1), ``offline_acc_at_5`` and ``offline_ece`` (L1, 15 bins)."""
    return MetricCollection(
        {
            "offline_acc": MulticlassAccuracy(num_classes, average="micro"),
            "offline_acc_at_5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
            "offline_ece": MulticlassCalibrationError(num_classes, n_bins=15, norm="l1"),
        },
        prefix=prefix,
    )


class LastLayerFinetuner(pl.LightningModule):
    """Linear head on a (frozen by ``no_grad``) SSL module.

    Features: Bayes-H's samples h [M, B, L] when ``use_mc_samples`` (logits averaged over M),
    else μ when ``use_mean_for_repr``, else the MC-mean repr; the encoder output [B, E] for
    ``ssl`` and Bayes-Z.

    Args:
        pl_module: the loaded SSL module (kept as sub-module ``model``; not a hyper-parameter).
        finetune_model: must be ``simple_mlp`` (a single Linear layer).
        num_classes: C.
        no_grad: run the SSL module under no-grad and detach its features.
        offline_learning_rate, offline_weight_decay: AdamW of the head; cosine η_min = 0.1 lr.
        use_mc_samples, use_mean_for_repr: feature choice for Bayes-H (see above).
    """

    def __init__(
        self,
        pl_module: nn.Module,
        finetune_model: str = "simple_mlp",
        num_classes: int = 10,
        no_grad: bool = True,
        offline_learning_rate: float = 1e-3,
        offline_weight_decay: float = 1e-4,
        use_mc_samples: bool = False,
        use_mean_for_repr: bool = False,
    ) -> None:
        super().__init__()
        if finetune_model not in FINETUNE_MODELS:
            raise ValueError(
                f"finetune.finetune_model={finetune_model!r} is not supported; use one of {FINETUNE_MODELS}"
            )
        self.save_hyperparameters(ignore=["pl_module"], logger=False)
        self.model = pl_module
        self.predictor = nn.Linear(pl_module.encoder_out_dim, num_classes)
        self.train_metrics = offline_metrics(num_classes, "train_")
        self.val_metrics = offline_metrics(num_classes, "val_")
        self.test_metrics = offline_metrics(num_classes, "test_")

    def features(self, x: Tensor) -> Tensor:
        """[B, E] or, for Bayes-H with ``use_mc_samples``, the samples [M, B, L]."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.hparams.no_grad):
            out = self.model(x)
        if self.model.stochastic_space == "H":  # forward gives the StochasticOutput of the representation
            if self.hparams.use_mc_samples:
                out = out.samples
            elif self.hparams.use_mean_for_repr:
                out = out.mu
            else:
                out = out.repr
        return out.detach() if self.hparams.no_grad else out

    def features_ood(self, x: Tensor) -> Tensor:
        """Features for the OOD study: 3-D features averaged over the sample dimension."""
        f = self.features(x)
        return f.mean(0) if f.dim() == 3 else f

    def forward(self, x: Tensor) -> Tensor:
        """Logits [B, C]; for MC features the mean over M of predictor(h_m) (logits, not probabilities)."""
        f = self.features(x)
        logits = self.predictor(f)
        return logits.mean(0) if f.dim() == 3 else logits

    def latent_repr(self, x: Tensor) -> torch.distributions.Normal:
        """q(h | x) of Bayes-H as a diagonal Normal with variance exp(log_var) (corrected, Quirk Q19)."""
        if self.model.stochastic_space != "H":
            raise TypeError("latent_repr needs a Bayes-H model (its forward returns the Gaussian parameters)")
        out = self.model(x)
        return torch.distributions.Normal(out.mu, torch.exp(0.5 * out.log_var), validate_args=False)

    def _step(self, batch: Any) -> tuple[Tensor, Tensor, Tensor]:
        (_, _, x3), y = batch
        logits = self(x3)
        return F.cross_entropy(logits.float(), y), logits.float(), y

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss, logits, y = self._step(batch)
        self.train_metrics.update(logits.detach(), y)
        self.log("train_offline_loss", loss, on_step=True, on_epoch=False, batch_size=y.shape[0])
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss, logits, y = self._step(batch)
        self.val_metrics.update(logits, y)
        # the epoch value is the mean over batches (all batches are full; Quirk Q16)
        self.log("val_offline_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=1)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        loss, logits, y = self._step(batch)
        self.test_metrics.update(logits, y)
        self.log("test_offline_loss", loss, on_step=False, on_epoch=True, batch_size=1)

    def _log_metrics(self, metrics: MetricCollection, prog_bar: bool = False) -> None:
        self.log_dict(metrics.compute(), sync_dist=True, prog_bar=prog_bar)
        metrics.reset()

    def on_train_epoch_end(self) -> None:
        self._log_metrics(self.train_metrics)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, prog_bar=True)

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        (_, _, x3), _ = batch
        return self(x3)

    def configure_optimizers(self) -> Any:
        lr = float(self.hparams.offline_learning_rate)
        optimizer = torch.optim.AdamW(
            self.predictor.parameters(), lr=lr, weight_decay=float(self.hparams.offline_weight_decay)
        )
        max_epochs = int(self.trainer.max_epochs or 1)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs, eta_min=0.1 * lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
