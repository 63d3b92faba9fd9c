"""``logpprior``: log-density of the representation under the model's own prior (spec: ood.md §11.8, Q29, Q32).

The representation ``r(x)`` is the wrapper's ``feats`` = h̄ (MC mean of the S samples, D = 512) for
Bayes-H and its ``embeddings`` = z̄ (MC mean) for Bayes-Z. With the run's trained prior ``p``
(standard, or the per-dimension 1-D mixture of the MoG prior):

    log p(r) = Σ_d prior.log_prob(r[None])_d          (a singleton MC axis, as the reference)
    conf     = log p(r(v1)) + log p(r(v2))             (use_augumented, the study's setting)
    conf     = log p(r(v3))                            (otherwise)
    pred     = argmax of the logits on v3

The network is called on v3 first (logits and r(v3)), then on v1 and on v2 when ``use_augumented``:
three calls per batch, each drawing fresh MC noise. Higher density = more ID (sign not inverted).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from src.ood.detectors import register
from src.ood.detectors.base import Data, Detector, plain_view
from src.ood.wrapper import OODNetwork


@register
class LogPPrior(Detector):
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

    def __init__(
        self,
        use_augumented: bool = True,
        sweep: dict[str, list[Any]] | None = None,
        corrected_sign: bool = False,
    ) -> None:
        super().__init__(sweep=sweep, corrected_sign=corrected_sign)
        self.use_augumented = bool(use_augumented)

    @staticmethod
    def _representation(net: OODNetwork, x: Tensor) -> tuple[Tensor, Tensor]:
        """(logits [B, C], r [B, D]): ``feats`` for Bayes-H, ``embeddings`` for Bayes-Z."""
        if net.stochastic_space == "H":
            logits, r = net(x, return_feature=True)
        else:
            logits, r = net(x, return_embeddings=True)
        return logits, r

    @staticmethod
    def log_density(net: OODNetwork, r: Tensor) -> Tensor:
        """``log p(r)`` [B] = ``net.prior.log_prob(r[None]).sum(-1)`` for ``r`` [B, D]."""
        return net.prior.log_prob(r.unsqueeze(0)).sum(-1)

    @torch.no_grad()
    def score(self, net: OODNetwork, data: Data) -> tuple[Tensor, Tensor]:
        """Score one batch.

        Args:
            net: a Bayes-H or Bayes-Z network (called 3 times with ``use_augumented``, else once).
            data: the three views ``[v1, v2, v3]``, each [B, 3, H, W]; a single tensor (taken as
                v3) only when ``use_augumented`` is False.

        Returns:
            ``pred`` int64 [B] (argmax of the v3 logits) and ``conf`` float32 [B].

        Raises:
            ValueError: a model without a stochastic space (Q32), or augmented scoring without
                the three views.
        """
        if net.stochastic_space is None:
            raise ValueError(
                "logpprior needs a stochastic model (ssl_bayes_h or ssl_bayes_z): the deterministic "
                "ssl model has no prior"
            )
        if self.use_augumented and isinstance(data, Tensor):
            raise ValueError("logpprior with use_augumented=True needs the three views [v1, v2, v3] (barlowtwins)")
        device = net.device
        logits, r3 = self._representation(net, plain_view(data).to(device))
        pred = logits.argmax(dim=1).long()
        if not self.use_augumented:
            return pred, self.log_density(net, r3)
        _, r1 = self._representation(net, data[0].to(device))
        _, r2 = self._representation(net, data[1].to(device))
        return pred, self.log_density(net, r1) + self.log_density(net, r2)
