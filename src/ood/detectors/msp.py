"""``msp``: maximum softmax probability (spec: ood.md §11.1; Hendrycks & Gimpel, 2017).

    conf(x) = max_k softmax(f(x))_k,    pred(x) = argmax_k f_k(x)

with ``f`` the network's logits (for Bayes-H, the MC mean of the logits of one fresh set of
samples per call, Quirks Q12/Q13). No setup and no hyper-parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor

from src.ood.detectors import register
from src.ood.detectors.base import Data, Detector, plain_view
from src.ood.wrapper import OODNetwork


@register
class MSP(Detector):
    """Maximum softmax probability; larger = more in-distribution."""

    name = "msp"

    @torch.no_grad()
    def score(self, net: OODNetwork, data: Data) -> tuple[Tensor, Tensor]:
        """Score one batch.

        Args:
            net: the network; called once for the logits [B, C].
            data: images [B, 3, H, W] (or a three-view list, whose plain view is used).

        Returns:
            ``pred`` int64 [B] (argmax of the logits) and ``conf`` float32 [B] (max softmax).
        """
        logits = net(plain_view(data).to(net.device))
        assert isinstance(logits, Tensor)
        conf, pred = torch.softmax(logits, dim=1).max(dim=1)
        return pred.long(), conf
