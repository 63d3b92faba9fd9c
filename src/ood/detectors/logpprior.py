"""``logpprior``: log-density of the representation under the model's own prior (O-Q29, O-Q32).

The representation ``r(x)`` is ``sample_mean``: the MC mean of the S samples of the stochastic
space (h̄, D = the representation width, for Bayes-H; z̄, D = the embedding width, for Bayes-Z).
With the run's trained prior ``p`` (standard, or the per-dimension 1-D mixture of the MoG prior):

    log p(r) = Σ_d prior.log_prob(r[None])_d          (a singleton MC axis, as the reference)
    conf     = log p(r(v1)) + log p(r(v2))             (use_augumented, the study's setting)
    conf     = log p(r(v3))                            (otherwise)
    pred     = argmax of the logits on v3

A network detector: ``pred`` (and ``r(v3)``) come from the batch's features of the plain view v3;
the random augmented views v1 and v2 go through the network (the hook), each drawing fresh MC
noise. Higher density = more ID (sign not inverted).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from src.ood.detectors import register
from src.ood.detectors.base import NetworkDetector
from src.ood.features import Data, Features
from src.ood.wrapper import OODNetwork


@register
class LogPPrior(NetworkDetector):
    """Prior log-density of the (MC-mean) representation, summed over the two augmented views.

    Args:
        use_augumented: score the augmented views v1 and v2 (True, the reference config; the
            spelling is the reference's) or the plain view v3 (False).
        sweep: unused (no hyper-parameters).
        corrected_sign: unused (the sign is not inverted).
    """

    name = "logpprior"
    preprocessor = "barlowtwins"
    probabilistic = True
    # the plain-view variant scores r(v3) from the features; the augmented one reads v1/v2 itself
    reads = frozenset({"logits", "sample_mean"})
    uses_augmented_views = True

    def __init__(
        self,
        use_augumented: bool = True,
        sweep: dict[str, list[Any]] | None = None,
        corrected_sign: bool = False,
    ) -> None:
        super().__init__(sweep=sweep, corrected_sign=corrected_sign)
        self.use_augumented = bool(use_augumented)
        if self.use_augumented:
            self.reads = frozenset({"logits"})  # only the v3 logits; r(v3) is not stored
        else:
            self.uses_augmented_views = False

    @staticmethod
    def log_density(net: OODNetwork, r: Tensor) -> Tensor:
        """``log p(r)`` [B] = ``net.prior.log_prob(r[None]).sum(-1)`` for ``r`` [B, D]."""
        return net.prior.log_prob(r.unsqueeze(0)).sum(-1)

    @torch.no_grad()
    def score_network(self, net: OODNetwork, data: Data, features: Features | None) -> tuple[Tensor, Tensor]:
        """Score one batch.

        Args:
            net: a Bayes-H or Bayes-Z network (called on v1 and v2 with ``use_augumented``).
            data: the three views ``[v1, v2, v3]``, each [B, 3, H, W]; a single tensor (taken as
                v3) only when ``use_augumented`` is False.
            features: reads ``logits`` [B, C] of v3 (and ``sample_mean`` [B, D] without ``use_augumented``).

        Returns:
            ``pred`` int64 [B] (argmax of the v3 logits) and ``conf`` float32 [B].

        Raises:
            ValueError: a model without a stochastic space (O-Q32), or augmented scoring without
                the three views.
        """
        if net.stochastic_space is None:
            raise ValueError(
                "logpprior needs a stochastic model (ssl_bayes_h or ssl_bayes_z): the deterministic "
                "ssl model has no prior"
            )
        features = self.features_of(features)
        pred = features.logits.argmax(dim=1).long()
        if not self.use_augumented:
            return pred, self.log_density(net, features.get("sample_mean", self.name))
        if isinstance(data, Tensor):
            raise ValueError("logpprior with use_augumented=True needs the three views [v1, v2, v3] (barlowtwins)")
        r1 = net.features(data[0].to(net.device), {"sample_mean"}).get("sample_mean", self.name)
        r2 = net.features(data[1].to(net.device), {"sample_mean"}).get("sample_mean", self.name)
        return pred, self.log_density(net, r1) + self.log_density(net, r2)
