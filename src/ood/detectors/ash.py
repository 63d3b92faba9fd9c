"""``ash``: activation shaping, the ASH-S variant (Djurisic, Bozanic, Ashok & Liu, 2023, "Extremely simple
activation shaping for out-of-distribution detection", ICLR), with the energy score, as OpenOOD v1.5 scores it.

No fit. Per sample ``x`` [E] (a row of the batch [B, E]) and pruning percentile ``p``, with the finetuned
head's linear layer ``W`` [C, E], ``b`` [C] (``reads_head``):

    k  = E − round(E · p / 100)                  (entries kept; ``round`` half to even, as ``np.round``)
    m  = 1 on the k largest entries of x, 0 elsewhere
    s1 = Σ_j x_j,    s2 = Σ_j m_j x_j
    x̃  = m ⊙ x · exp(s1 / s2)
    f̃  = x̃ Wᵀ + b                                [C]
    conf(x) = logsumexp_k f̃_k,    pred(x) = argmax_k f̃_k

``p`` defaults to 90 and is searched over ``[65, 70, 75, 80, 85, 90, 95]`` (OpenOOD's ``ash.yml``). The
feature is ``feats``, the head's input for every model (for Bayes-H the MC mean ``h̄``: the closed form,
since the study's MC-mean logits equal ``P(h̄)`` by linearity). The method assumes non-negative
activations (a ReLU network's pooled features, as ssl and Bayes-Z have); Bayes-H's ``h̄`` may have
negative entries, where ``s1 / s2`` has no such reading (it is computed all the same). A row with
``s2 = 0`` (e.g. an all-zero ReLU feature) is shaped to zeros (OpenOOD's ``exp(s1 / s2)`` would make it NaN).

``mc=True`` (off by default): for Bayes-H the MC form, ``conf = mean_s conf(h_s)`` over the samples
``h_s`` [S, B, E] and ``pred = argmax_k mean_s f̃_k(h_s)``; it reads ``samples`` and changes nothing for
ssl and Bayes-Z (their head input is deterministic).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from src.ood.detectors import register
from src.ood.detectors.base import Detector, head_inputs, percentile_arg
from src.ood.features import Features


def ash_s(x: Tensor, percentile: float) -> Tensor:
    """ASH-S of every row of ``x`` [B, E]: the top ``E − round(E p / 100)`` entries kept, the others zeroed,
    the row scaled by ``exp(s1 / s2)`` (sums before and after the pruning). A new tensor, ``x``'s dtype.

    Raises:
        ValueError: the percentile leaves no entry (``k = 0``).
    """
    n = x.shape[1]
    k = n - round(n * percentile / 100.0)
    if k < 1:
        raise ValueError(f"ash: percentile {percentile} keeps none of the {n} activations")
    s1 = x.sum(dim=1)
    values, index = torch.topk(x, k, dim=1)
    pruned = torch.zeros_like(x).scatter_(1, index, values)
    s2 = pruned.sum(dim=1)
    # a row whose kept activations sum to 0 (e.g. an all-zero ReLU feature) stays zero: exp(s1 / 0) would
    # turn its zeros into NaN (0 · inf), where every other row's value is unchanged by the guard
    scale = torch.exp(torch.where(s2 == 0, torch.zeros_like(s1), s1 / torch.where(s2 == 0, torch.ones_like(s2), s2)))
    return pruned * scale[:, None]


@register
class ASH(Detector):
    """ASH-S: prune all but the top activations, rescale by exp(s1/s2), energy of the head's logits.

    Args:
        percentile: ``p``, the share of activations pruned (OpenOOD's default 90).
        mc: Bayes-H's MC form (the module docstring); False: the closed form on ``feats``.
        sweep: APS grid ``{"percentile_list": [...]}``.
        corrected_sign: unused (ASH's sign is not inverted).
    """

    name = "ash"
    reads_head = True
    reads = frozenset({"feats"})

    def __init__(
        self,
        percentile: float = 90,
        mc: bool = False,
        sweep: dict[str, list[Any]] | None = None,
        corrected_sign: bool = False,
    ) -> None:
        super().__init__(sweep=sweep, corrected_sign=corrected_sign)
        self.percentile = percentile_arg(percentile, "ash")
        self.set_mc(mc)

    def set_hyperparam(self, values: list[Any]) -> None:
        """``values = [p]``."""
        self.percentile = percentile_arg(values[0], "ash")

    def get_hyperparam(self) -> list[Any]:
        return [self.percentile]

    def score(self, features: Features) -> tuple[Tensor, Tensor]:
        """Score one batch.

        Args:
            features: reads ``feats`` [B, E] (with ``mc``, Bayes-H's ``samples`` [S, B, E]).

        Returns:
            ``pred`` int64 [B] (argmax of the shaped logits) and ``conf`` [B] (their logsumexp, the
            features' dtype).

        Raises:
            NotFittedError: without the head.
        """
        self.check_fitted()
        x = head_inputs(features, self.mc, self.name)  # [S, B, E]
        logits = self.head_logits(ash_s(x.flatten(0, 1), self.percentile)).unflatten(0, x.shape[:2])  # [S, B, C]
        return logits.mean(0).argmax(dim=1), torch.logsumexp(logits, dim=2).mean(0)
