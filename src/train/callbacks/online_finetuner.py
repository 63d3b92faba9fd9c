"""The online linear probe trained alongside pretraining.

At fit start the module's probe is replaced by a fresh Linear(E -> C) with its own Adam
(lr 1e-4, no weight decay); the main optimizer never sees it (T-Q14). After every
training batch (so after the main step) the probe takes one step on the finetune view x3;
at every validation batch it is evaluated. The features are computed outside autocast
with the module in its current mode, so in training the encoder's BatchNorm running
statistics are updated by these extra forwards, as in the reference (T-Q15a); Bayes-H
runs its forward twice (the first pass only tells the output type), each with a fresh
MC draw, and the probe sees the MC-mean ``repr`` of the second.

Under DDP the probe is left out of DDP's gradient synchronisation (it never gets a gradient
from ``training_step``, which DDP would report as an unused parameter); instead it starts from
rank 0's weights and its gradients are averaged over the ranks by hand, so every rank holds
the same probe, trained on the global-batch mean loss.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel


def _distributed(trainer: pl.Trainer) -> bool:
    """Whether this is one of several DDP ranks (checked on torch first: no trainer attribute needed)."""
    return dist.is_available() and dist.is_initialized() and trainer.world_size > 1


class OnlineFineTuner(pl.Callback):
    """Linear probe on the encoder's (or Bayes-H's MC-mean) representation.

    Logs ``train_online_acc``/``train_online_loss`` per step and ``val_online_acc``/
    ``val_online_loss`` as epoch means (micro top-1 accuracy).
    """

    def __init__(self, encoder_output_dim: int, num_classes: int, learning_rate: float = 1e-4) -> None:
        super().__init__()
        self.encoder_output_dim = encoder_output_dim  # stored only, as in the reference
        self.num_classes = num_classes
        self.learning_rate = learning_rate
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

    @staticmethod
    def features(pl_module: pl.LightningModule, x: Tensor) -> Tensor:
        # The reference runs Bayes-H's second forward with gradients enabled, then detaches:
        # no_grad gives the same values without building a graph.
        with torch.no_grad():
            out = pl_module(x)
            if pl_module.stochastic_space == "H":
                out = pl_module(x).repr  # Bayes-H: second forward, fresh draw, MC-mean repr
        return out

    def shared_step(self, pl_module: pl.LightningModule, batch: Any) -> tuple[Tensor, Tensor]:
        (_, _, x3), y = batch
        with torch.autocast(device_type=x3.device.type, enabled=False):
            logits = pl_module.online_finetuner(self.features(pl_module, x3).float())
            loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(-1) == y).float().mean()
        return loss, acc

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss, acc = self.shared_step(pl_module, batch)
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
            loss, acc = self.shared_step(pl_module, batch)
        n = batch[1].shape[0]
        pl_module.log("val_online_acc", acc, on_step=False, on_epoch=True, sync_dist=True, batch_size=n)
        pl_module.log("val_online_loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=n)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()} if self.optimizer is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_state = state_dict.get("optimizer")
