"""Semi-supervised finetuning of a pretrained SSL module (ImageNet 1 % / 10 %).

The whole SSL module (encoder and every head; only the parameters on the forward path get
gradients) is trained end to end together with a new Linear(E → C) head on labelled
``[X, Y]`` batches:

    features = model(x)                         [B, E] (ssl, Bayes-Z: the encoder output)
             | model(x).samples                 [M, B, L] (Bayes-H samples h, ``use_mc_samples``)
    logits   = mean_m predictor(h_m)            [B, C] (MC samples; re-drawn at every forward, also
                                                in val/test, D-Q26) | predictor(features)
    loss     = cross_entropy(logits, y)

Optimizer: AdamW with two parameter groups, ``backbone`` (every SSL-module parameter, lr =
``optimizer.lr`` 1e-4) and ``linear`` (the head, lr = ``optimizer.lr_linear`` 1e-3), both with
``optimizer.weight_decay`` (1e-5). Scheduler (any registered one, by ``train.scheduler``) with
``scheduler_kwargs``: ``cosine`` = CosineAnnealingLR(T_max = max_epochs, η_min = learning_rate ·
sch_eta_min_scale = 1e-5) stepped per epoch, one η_min shared by both groups (T-Q26, D-Q25);
``multistep`` = MultiStepLR(milestones, gamma).

The lifecycle is :class:`~src.task.classifier.ClassifierTask`'s. Metrics (micro, unlike the probe's
macro accuracy; T-Q24): ``accuracy`` (top-1), ``accuracy_at_5`` and ``ece`` (15 bins, L1) with
prefixes ``train_``/``val_``/``test_``, computed over each epoch; ``train_loss`` per step,
``val_loss`` and ``test_loss`` as epoch means over batches (T-Q16, D-Q24).

Hyper-parameters are plain values; the SSL module is not one, but its own (plain)
hyper-parameters are stored as ``pl_module_hparams`` so that ``load_from_checkpoint`` can
rebuild it without the pretraining checkpoint. The stored optimizer dict is never mutated
(the reference popped ``name`` and ``lr_linear`` from it, T-Q4).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from src.task.classifier import FINETUNE_MODELS, SSLHeadClassifier
from src.task.optim import SCHEDULERS, effective_lr

__all__ = ["FINETUNE_MODELS", "SemiSupervised"]


class SemiSupervised(SSLHeadClassifier):
    """End-to-end finetuning of an SSL module plus a new linear head.

    Args:
        pl_module: the loaded SSL module (kept as sub-module ``model``). None rebuilds it from
            ``pl_module_hparams`` (what ``load_from_checkpoint`` does).
        finetune_model: a registered head (``simple_mlp``: a single Linear layer).
        num_classes: C.
        learning_rate: the backbone lr of the config; η_min of ``cosine`` derives from it.
        optimizer: the ``model.optimizer`` node as a dict: ``lr``, ``lr_linear``, ``weight_decay``.
        use_mc_samples: feed Bayes-H's M samples to the head and average the logits; else its repr.
        scheduler: a registered scheduler (``cosine``, ``multistep``, ...).
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
        if scheduler not in SCHEDULERS:
            raise ValueError(
                f"train.scheduler={scheduler!r} is not a known scheduler; use one of {', '.join(SCHEDULERS.keys())}"
            )
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
        self.attach(pl_module, finetune_model, num_classes, "train.finetune_model")
        self.init_metrics(num_classes)

    def optimizer_groups(self) -> list[dict[str, Any]]:
        spec = dict(self.hparams["optimizer"])
        lr = effective_lr(spec, int(self.hparams.get("batch_size") or 256))
        return [
            {"params": list(self.model.parameters()), "lr": lr, "name": "backbone"},
            {"params": list(self.predictor.parameters()), "lr": float(spec["lr_linear"]), "name": "linear"},
        ]

    def optimizer_spec(self) -> dict[str, Any]:
        return dict(self.hparams["optimizer"])

    def scheduler_spec(self) -> dict[str, Any]:
        options = dict(self.hparams["scheduler_kwargs"] or {})
        scale = options.pop("sch_eta_min_scale", None)
        return {
            "name": self.hparams["scheduler"],
            "learning_rate": float(self.hparams["learning_rate"]),  # one η_min for both groups (T-Q26)
            "eta_min_scale": None if scale is None else float(scale),
            **options,
        }
