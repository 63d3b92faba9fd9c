"""The online linear probe trained alongside pretraining.

At fit start the module's probe is replaced by a fresh Linear(E -> C) with its own Adam
(lr 1e-4, no weight decay); the main optimizer never sees it (T-Q14). After every
training batch (so after the main step) the probe takes one step on the finetune view x3;
at every validation batch it is evaluated. The features are computed with the module in its
current mode, so in training the encoder's BatchNorm running statistics are updated by these
extra forwards, as in the reference (T-Q15a).

- ``autocast=True`` (the default): the features are computed under the training step's own autocast
  (the trainer's precision plugin: fp16 under ``16-mixed``, bf16 under ``bf16-mixed``, none under
  ``32-true``); the probe's Linear and its cross-entropy stay in fp32. ``autocast=False`` is the
  reference's fp32 forward outside autocast. The probe never feeds the SSL loss: only the rounding of
  its input features differs (docs/deviations.md).
- ``single_pass=True`` (the default): Bayes-H's probe features come from one encoder pass that leaves
  the BatchNorm running statistics and the random stream of the reference's two passes (the first
  pass only told the reference the output type; the probe sees the MC-mean ``repr`` of the second):
  see ``HBayesianSelfSupervisedLearning.probe_features``. ``single_pass=False`` runs the two passes.

Under DDP the probe is left out of DDP's gradient synchronisation (it never gets a gradient
from ``training_step``, which DDP would report as an unused parameter); instead it starts from
rank 0's weights and its gradients are averaged over the ranks by hand, so every rank holds
the same probe, trained on the global-batch mean loss.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from src.task.base import logs_this_step


def _distributed(trainer: pl.Trainer) -> bool:
    """Whether this is one of several DDP ranks (checked on torch first: no trainer attribute needed)."""
    return dist.is_available() and dist.is_initialized() and trainer.world_size > 1


class OnlineFineTuner(pl.Callback):
    """Linear probe on the encoder's (or Bayes-H's MC-mean) representation.

    Logs ``train_online_acc``/``train_online_loss`` at the steps the loggers write (every
    ``log_every_n_steps``) and ``val_online_acc``/``val_online_loss`` as epoch means (micro top-1 accuracy).

    Args:
        encoder_output_dim: E (stored only, as in the reference).
        num_classes: C.
        learning_rate: the probe's Adam learning rate.
        autocast: compute the features under the training step's autocast (see the module docstring).
        single_pass: Bayes-H's features from one encoder pass instead of the reference's two.
    """

    def __init__(
        self,
        encoder_output_dim: int,
        num_classes: int,
        learning_rate: float = 1e-4,
        autocast: bool = True,
        single_pass: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("autocast", autocast), ("single_pass", single_pass)):
            if not isinstance(value, bool):
                raise TypeError(f"callbacks.online_finetuner.{name} must be true or false, got {value!r}")
        self.encoder_output_dim = encoder_output_dim  # stored only, as in the reference
        self.num_classes = num_classes
        self.learning_rate = learning_rate
        self.autocast = autocast
        self.single_pass = single_pass
        self.optimizer: torch.optim.Optimizer | None = None
        self._pending_state: dict[str, Any] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Runs before the strategy wraps the module in DDP, which reads this ignore list by name
        # (the names stay valid when on_fit_start swaps in a fresh probe).
        names = [f"online_finetuner.{n}" for n, _ in pl_module.online_finetuner.named_parameters()]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(pl_module, names)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending_state is None:
            pl_module.init_downstream_model()
        # else resuming: the probe's weights were just loaded from the checkpoint; keep them
        if _distributed(trainer):  # DDP ignores the probe, so it does not broadcast it either
            for p in pl_module.online_finetuner.parameters():
                dist.broadcast(p.data, src=0)
        self.optimizer = torch.optim.Adam(pl_module.online_finetuner.parameters(), lr=self.learning_rate)
        if self._pending_state is not None:
            self.optimizer.load_state_dict(self._pending_state)
            self._pending_state = None

    def feature_context(self, trainer: pl.Trainer, x: Tensor) -> contextlib.AbstractContextManager[Any]:
        """The precision context of the features: the step's autocast (the trainer's precision plugin; a
        trainer without one has none), or with ``autocast=False`` autocast off, as the reference."""
        if not self.autocast:
            return torch.autocast(device_type=x.device.type, enabled=False)
        plugin = getattr(trainer, "precision_plugin", None)
        return plugin.forward_context() if plugin is not None else contextlib.nullcontext()

    def features(self, pl_module: pl.LightningModule, x: Tensor) -> Tensor:
        """The probe's input [B, E] (no graph: the reference's Bayes-H second forward ran with gradients
        and was detached; no_grad gives the same values)."""
        with torch.no_grad():
            return pl_module.probe_features(x, single_pass=self.single_pass)

    def shared_step(
        self, pl_module: pl.LightningModule, batch: Any, trainer: pl.Trainer | None = None
    ) -> tuple[Tensor, Tensor]:
        (_, _, x3), y = batch
        with self.feature_context(trainer, x3):
            feats = self.features(pl_module, x3)
        with torch.autocast(device_type=x3.device.type, enabled=False):  # the probe itself in fp32
            logits = pl_module.online_finetuner(feats.float())
            loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(-1) == y).float().mean()
        return loss, acc

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss, acc = self.shared_step(pl_module, batch, trainer)
        if self.optimizer is None:
            raise RuntimeError("OnlineFineTuner: on_fit_start did not run, so the probe has no optimizer")
        loss.backward()
        if _distributed(trainer):  # by hand what DDP does for its parameters: mean over ranks
            for p in pl_module.online_finetuner.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad.div_(trainer.world_size)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if logs_this_step(getattr(pl_module, "_trainer", None)):  # the steps the loggers write
            pl_module.log("train_online_acc", acc, on_step=True, on_epoch=False)
            pl_module.log("train_online_loss", loss.detach(), on_step=True, on_epoch=False)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        with torch.no_grad():
            loss, acc = self.shared_step(pl_module, batch, trainer)
        n = batch[1].shape[0]
        pl_module.log("val_online_acc", acc, on_step=False, on_epoch=True, sync_dist=True, batch_size=n)
        pl_module.log("val_online_loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=n)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()} if self.optimizer is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_state = state_dict.get("optimizer")
