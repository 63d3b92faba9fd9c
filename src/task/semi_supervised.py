"""Semi-supervised finetuning of a pretrained SSL module (spec: model_training.md §11, data_evaluation.md §12).

The whole SSL module (encoder and every head; only the parameters on the forward path get
gradients) is trained end to end together with a new Linear(E → C) head on labelled
``[X, Y]`` batches:

    features = model(x)                         [B, E] (ssl, Bayes-Z: the encoder output)
             | model(x)[1]                      [M, B, L] (Bayes-H samples h, ``use_mc_samples``)
    logits   = mean_m predictor(h_m)            [B, C] (MC samples; re-drawn at every forward, also
                                                in val/test, Q26) | predictor(features)
    loss     = cross_entropy(logits, y)

Optimizer: AdamW with two parameter groups, ``backbone`` (every SSL-module parameter, lr =
``optimizer.lr`` 1e-4) and ``linear`` (the head, lr = ``optimizer.lr_linear`` 1e-3), both with
``optimizer.weight_decay`` (1e-5). Scheduler, stepped per epoch: ``cosine`` =
CosineAnnealingLR(T_max = max_epochs, η_min = learning_rate · sch_eta_min_scale = 1e-5), one η_min
shared by both groups (Q25/Q26); ``multistep`` = MultiStepLR(milestones, gamma).

Metrics (micro, unlike the probe's macro accuracy; Q24): ``accuracy`` (top-1), ``accuracy_at_5``
and ``ece`` (15 bins, L1) with prefixes ``train_``/``val_``/``test_``, computed over each epoch;
``train_loss`` per step, ``val_loss`` and ``test_loss`` as epoch means over batches (Q16/Q24).

Hyper-parameters are plain values; the SSL module is not one, but its own (plain)
hyper-parameters are stored as ``pl_module_hparams`` so that ``load_from_checkpoint`` can
rebuild it without the pretraining checkpoint. The stored optimizer dict is never mutated
(the reference popped ``name`` and ``lr_linear`` from it, Q25).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

from src.task.base import BaseTask
from src.task.optim import OPTIMIZERS, optimizer_key, optimizer_kwargs

FINETUNE_MODELS = ("simple_mlp",)
SCHEDULERS = ("cosine", "multistep")


def classification_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """BaseTask's collection: micro top-1 ``accuracy``, micro ``accuracy_at_5``, ``ece`` (L1, 15 bins)."""
    return MetricCollection(
        {
            "accuracy": MulticlassAccuracy(num_classes, average="micro"),
            "accuracy_at_5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
            "ece": MulticlassCalibrationError(num_classes, n_bins=15, norm="l1"),
        },
        prefix=prefix,
    )


