"""``react``: rectified activations (Sun, Guo & Li, 2021, "ReAct: Out-of-distribution detection with
rectified activations", NeurIPS), with the energy score, as OpenOOD v1.5 scores it.

Fit: the threshold ``c`` is the ``p``-th percentile (``np.percentile``, linear interpolation) of every
entry of the ID training features ``x_i`` [N, E], flattened. Score of a batch ``x`` [B, E] with the
finetuned head's linear layer ``W`` [C, E], ``b`` [C] (``reads_head``):

    x̃ = min(x, c)                    (elementwise)
    f̃ = x̃ Wᵀ + b                     [B, C]
    conf(x) = logsumexp_k f̃_k,    pred(x) = argmax_k f̃_k

``p`` defaults to 90 and is searched over ``[85, 90, 95, 99]`` (OpenOOD's ``react.yml``). The feature is
``feats``, the head's input for every model (for Bayes-H the MC mean ``h̄``: the closed form, since the
study's MC-mean logits equal ``P(h̄)`` by linearity). OpenOOD takes the percentile over the ID
*validation* features; here it is the ID training split, as in the paper (the fit sees only that split).

``mc=True`` (off by default): for Bayes-H the MC form, ``conf = mean_s conf(h_s)`` over the samples
``h_s`` [S, B, E] and ``pred = argmax_k mean_s f̃_k(h_s)``, the threshold still fitted on ``feats``; it
reads ``samples`` and changes nothing for ssl and Bayes-Z (their head input is deterministic).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from src.ood.detectors import register
from src.ood.detectors.base import Detector, head_inputs, percentile_arg
from src.ood.features import Features


@register
class ReAct(Detector):
    """ReAct: clip the head's input at a training percentile, then the energy of the head's logits.

    Args:
        percentile: ``p`` of the clipping threshold (OpenOOD's default 90).
        mc: Bayes-H's MC form (the module docstring); False: the closed form on ``feats``.
        sweep: APS grid ``{"percentile_list": [...]}``.
        corrected_sign: unused (ReAct's sign is not inverted).
    """

    name = "react"
    needs_fit = True
    reads_head = True
    reads = frozenset({"feats"})
    fit_reads = frozenset({"feats"})

    def __init__(
        self,
        percentile: float = 90,
        mc: bool = False,
        sweep: dict[str, list[Any]] | None = None,
        corrected_sign: bool = False,
    ) -> None:
        super().__init__(sweep=sweep, corrected_sign=corrected_sign)
        self.percentile = percentile_arg(percentile, "react")
        self.set_mc(mc)
        #: the flattened training features (float32, CPU), kept so a new percentile needs no new fit
        self.activations: np.ndarray | None = None
        self.threshold: float | None = None

    def fit(self, train: Features, labels: Tensor) -> None:
        """Keep the training ``feats`` [N, E] flattened and set the threshold of ``percentile``."""
        self.activations = train.get("feats", self.name).detach().float().cpu().numpy().ravel()
        if self.activations.size == 0:
            raise ValueError("react: the fit received no training features")
        self.threshold = float(np.percentile(self.activations, self.percentile))

    def is_fitted(self) -> bool:
        return self.threshold is not None

    def set_hyperparam(self, values: list[Any]) -> None:
        """``values = [p]``; after the fit the threshold is recomputed from the kept training features."""
        self.percentile = percentile_arg(values[0], "react")
        if self.activations is not None:
            self.threshold = float(np.percentile(self.activations, self.percentile))

    def get_hyperparam(self) -> list[Any]:
        return [self.percentile]

    def score(self, features: Features) -> tuple[Tensor, Tensor]:
        """Score one batch.

        Args:
            features: reads ``feats`` [B, E] (with ``mc``, Bayes-H's ``samples`` [S, B, E]).

        Returns:
            ``pred`` int64 [B] (argmax of the clipped logits) and ``conf`` [B] (their logsumexp, the
            features' dtype).

        Raises:
            NotFittedError: before the fit or without the head.
        """
        self.check_fitted()
        assert self.threshold is not None
        logits = self.head_logits(head_inputs(features, self.mc, self.name).clamp(max=self.threshold))  # [S, B, C]
        return logits.mean(0).argmax(dim=1), torch.logsumexp(logits, dim=2).mean(0)
