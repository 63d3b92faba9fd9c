"""``sigmamean``: mean posterior standard deviation (O-Q8).

On the plain view v3 only, with the posterior log-variance ``ℓ`` [B, D] of the stochastic space
(D = the representation width for Bayes-H, the embedding width for Bayes-Z):

    conf = (1/D) Σ_d exp(ℓ_d / 2),    pred = argmax logits

Deterministic given the image (σ does not depend on MC noise). Reference sign: a larger mean σ
(more uncertainty) counts as *more* in-distribution; ``corrected_sign=True`` negates it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from src.ood.detectors import register
from src.ood.detectors.base import Detector
from src.ood.features import Features


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
    reference_sign_inverted = True
    # the plain view v3 only: the reference computed v1/v2 and discarded them (O-Q31)
    reads = frozenset({"logits", "log_var"})

    def score(self, features: Features) -> tuple[Tensor, Tensor]:
        """Score one batch.

        Args:
            features: reads ``logits`` [B, C] and ``log_var`` [B, D] (of the plain view v3).

        Returns:
            ``pred`` int64 [B] and ``conf`` float32 [B] = mean over D of exp(ℓ/2).

        Raises:
            MissingFeatureError: a model without a stochastic space (a ValueError).
        """
        log_var = features.get("log_var", self.name)
        conf = torch.exp(0.5 * log_var).mean(dim=1)
        return features.logits.argmax(dim=1).long(), conf
