"""The network seen by the OOD detectors (spec: ood.md §3, §5).

``OODNetwork`` wraps a finetuned SSL model: the SSL module (encoder, projector and, for the
Bayes models, the Gaussian head and prior) plus the finetuner's linear ``predictor``. One call
``net(x, return_feature=..., return_feature_list=..., return_embeddings=..., return_dist=...)``
returns the logits alone, or ``[logits, feats?, feature_list?, embeddings?, dist?]`` for the
flags set, in that order:

| quantity | ssl | Bayes-Z | Bayes-H |
|---|---|---|---|
| logits [B, C] | P(e) | P(e) | mean_s P(h_s) |
| feats [B, E] | e = E(x) | e | h̄ = mean_s h_s (stochastic) |
| embeddings [B, Z] | g(e) | z̄ = mean_s z_s | mean_s g(h_s) |
| dist | None | (μ_z, ℓ_z) [B, Z] | (μ, ℓ) [B, L] |

Every call draws fresh MC noise for the Bayes models, with the checkpoint's ``mc_samples``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from src.task.checkpoint import load_ssl_model
from src.utils.checkpoint import CheckpointError, load_checkpoint


class OODNetwork:
    """The wrapper contract of the reference's ``OpenOODWrapper``, device-agnostic."""

    def __init__(self, model: nn.Module, predictor: nn.Linear, input_std: tuple[float, ...] | None = None) -> None:
        self.model = model
        self.predictor = predictor
        #: per-channel std of the input normalisation (ODIN scales its gradient sign by it);
        #: set by the protocol that feeds the network
        self.input_std = input_std

    # -- properties -------------------------------------------------------------------------------
    @property
    def stochastic_space(self) -> str | None:
        """``"H"`` for Bayes-H, ``"Z"`` for Bayes-Z, None for the deterministic model."""
        return getattr(self.model, "stochastic_space", None)

    @property
    def prior(self) -> nn.Module:
        if self.stochastic_space is None:
            raise TypeError("the deterministic ssl model has no prior (it has no stochastic space)")
        return self.model.prior

    @property
    def device(self) -> torch.device:
        return next(self.predictor.parameters()).device

    @property
    def num_classes(self) -> int:
        return self.predictor.out_features

    def to(self, device: torch.device | str) -> OODNetwork:
        self.model.to(device)
        self.predictor.to(device)
        return self

    def eval(self) -> OODNetwork:
        """Eval mode for both parts: BatchNorm uses running statistics (sampling stays on)."""
        self.model.eval()
        self.predictor.eval()
        return self

    # -- the call -------------------------------------------------------------------------------
    def __call__(
        self,
        x: Tensor,
        return_feature: bool = False,
        return_feature_list: bool = False,
        return_embeddings: bool = False,
        return_dist: bool = False,
        **ignored: Any,
    ) -> Tensor | list[Any]:
        space = self.stochastic_space
        dist: tuple[Tensor, Tensor] | None = None
        if space == "H":
            feats, samples, mu, log_var, _ = self.model(x)
            # P is linear, so mean_s P(h_s) = P(h̄) (Quirk Q13); the MC mean of logits is kept.
            logits = self.predictor(samples).mean(0)
            dist = (mu, log_var)
            embeddings = self.model.projection_head(samples).mean(0) if return_embeddings else None
        elif space == "Z":
            feats = self.model(x)
            logits = self.predictor(feats)
            embeddings, _, mu, log_var, _ = self.model.project(feats)
            dist = (mu, log_var)
        else:
            feats = self.model(x)
            logits = self.predictor(feats)
            embeddings = self.model.projection_head(feats) if return_embeddings else None
        if not (return_feature or return_feature_list or return_embeddings or return_dist):
            return logits
        out: list[Any] = [logits]
        if return_feature:
            out.append(feats)
        if return_feature_list:
            out.append(self.feature_list(x))
        if return_embeddings:
            out.append(embeddings)
        if return_dist:
            out.append(dist)
        return out

    def share_encodings(self, reusable: Callable[[Tensor], bool]) -> None:
        """Remember the encoder output [B, E] of each input batch that ``reusable`` accepts.

        For a study that feeds the same input tensors to several detectors (``InputCache``):
        the encoder is deterministic in eval mode and draws no random numbers, so its output
        for a batch can be computed once and reused by every later detector and APS candidate
        of this network; the stochastic heads still sample afresh on every call. Only calls
        under ``torch.no_grad`` are shared (ODIN differentiates through the encoder), and an
        entry is used only for the very tensor it was computed from, unmodified (same object,
        same version counter).
        """
        encode = self.model.encode
        memo: dict[int, tuple[Tensor, int, Tensor]] = {}

        def shared_encode(x: Tensor) -> Tensor:
            if torch.is_grad_enabled() or not reusable(x):
                return encode(x)
            hit = memo.get(id(x))
            if hit is not None and hit[0] is x and hit[1] == x._version:
                return hit[2]
            out = encode(x)
            memo[id(x)] = (x, x._version, out)
            return out

        # An instance attribute shadows the method, so the model's own forward uses it too.
        self.model.encode = shared_encode

    def feature_list(self, x: Tensor) -> list[Tensor]:
        """The five ResNet maps GRAM uses (spec §5.2): relu(bn1(conv1 x)), layer1, layer2, layer3,
        and the average-pooled layer4 [B, 512, 1, 1]. The max-pool is skipped (identity for the
        small-image stems)."""
        enc = self.model.encoder
        h = enc.relu(enc.bn1(enc.conv1(x)))
        maps = [h]
        h = enc.layer1(h)
        maps.append(h)
        h = enc.layer2(h)
        maps.append(h)
        h = enc.layer3(h)
        maps.append(h)
        maps.append(enc.avgpool(enc.layer4(h)))
        return maps


def model_name_from_run(run_name: str) -> str:
    """The reference's prefix rule (Quirk Q25): ssl_bayes_h*, ssl_bayes_z*, anything else ssl."""
    if run_name.startswith("ssl_bayes_h"):
        return "ssl_bayes_h"
    if run_name.startswith("ssl_bayes_z"):
        return "ssl_bayes_z"
    return "ssl"


def load_ood_network(
    model_path: str | Path, finetuner_path: str | Path, model_name: str, device: torch.device | str = "cpu"
) -> OODNetwork:
    """The SSL module rebuilt from ``model.ckpt``, its weights then replaced by the copy inside the
    finetuner's ``last.ckpt`` (BatchNorm statistics updated during finetuning included; Quirk Q23),
    plus the finetuner's predictor; in eval mode on ``device``."""
    model = load_ssl_model(model_path, model_name)
    ft = load_checkpoint(finetuner_path)
    state = ft["state_dict"]
    inner = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    if not inner or "predictor.weight" not in state:
        raise CheckpointError(
            f"{finetuner_path} is not a finetuner checkpoint (no `model.*` and `predictor.*` weights); "
            "it is written by the finetune stage (+model/task@finetune=finetune)"
        )
    model.load_state_dict(inner)
    weight = state["predictor.weight"]
    predictor = nn.Linear(weight.shape[1], weight.shape[0])
    predictor.load_state_dict({"weight": weight, "bias": state["predictor.bias"]})
    return OODNetwork(model, predictor).to(device).eval()
