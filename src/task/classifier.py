"""One lifecycle for every classifier trained on top of an SSL model: the offline finetuner, the
semi-supervised finetuning and the linear probes.

A subclass says only what differs: the tensor a batch feeds it (:meth:`ClassifierTask.inputs`), its
features and head (``forward``), its loss, and its optimizer and scheduler as plain specs built through
the registries of :mod:`src.task.optim`. Everything else is here, written once:

* one metric builder, :class:`ClassificationMetrics` (names, micro or macro accuracy, ECE with 15 bins
  and the L1 norm, or mAP for multi-label probes);
* one step/log/epoch-end cycle: the loss of every batch; the metrics accumulated over the epoch and
  logged at its end (or, for the probes, the training batch's own value per step); the val/test loss
  as the unweighted mean over batches (the reference passed a batch size of 2 as the logging hint, which
  with equal batches gives exactly that mean: T-Q16, D-Q24);
* :class:`SSLHeadClassifier`: a head on a wrapped SSL module, whose Bayes-H features may be the M
  samples (logits averaged over M), μ or the MC-mean repr.

Logged names are ``<phase><separator><name>``: ``train_offline_acc``, ``val_accuracy``, ``test/accuracy``.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MultilabelAveragePrecision,
)

from src.task.base import BaseTask
from src.task.optim import build_optimizer, build_scheduler
from src.utils.registry import Registry

PHASES = ("train", "val", "test")

#: the heads a finetuner puts on the SSL module, by ``finetune_model``; each is called as
#: ``head(in_dim, num_classes)`` and must give an ``nn.Linear``-like module named ``predictor``
FINETUNE_MODELS: Registry[Any] = Registry("finetune model", config_key="finetune_model")


@FINETUNE_MODELS.register("simple_mlp")
def simple_mlp(in_dim: int, num_classes: int) -> nn.Module:
    """Despite the name, a single Linear(E -> C), as in the reference."""
    return nn.Linear(int(in_dim), int(num_classes))


def build_head(name: str, in_dim: int, num_classes: int, config_key: str) -> nn.Module:
    """The registered head ``name``; an unknown name is an error naming ``config_key`` and the known heads."""
    if name not in FINETUNE_MODELS:
        raise ValueError(f"{config_key}={name!r} is not supported; use one of {FINETUNE_MODELS.keys()}")
    return FINETUNE_MODELS[name](in_dim, num_classes)


@dataclass(frozen=True)
class ClassificationMetrics:
    """The one metric builder: which metrics a classifier logs, under which names.

    Attributes:
        accuracy: name of top-1 accuracy.
        accuracy_at_5: name of top-5 accuracy (top-C when C < 5), or None for none.
        ece: name of the expected calibration error (L1 norm, 15 bins; torchmetrics applies a softmax to
            logits, i.e. whenever a value lies outside [0, 1]).
        average: how accuracy averages over classes: ``micro`` (the fraction correct: finetuning and
            semi-supervised) or ``macro`` (the mean per-class recall: the linear probes), T-Q24, D-Q8.
        mean_average_precision: name of the multi-label metric (macro average precision).
    """

    accuracy: str = "accuracy"
    accuracy_at_5: str | None = "accuracy_at_5"
    ece: str = "ece"
    average: str = "micro"
    mean_average_precision: str = "mAP"

    def build(self, num_classes: int, prefix: str, task: str = "multiclass") -> MetricCollection:
        """The collection for one phase; ``prefix`` is e.g. ``val_`` or ``val/``."""
        if task == "multilabel":
            metrics = {self.mean_average_precision: MultilabelAveragePrecision(num_classes, average="macro")}
            return MetricCollection(metrics, prefix=prefix)
        if task != "multiclass":
            raise ValueError(f"task must be multiclass or multilabel, got {task!r}")
        metrics: dict[str, Any] = {self.accuracy: MulticlassAccuracy(num_classes, top_k=1, average=self.average)}
        if self.accuracy_at_5 is not None:
            metrics[self.accuracy_at_5] = MulticlassAccuracy(
                num_classes, top_k=min(5, num_classes), average=self.average
            )
        metrics[self.ece] = MulticlassCalibrationError(num_classes, n_bins=15, norm="l1")
        return MetricCollection(metrics, prefix=prefix)


class ClassifierTask(BaseTask, abc.ABC):
    """The shared lifecycle (see the module docstring). Subclasses call :meth:`init_metrics` in their
    constructor and define ``forward``, :meth:`optimizer_groups`, :meth:`optimizer_spec` and
    :meth:`scheduler_spec`; they may override :meth:`inputs` and :meth:`loss`."""

    #: metric names and accuracy averaging
    metrics: ClassVar[ClassificationMetrics] = ClassificationMetrics()
    #: the loss's name in the logs, after the phase and the separator
    loss_name: ClassVar[str] = "loss"
    #: between the phase and a metric name: ``_`` (``val_accuracy``) or ``/`` (``val/accuracy``)
    separator: ClassVar[str] = "_"
    #: log the training metrics per step as the batch's own value (the probes) instead of per epoch
    train_metrics_per_step: ClassVar[bool] = False
    #: log the val/test loss (epoch mean over batches); the probes log only their metrics there
    log_eval_loss: ClassVar[bool] = True
    #: the phase whose loss and epoch metrics are shown on the progress bar (display only)
    prog_bar_phase: ClassVar[str] = "val"

    def init_metrics(self, num_classes: int, task: str = "multiclass") -> None:
        """``train_metrics``, ``val_metrics`` and ``test_metrics`` (metrics hold no checkpointed state)."""
        for phase in PHASES:
            setattr(self, f"{phase}_metrics", self.metrics.build(int(num_classes), f"{phase}{self.separator}", task))
        self._updated = dict.fromkeys(PHASES, False)

    # -- what a subclass may change -------------------------------------------------------------
    def inputs(self, batch: Any) -> Tensor:
        """The tensor the classifier reads from a batch (``(x, y)`` or a bare ``x``)."""
        return batch[0] if isinstance(batch, (list, tuple)) else batch

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        """Cross-entropy of the logits."""
        return F.cross_entropy(out, y)

    def optimizer_groups(self) -> Iterable[nn.Parameter] | Iterable[dict[str, Any]]:
        """The parameters (or parameter groups) the optimizer trains."""
        return self.parameters()

    @abc.abstractmethod
    def optimizer_spec(self) -> dict[str, Any]:
        """The optimizer as a ``model.optimizer``-style node (``name`` or ``_target_``, ``lr``, ...)."""

    def scheduler_spec(self) -> dict[str, Any] | None:
        """``{"name", "learning_rate", "eta_min_scale", <scheduler options>}``, or None for no scheduler."""
        return None

    # -- the lifecycle --------------------------------------------------------------------------
    def _step(self, batch: Any) -> tuple[Tensor, Tensor, Tensor]:
        y = batch[1]
        out = self(self.inputs(batch)).float()  # fp16 under 16-mixed: the loss and metrics run in fp32
        return self.loss(out, y), out, y

    def _name(self, phase: str, name: str) -> str:
        return f"{phase}{self.separator}{name}"

    def _phase_metrics(self, phase: str) -> MetricCollection:
        return getattr(self, f"{phase}_metrics")

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss, out, y = self._step(batch)
        n = y.shape[0]
        name = self._name("train", self.loss_name)
        self.log(name, loss, on_step=True, on_epoch=False, prog_bar=self.prog_bar_phase == "train", batch_size=n)
        if self.train_metrics_per_step:
            self.log_dict(self.train_metrics(out.detach(), y), on_step=True, on_epoch=False, batch_size=n)
        else:
            self.train_metrics.update(out.detach(), y)
            self._updated["train"] = True
        return loss

    def _eval_step(self, phase: str, batch: Any) -> None:
        loss, out, y = self._step(batch)
        self._phase_metrics(phase).update(out, y)
        self._updated[phase] = True
        if self.log_eval_loss:
            # batch_size=1: the epoch value is the unweighted mean over batches (T-Q16, D-Q24)
            self.log(
                self._name(phase, self.loss_name),
                loss,
                on_step=False,
                on_epoch=True,
                prog_bar=self.prog_bar_phase == phase,
                batch_size=1,
            )

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _log_epoch_metrics(self, phase: str) -> None:
        """Compute the phase's metrics over every batch of the epoch, log them and start afresh."""
        metrics = self._phase_metrics(phase)
        if self._updated[phase]:
            self.log_dict(metrics.compute(), sync_dist=True, prog_bar=self.prog_bar_phase == phase)
        metrics.reset()
        self._updated[phase] = False

    def on_train_epoch_end(self) -> None:
        if self.train_metrics_per_step:
            self.train_metrics.reset()  # the step values are logged; this bounds ECE's stored state
        else:
            self._log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self(self.inputs(batch))

    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(
            self.optimizer_groups(), self.optimizer_spec(), int(self.hparams.get("batch_size") or 256)
        )
        spec = self.scheduler_spec()
        if spec is None:
            return optimizer
        spec = dict(spec)
        trainer = self.trainer
        scheduler = build_scheduler(
            spec.pop("name"),
            optimizer,
            learning_rate=float(spec.pop("learning_rate")),
            eta_min_scale=spec.pop("eta_min_scale", None),
            max_epochs=int(trainer.max_epochs) if trainer.max_epochs else 1,
            total_steps=lambda: int(trainer.estimated_stepping_batches),
            **spec,
        )
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


