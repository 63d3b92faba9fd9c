"""``msp``: maximum softmax probability (Hendrycks & Gimpel, 2017).

    conf(x) = max_k softmax(f(x))_k,    pred(x) = argmax_k f_k(x)

with ``f`` the logits [B, C] (for Bayes-H the MC mean of the logits of the batch's S samples,
O-Q12, O-Q13). No fit and no hyper-parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor

from src.ood.detectors import register
from src.ood.detectors.base import Detector
from src.ood.features import Features


@register
class MSP(Detector):
    """Maximum softmax probability; larger = more in-distribution."""

    name = "msp"

    def score(self, features: Features) -> tuple[Tensor, Tensor]:
        """Score one batch.

        Args:
            features: reads ``logits`` [B, C].

        Returns:
            ``pred`` int64 [B] (argmax of the logits) and ``conf`` [B] (max softmax, the logits' dtype).
        """
        conf, pred = torch.softmax(features.logits, dim=1).max(dim=1)
        return pred.long(), conf