class SemiSupervised(BaseTask):
    """End-to-end finetuning of an SSL module plus a new linear head.

    Args:
        pl_module: the loaded SSL module (kept as sub-module ``model``). None rebuilds it from
            ``pl_module_hparams`` (what ``load_from_checkpoint`` does).
        finetune_model: must be ``simple_mlp`` (a single Linear layer).
        num_classes: C.
        learning_rate: the backbone lr of the config; η_min of ``cosine`` derives from it.
        optimizer: the ``model.optimizer`` node as a dict: ``lr``, ``lr_linear``, ``weight_decay``.
        use_mc_samples: feed Bayes-H's M samples to the head and average the logits; else its repr.
        scheduler: ``cosine`` or ``multistep``.
        scheduler_kwargs: ``{"sch_eta_min_scale"}`` for cosine, ``{"milestones", "gamma"}`` for multistep.
        pl_module_hparams: the SSL module's hyper-parameters; taken from ``pl_module`` when None.
        **kwargs: metadata stored as hyper-parameters only (``batch_size``, ``dataset``,
            ``optimizer_name``, ``run_name``, ``model_name``, ``cl_loss_name``, ``beta_scale``,
            ``original_run_id``).

    Raises:
        ValueError: unknown ``finetune_model`` or ``scheduler``, a missing ``lr_linear``, or
            neither ``pl_module`` nor ``pl_module_hparams``.
    """

    def __init__(
        self,
        pl_module: nn.Module | None = None,
        *,
        finetune_model: str = "simple_mlp",
        num_classes: int,
        learning_rate: float,
        optimizer: dict[str, Any],
        use_mc_samples: bool = True,
        scheduler: str = "cosine",
        scheduler_kwargs: dict[str, Any] | None = None,
        pl_module_hparams: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if finetune_model not in FINETUNE_MODELS:
            raise ValueError(f"train.finetune_model={finetune_model!r} is not supported; use one of {FINETUNE_MODELS}")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"train.scheduler={scheduler!r} is not supported here; use one of {SCHEDULERS}")
        if "lr_linear" not in optimizer:
            raise ValueError("model.optimizer needs `lr_linear`, the learning rate of the linear head")
        if pl_module is None:
            if pl_module_hparams is None:
                raise ValueError("SemiSupervised needs pl_module (the loaded SSL module) or pl_module_hparams")
            from src.task import SSL_MODELS  # the SSL classes; imported late to keep imports acyclic

            pl_module = SSL_MODELS[pl_module_hparams["model_name"]](**pl_module_hparams)
        if pl_module_hparams is None:
            pl_module_hparams = dict(getattr(pl_module, "hparams", {}))
        self.save_plain_hparams(
            dict(
                finetune_model=finetune_model,
                num_classes=num_classes,
                learning_rate=learning_rate,
                optimizer=optimizer,
                use_mc_samples=use_mc_samples,
                scheduler=scheduler,
                scheduler_kwargs=scheduler_kwargs,
                pl_module_hparams=pl_module_hparams,
                **kwargs,
            )
        )
        self.model = pl_module
        self.predictor = nn.Linear(int(pl_module.encoder_out_dim), int(num_classes))
        self.train_metrics = classification_metrics(int(num_classes), "train_")
        self.val_metrics = classification_metrics(int(num_classes), "val_")
        self.test_metrics = classification_metrics(int(num_classes), "test_")

    def features(self, x: Tensor) -> Tensor:
        """[B, E], or the Bayes-H samples [M, B, L] when ``use_mc_samples``."""
        out = self.model(x)
        if self.model.stochastic_space == "H":  # forward gives the StochasticOutput of the representation
            return out.samples if self.hparams["use_mc_samples"] else out.repr
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Logits [B, C]; for MC features the mean over M of predictor(h_m)."""
        f = self.features(x)
        logits = self.predictor(f)
        if self.hparams["use_mc_samples"] and f.dim() == 3:
            logits = logits.mean(0)
        return logits

    def _step(self, batch: Any) -> tuple[Tensor, Tensor, Tensor]:
        x, y = batch
        logits = self(x).float()  # fp16 under 16-mixed; loss and metrics in fp32
        return F.cross_entropy(logits, y), logits, y

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss, logits, y = self._step(batch)
        self.train_metrics.update(logits.detach(), y)
        self.log("train_loss", loss, on_step=True, on_epoch=False, batch_size=y.shape[0])
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss, logits, y = self._step(batch)
        self.val_metrics.update(logits, y)
        # the epoch value is the unweighted mean over batches (the reference's batch_size=2 hint, Q24)
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=1)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        loss, logits, y = self._step(batch)
        self.test_metrics.update(logits, y)
        self.log("test_loss", loss, on_step=False, on_epoch=True, batch_size=1)

    def _log_metrics(self, metrics: MetricCollection) -> None:
        self.log_dict(metrics.compute(), sync_dist=True)
        metrics.reset()

    def on_train_epoch_end(self) -> None:
        self._log_metrics(self.train_metrics)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(x)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        spec = dict(hp["optimizer"])
        kwargs = optimizer_kwargs(spec, int(hp.get("batch_size") or 256))
        lr = kwargs.pop("lr")
        cls = OPTIMIZERS[optimizer_key(spec)]
        optimizer = cls(
            [
                {"params": list(self.model.parameters()), "lr": lr, "name": "backbone"},
                {"params": list(self.predictor.parameters()), "lr": float(spec["lr_linear"]), "name": "linear"},
            ],
            lr=lr,
            **kwargs,
        )
        sch_kwargs = dict(hp["scheduler_kwargs"] or {})
        if hp["scheduler"] == "cosine":
            if "sch_eta_min_scale" not in sch_kwargs:
                raise ValueError("train.scheduler_kwargs needs `sch_eta_min_scale` for the cosine scheduler")
            # one η_min for both groups, from the backbone lr (Q25/Q26)
            eta_min = float(hp["learning_rate"]) * float(sch_kwargs["sch_eta_min_scale"])
            max_epochs = int(self.trainer.max_epochs) if self.trainer.max_epochs else 1
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs, eta_min=eta_min)
        else:
            missing = {"milestones", "gamma"} - set(sch_kwargs)
            if missing:
                raise ValueError(f"train.scheduler_kwargs needs {sorted(missing)} for the multistep scheduler")
            scheduler = torch.optim.lr_scheduler.MultiStepLR(
                optimizer, milestones=list(sch_kwargs["milestones"]), gamma=float(sch_kwargs["gamma"])
            )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