class SSLHeadClassifier(ClassifierTask):
    """A head (``predictor``) on a wrapped SSL module (``model``).

    Features: the encoder output [B, E] (``ssl``, Bayes-Z); for Bayes-H (``stochastic_space == "H"``)
    the M samples h [M, B, L] when ``use_mc_samples`` (the logits are then the mean over M of
    predictor(h_m): logits, not probabilities, are averaged), else μ when ``use_mean_for_repr``, else
    the MC-mean repr. With ``no_grad`` the SSL module runs without gradients and its features are
    detached. Read from the hyper-parameters (absent keys are false).
    """

    def attach(self, pl_module: nn.Module, finetune_model: str, num_classes: int, config_key: str) -> None:
        """Keep ``pl_module`` as ``model`` and build the head ``predictor`` of width E -> C."""
        self.model = pl_module
        self.predictor = build_head(finetune_model, int(pl_module.encoder_out_dim), int(num_classes), config_key)

    def _flag(self, key: str) -> bool:
        return bool(self.hparams.get(key, False))

    def features(self, x: Tensor) -> Tensor:
        """[B, E], or [B, L] / [M, B, L] for Bayes-H (see the class docstring)."""
        no_grad = self._flag("no_grad")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not no_grad):
            out = self.model(x)
        if self.model.stochastic_space == "H":  # forward gives the StochasticOutput of the representation
            if self._flag("use_mc_samples"):
                out = out.samples
            elif self._flag("use_mean_for_repr"):
                out = out.mu
            else:
                out = out.repr
        return out.detach() if no_grad else out

    def forward(self, x: Tensor) -> Tensor:
        """Logits [B, C]; for MC features [M, B, L] the mean over M of predictor(h_m)."""
        f = self.features(x)
        logits = self.predictor(f)
        return logits.mean(0) if f.dim() == 3 else logits
