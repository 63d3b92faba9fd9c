"""``mls``: the maximum logit (Hendrycks, Basart, Mazeika, Zou, Kwon, Mostajabi, Steinhardt & Song,
"Scaling out-of-distribution detection for real-world settings", ICML 2022).

With ``f`` the logits [B, C]:

    conf(x) = max_c f_c(x),    pred(x) = argmax_c f_c(x)

(the unnormalised logit of the predicted class; larger = more in-distribution). OpenOOD v1.5's
``mls`` postprocessor: no fit, no hyper-parameters (``conf/ood/mls.yaml``).

Features: ``logits`` only. For Bayes-H these are the MC mean over the S samples of the linear
predictor's logits P(h_s) (= P(h̄) up to rounding, O-Q13); for ssl and Bayes-Z they are P(e).

**MC form** (``mc: true``, off by default): for Bayes-H the score averaged over
the per-sample logits ``P(h_s) = h_s Wᵀ + b`` of the finetuned head (``reads_head``) over the S samples
``h_s`` [S, B, E], ``conf(x) = (1/S) Σ_s max_c P(h_s)_c``
(:func:`~src.ood.detectors.base.sample_logits`; it reads ``samples``); ``pred`` stays the argmax of the
study's logits. For ssl and Bayes-Z the head's input e is deterministic, so the option changes nothing
there.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from src.ood.detectors import register
from src.ood.detectors.base import Detector, sample_logits
from src.ood.features import Features


@register
class MLS(Detector):
    """Maximum logit; larger = more in-distribution.

    Args:
        mc: Bayes-H's MC form (the module docstring); False: the score of the study's logits.
        sweep: unused (no hyper-parameters).
        corrected_sign: unused (the sign is already "larger = more ID").
    """

    name = "mls"
    reads = frozenset({"logits"})

    def __init__(self, mc: bool = False, sweep: dict[str, list[Any]] | None = None, corrected_sign: bool = False):
        super().__init__(sweep=sweep, corrected_sign=corrected_sign)
        self.set_mc(mc, head=True)  # with it, the per-sample logits P(h_s) through the head

    def score(self, features: Features) -> tuple[Tensor, Tensor]:
        """Score one batch.

        Args:
            features: reads ``logits`` [B, C] (with ``mc``, Bayes-H's ``samples`` [S, B, E]).

        Returns:
            ``pred`` int64 [B] (argmax of the logits) and ``conf`` [B] (the maximum logit, the logits' dtype).
        """
        self.check_fitted()
        draws = sample_logits(self, features, self.mc)  # [S, B, C]
        return features.logits.argmax(dim=1), draws.max(dim=2).values.mean(0)
