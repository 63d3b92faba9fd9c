"""``mls``: the maximum logit (Hendrycks, Basart, Mazeika, Zou, Kwon, Mostajabi, Steinhardt & Song,
"Scaling out-of-distribution detection for real-world settings", ICML 2022).

With ``f`` the logits [B, C]:

    conf(x) = max_c f_c(x),    pred(x) = argmax_c f_c(x)

(the unnormalised logit of the predicted class; larger = more in-distribution). OpenOOD v1.5's
``mls`` postprocessor: no fit, no hyper-parameters (``conf/ood/mls.yaml``).

Features: ``logits`` only. For Bayes-H these are the MC mean over the S samples of the linear
predictor's logits P(h_s) (= P(h̄) up to rounding, O-Q13); for ssl and Bayes-Z they are P(e). An MC
form (the mean over s of max_c P(h_s)_c) is not offered: it needs the per-sample logits, which
:class:`~src.ood.features.Features` does not hold.
"""

from __future__ import annotations

from torch import Tensor

from src.ood.detectors import register
from src.ood.detectors.base import Detector
from src.ood.features import Features


@register
class MLS(Detector):
    """Maximum logit; larger = more in-distribution."""

    name = "mls"
    reads = frozenset({"logits"})

    def score(self, features: Features) -> tuple[Tensor, Tensor]:
        """Score one batch.

        Args:
            features: reads ``logits`` [B, C].

        Returns:
            ``pred`` int64 [B] (argmax of the logits) and ``conf`` [B] (the maximum logit, the logits' dtype).
        """
        logits = features.logits
        return logits.argmax(dim=1), logits.max(dim=1).values
