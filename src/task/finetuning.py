"""Offline last-layer finetuning of a pretrained SSL module (the ``finetune`` stage).

A single Linear(E -> C) (``finetune_model="simple_mlp"``) is trained on the finetune view x3
of the three-view SSL batch (T-Q31), with AdamW on the head only and a per-epoch cosine schedule
down to 0.1 lr. The wrapped SSL module is *not* put in eval mode for the fit (T-Q15b): its
BatchNorm layers normalise with batch statistics and update their running averages on x3, and
those statistics are saved in this module's checkpoint (``model.*``), which the OOD study loads.

The lifecycle (steps, logging, metrics) is :class:`~src.task.classifier.ClassifierTask`'s; logged:
``train_offline_loss`` per step, ``val_offline_loss``/``test_offline_loss`` as epoch means over
batches, and ``<phase>_offline_acc`` (micro top-1), ``<phase>_offline_acc_at_5`` and
``<phase>_offline_ece`` at every epoch end.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from src.task.classifier import FINETUNE_MODELS, ClassificationMetrics, SSLHeadClassifier

__all__ = ["FINETUNE_MODELS", "LastLayerFinetuner"]


class LastLayerFinetuner(SSLHeadClassifier):
    """Linear head on a (frozen by ``no_grad``) SSL module.

    Features: Bayes-H's samples h [M, B, L] when ``use_mc_samples`` (logits averaged over M),
    else μ when ``use_mean_for_repr``, else the MC-mean repr; the encoder output [B, E] for
    ``ssl`` and Bayes-Z.

    Args:
        pl_module: the loaded SSL module (kept as sub-module ``model``; not a hyper-parameter).
        finetune_model: a registered head (``simple_mlp``: a single Linear layer).
        num_classes: C.
        no_grad: run the SSL module under no-grad and detach its features.
        offline_learning_rate, offline_weight_decay: AdamW of the head; cosine η_min = 0.1 lr.
        use_mc_samples, use_mean_for_repr: feature choice for Bayes-H (see above).

    The hyper-parameters are the arguments except ``pl_module``, as plain values.
    """

    metrics: ClassVar[ClassificationMetrics] = ClassificationMetrics(
        accuracy="offline_acc", accuracy_at_5="offline_acc_at_5", ece="offline_ece", average="micro"
    )
    loss_name: ClassVar[str] = "offline_loss"
    #: the positions in ``[x1, x2, x3]`` that :meth:`inputs` reads: the datamodule need not build the others
    views_read: ClassVar[tuple[int, ...]] = (2,)

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
        self.save_plain_hparams(
            dict(
                finetune_model=finetune_model,
                num_classes=num_classes,
                no_grad=no_grad,
                offline_learning_rate=offline_learning_rate,
                offline_weight_decay=offline_weight_decay,
                use_mc_samples=use_mc_samples,
                use_mean_for_repr=use_mean_for_repr,
            )
        )
        self.attach(pl_module, finetune_model, num_classes, "finetune.finetune_model")
        self.init_metrics(num_classes)

    def inputs(self, batch: Any) -> Tensor:
        """The finetune view x3 of a ``((x1, x2, x3), y)`` batch (x1 and x2 may be None: not built)."""
        return batch[0][self.views_read[0]]

    def features_ood(self, x: Tensor) -> Tensor:
        """Features for the OOD study: 3-D features averaged over the sample dimension."""
        f = self.features(x)
        return f.mean(0) if f.dim() == 3 else f

    def latent_repr(self, x: Tensor) -> torch.distributions.Normal:
        """q(h | x) of Bayes-H as a diagonal Normal with variance exp(log_var) (corrected, T-Q19)."""
        if self.model.stochastic_space != "H":
            raise TypeError("latent_repr needs a Bayes-H model (its forward returns the Gaussian parameters)")
        out = self.model(x)
        return torch.distributions.Normal(out.mu, torch.exp(0.5 * out.log_var), validate_args=False)

    def optimizer_groups(self) -> Any:
        return self.predictor.parameters()

    def optimizer_spec(self) -> dict[str, Any]:
        hp = self.hparams
        lr, wd = float(hp["offline_learning_rate"]), float(hp["offline_weight_decay"])
        return {"name": "adamw", "lr": lr, "weight_decay": wd}

    def scheduler_spec(self) -> dict[str, Any]:
        return {"name": "cosine", "learning_rate": float(self.hparams["offline_learning_rate"]), "eta_min_scale": 0.1}
