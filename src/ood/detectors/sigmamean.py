"""``sigmamean``: mean posterior standard deviation (spec: ood.md §11.7, Quirk Q8).

On the plain view v3 only, with the posterior ``(μ, ℓ)`` [B, D] of the stochastic space
(D = 512 for Bayes-H, the representation; the embedding width for Bayes-Z):

    conf = (1/D) Σ_d exp(ℓ_d / 2),    pred = argmax logits

Deterministic given the image (σ does not depend on MC noise). Reference sign: a larger mean σ
(more uncertainty) counts as *more* in-distribution; ``corrected_sign=True`` negates it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from src.ood.detectors import register
from src.ood.detectors.base import Data, Detector, plain_view
from src.ood.wrapper import OODNetwork


def posterior(net: OODNetwork, x: Tensor, detector: str) -> tuple[Tensor, Tensor, Tensor]:
    """(logits [B, C], μ [B, D], ℓ [B, D]) of one ``return_dist`` call.

    Raises:
        ValueError: the model has no stochastic space (``dist`` is None).
    """
    logits, dist = net(x, return_dist=True)
    if dist is None:
        raise ValueError(f"{detector} needs a stochastic model (ssl_bayes_h or ssl_bayes_z); this one has no posterior")
    mu, log_var = dist
    return logits, mu, log_var


@register
class SigmaMean(Detector):
    """Mean posterior σ on the plain view (reference sign: larger σ = more ID).

    Args:
        sweep: unused (no hyper-parameters).
        corrected_sign: negate ``conf`` (larger σ = more OOD).
    """

    name = "sigmamean"
    preprocessor = "barlowtwins"
    probabilistic = True
    uses_augmented_views = False  # v3 only (Quirk Q31)
    reference_sign_inverted = True

    @torch.no_grad()
    def score(self, net: OODNetwork, data: Data) -> tuple[Tensor, Tensor]:
        """Score one batch.

        Args:
            net: a Bayes-H or Bayes-Z network; one call on v3 with ``return_dist=True``.
            data: the three views ``[v1, v2, v3]``, each [B, 3, H, W] (only v3 is used), or v3 itself.

        Returns:
            ``pred`` int64 [B] and ``conf`` float32 [B] = mean over D of exp(ℓ/2).

        Raises:
            ValueError: a model without a stochastic space.
        """
        logits, _, log_var = posterior(net, plain_view(data).to(net.device), self.name)
        conf = torch.exp(0.5 * log_var).mean(dim=1)
        return logits.argmax(dim=1).long(), conf
