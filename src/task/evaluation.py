"""Linear probes on frozen representations.

``LinearProbingClassifier`` puts a linear head on a frozen encoder: an SSL checkpoint of this
project or a torchvision ImageNet baseline (``resnet-18`` / ``resnet-50``).
``PreEmbeddedLinearProbingClassifier`` is the same head on stored representations (identity
encoder), which is what the DVC stages train.

For a batch the probe computes, with z the representation ([B, D], or the M MC samples of
Bayes-H as [B, M, D]):

    ẑ = z / ‖z‖₂ (over the last dim, per MC sample, no epsilon; only with ``norm_repr``, D-Q37)
    logits = W ẑ + b                      [B, C] or [B, M, C]
    logits = mean_m logits[:, m]          for MC samples (= the head applied to mean_m ẑ_m)

Metrics (multiclass): ``accuracy`` = torchmetrics ``MulticlassAccuracy`` with its default
**macro** average (mean per-class recall; D-Q8, T-Q24: the semi-supervised and finetune accuracies
are micro), ``ece`` = ``MulticlassCalibrationError`` (15 bins, L1; softmax applied by
torchmetrics to the logits). Logged as ``train/…`` per step (the batch value), ``val/…`` and
``test/…`` per epoch over the whole loader, plus ``train/loss``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from src.model.encoder import encoder_out_dim
from src.task.checkpoint import load_ssl_model
from src.task.classifier import ClassificationMetrics, ClassifierTask
from src.utils.checkpoint import load_checkpoint
from src.utils.registry import Registry

#: torchvision supervised baselines: name -> (torchvision builder, weights, representation width)
PRETRAINED_BASELINES: dict[str, tuple[str, str, int]] = {
    "resnet-50": ("resnet50", "IMAGENET1K_V2", 2048),
    "resnet-18": ("resnet18", "IMAGENET1K_V1", 512),
}


def load_pretrained_baseline(name: str) -> nn.Module:
    """A torchvision ImageNet ResNet with ``fc`` replaced by the identity (output [B, D]).

    The weights must already be in the torch hub cache: this project never downloads.

    Raises:
        FileNotFoundError: the weights file is not cached; the message says how to get it.
    """
    from torchvision import models

    arch, weights_name, _ = PRETRAINED_BASELINES[name]
    weights = models.get_weight(f"{models.get_model_weights(arch).__name__}.{weights_name}")
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if not cached.is_file():
        raise FileNotFoundError(
            f"the {name} weights ({weights_name}) are not in the torch hub cache: {cached} is missing. Copy the "
            f'file from {weights.url} there, or run `python -c "import torchvision; '
            f"torchvision.models.{arch}(weights='{weights_name}')\"` once on a machine with network access."
        )
    net = getattr(models, arch)(weights=weights)
    net.fc = nn.Identity()
    return net


def load_model_from_ckpt(model_name: str, model_path: str | os.PathLike[str]) -> pl.LightningModule:
    """An SSL module (``ssl``, ``ssl_bayes_h``, ``ssl_bayes_z``) from its checkpoint, in eval mode."""
    return load_ssl_model(model_path, model_name).eval()


def checkpoint_repr_dim(model_name: str, model_path: str | os.PathLike[str] | None) -> int:
    """D of a model without building it: 2048/512 for the baselines, else the checkpoint's ``encoder_out_dim``.

    The reference hard-coded 512 for every SSL checkpoint (D-Q12, T-Q22); reading the encoder name
    from the checkpoint gives 512 for all its (ResNet-18) runs and the right width otherwise.
    """
    if model_name in PRETRAINED_BASELINES:
        return PRETRAINED_BASELINES[model_name][2]
    if model_path is None:
        raise ValueError(f"model {model_name!r} needs a checkpoint path to know its representation width")
    hparams = load_checkpoint(model_path).get("hyper_parameters") or {}
    return encoder_out_dim(str(hparams.get("encoder", "resnet18")), hparams.get("encoder_kwargs"))


#: the probe heads by ``task``; each is ``head(in_dim, num_classes)`` with a ``loss(out, y)``
PROBE_HEADS: Registry[type[nn.Module]] = Registry("probe task", config_key="task")


@PROBE_HEADS.register("multiclass")
class MulticlassLinear(nn.Module):
    """Linear(D → C); logits out, cross-entropy loss."""

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)

    @staticmethod
    def loss(out: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(out, y)


@PROBE_HEADS.register("multilabel")
class MultilabelLinear(nn.Module):
    """Linear(D → C) followed by a sigmoid (unused by every config, D-Q31).

    Mirrors the reference: ``MultiLabelSoftMarginLoss`` is applied to the *probabilities*, a
    double sigmoid (T-Q23, D-Q33).
    """

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.linear(x))

    @staticmethod
    def loss(out: Tensor, y: Tensor) -> Tensor:
        return F.multilabel_soft_margin_loss(out, y.float())


#: the task names the probes accept
TASKS = tuple(PROBE_HEADS.keys())


class LinearProbingClassifier(ClassifierTask):
    """A linear probe on a (frozen) encoder.

    Args:
        model_name: ``resnet-50`` / ``resnet-18`` (torchvision baselines), or the SSL model name
            (``ssl``, ``ssl_bayes_h``, ``ssl_bayes_z``; ``train.name`` of the run).
        model_path: the SSL checkpoint (``<run>/checkpoints/model.ckpt``); unused for baselines.
        optim_kwargs: AdamW arguments (lr 0.01, weight_decay 5e-4 in every config); a ``name`` or
            ``_target_`` key selects another registered optimizer.
        max_epochs: stored only (the Trainer gets it from the config).
        scheduler_kwargs: ``{"milestones", "gamma"}`` of a per-epoch MultiStepLR, or None.
        num_classes: C.
        task: ``multiclass`` or ``multilabel`` (a registered probe head).
        frozen_encoder: freeze the encoder and keep it in eval mode (re-applied at every call,
            so BatchNorm never leaves eval mode during the probe's fit).
        norm_repr: L2-normalise each representation (per MC sample) before the head.
        repr_dim: D; None reads it from the encoder (``encoder_out_dim``, T-Q22). Given, it must match.

    All arguments are plain values and saved as hyper-parameters. The lifecycle is
    :class:`~src.task.classifier.ClassifierTask`'s: ``train/loss`` and ``train/<metric>`` (the
    batch's value) per step, ``val/<metric>`` and ``test/<metric>`` over the whole loader per epoch.
    """

    metrics: ClassVar[ClassificationMetrics] = ClassificationMetrics(accuracy_at_5=None, average="macro")
    separator: ClassVar[str] = "/"
    train_metrics_per_step: ClassVar[bool] = True
    log_eval_loss: ClassVar[bool] = False
    prog_bar_phase: ClassVar[str] = "train"

    def __init__(
        self,
        model_name: str,
        model_path: str | os.PathLike[str] | None,
        optim_kwargs: dict[str, Any],
        max_epochs: int,
        scheduler_kwargs: dict[str, Any] | None,
        num_classes: int,
        task: str = "multiclass",
        frozen_encoder: bool = True,
        norm_repr: bool = False,
        repr_dim: int | None = None,
    ) -> None:
        super().__init__()
        if task not in PROBE_HEADS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        encoder, dim = self.build_encoder(model_name, model_path, repr_dim)
        if repr_dim is not None and int(repr_dim) != dim:
            raise ValueError(f"repr_dim={repr_dim} but the encoder of {model_name!r} gives {dim}-d representations")
        self.save_plain_hparams(
            dict(
                model_name=model_name,
                model_path=None if model_path is None else str(model_path),
                optim_kwargs=optim_kwargs,
                max_epochs=max_epochs,
                scheduler_kwargs=scheduler_kwargs,
                num_classes=num_classes,
                task=task,
                frozen_encoder=frozen_encoder,
                norm_repr=norm_repr,
                repr_dim=dim,
            ),
            logger=True,
        )
        self.encoder = encoder
        self.repr_dim = dim
        if frozen_encoder:
            self._freeze_encoder()
        self.predictor = PROBE_HEADS[task](dim, int(num_classes))
        self.init_metrics(num_classes, task)

    def build_encoder(
        self, model_name: str, model_path: str | os.PathLike[str] | None, repr_dim: int | None
    ) -> tuple[nn.Module, int]:
        """(encoder, D): a torchvision baseline or an SSL module loaded from ``model_path`` (D its own)."""
        if model_name in PRETRAINED_BASELINES:
            return load_pretrained_baseline(model_name), PRETRAINED_BASELINES[model_name][2]
        if model_path is None:
            raise ValueError(f"model {model_name!r} is not a torchvision baseline, so it needs model_path")
        model = load_model_from_ckpt(model_name, model_path)
        return model, int(model.encoder_out_dim)

    def _freeze_encoder(self) -> None:
        for p in self.encoder.parameters():
            p.requires_grad = False
        self.encoder.eval()

    def forward_repr(self, x: Tensor) -> Tensor:
        """Representations [B, D]; for Bayes-H the MC samples h transposed to [B, M, D]."""
        if self.hparams["frozen_encoder"]:
            self._freeze_encoder()  # Lightning's .train() at fit start would flip BatchNorm back
        out = self.encoder(x)
        if getattr(self.encoder, "stochastic_space", None) == "H":  # Bayes-H gives its StochasticOutput
            return out.samples.transpose(0, 1)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Logits [B, C] (probabilities for multilabel), MC logits averaged over the sample axis."""
        z = self.forward_repr(x)
        if self.hparams["norm_repr"]:
            # no epsilon, as the reference: a zero vector gives NaN (D-Q37)
            z = z / torch.linalg.vector_norm(z, dim=-1, keepdim=True)
        out = self.predictor(z)
        if out.dim() == 3:
            out = out.mean(dim=1)
        return out

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        return self.predictor.loss(out, y)

    def optimizer_spec(self) -> dict[str, Any]:
        return {"name": "adamw", **dict(self.hparams["optim_kwargs"])}

    def scheduler_spec(self) -> dict[str, Any] | None:
        sch = self.hparams["scheduler_kwargs"]
        if sch is None:
            return None
        return {"name": "multistep", "learning_rate": float(self.optimizer_spec().get("lr", 0.0)), **dict(sch)}


class PreEmbeddedLinearProbingClassifier(LinearProbingClassifier):
    """The probe on stored representations: identity encoder, ``forward_repr(x) = x``.

    D is ``repr_dim`` when given, else 2048/512 for the baselines and the checkpoint's
    ``encoder_out_dim`` for SSL runs (the reference: 2048 for ``resnet-50``, 512 otherwise).
    """

    def build_encoder(
        self, model_name: str, model_path: str | os.PathLike[str] | None, repr_dim: int | None
    ) -> tuple[nn.Module, int]:
        dim = int(repr_dim) if repr_dim is not None else checkpoint_repr_dim(model_name, model_path)
        return nn.Identity(), dim

    def forward_repr(self, x: Tensor) -> Tensor:
        return x
