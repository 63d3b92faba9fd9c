"""``gen``: generalised entropy (Liu, Lochman & Zach, "GEN: Pushing the limits of softmax-based
out-of-distribution detection", CVPR 2023).

With ``p = softmax(f(x))`` [B, C] from the logits ``f`` [B, C], ``p_(1) ≥ p_(2) ≥ … ≥ p_(C)`` its entries
sorted descending, ``γ > 0`` (the paper takes γ in (0, 1); OpenOOD's grid also has γ ≥ 1) and ``M`` the number of
largest probabilities kept:

    G_γ(p) = Σ_{j=1}^{m} p_(j)^γ (1 − p_(j))^γ,    m = min(M, C)
    conf(x) = −G_γ(p),    pred(x) = argmax_c f_c(x)

(a peaked, confident softmax has a small generalised entropy; larger conf = more in-distribution).
OpenOOD v1.5's ``gen`` postprocessor: defaults ``γ = 0.1``, ``M = 100``; APS over
``gamma_list: [0.01, 0.1, 0.5, 1, 2, 5, 10]`` × ``M_list: [10, 50, 100, 200, 500, 1000]``
(``conf/ood/gen.yaml``).

**M above the number of classes.** M is capped at C: the ``min(M, C)`` largest probabilities are
summed, which is what OpenOOD's slice ``sort(p)[:, -M:]`` gives for M > C. With C = 10 (CIFAR-10,
Fashion-MNIST) every M of the grid is ≥ C, so all M give the same scores for a given γ; the search
keeps the first of equal AUROCs, i.e. the smallest M of the grid (γ varies fastest in the candidate
order). The recorded hyper-parameter is the configured M; the effective one is ``min(M, C)``.
:meth:`GEN.score_candidates` computes the softmax and its sort once per batch and each distinct
``(γ, min(M, C))`` once, so the duplicates of the grid cost nothing.

Features: ``logits`` only. For Bayes-H these are the MC mean over the S samples of the linear
predictor's logits P(h_s) (= P(h̄) up to rounding, O-Q13), so ``p`` is the softmax of the mean logits;
for ssl and Bayes-Z they are P(e).

**MC form** (``mc: true``, off by default): for Bayes-H the score averaged over
the per-sample logits ``P(h_s) = h_s Wᵀ + b`` of the finetuned head (``reads_head``) over the S samples
``h_s`` [S, B, E], ``conf(x) = −(1/S) Σ_s G_γ(softmax(P(h_s)))``
(:func:`~src.ood.detectors.base.sample_logits`; it reads ``samples``); ``pred`` stays the argmax of the
study's logits. For ssl and Bayes-Z the head's input e is deterministic, so the option changes nothing
there.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from src.ood.detectors import register
from src.ood.detectors.base import Detector, sample_logits
from src.ood.features import Features


def sorted_softmax(logits: Tensor) -> Tensor:
    """``softmax(logits)`` [B, C] with each row sorted ascending (the largest last, as OpenOOD sorts)."""
    return torch.softmax(logits, dim=1).sort(dim=1).values


def generalized_entropy(probs_asc: Tensor, gamma: float, m: int) -> Tensor:
    """``Σ_{j≤m} p_(j)^γ (1 − p_(j))^γ`` over the ``m`` largest of ascending-sorted probabilities [B, C] → [B]
    (the last ``m`` columns, summed in that order: OpenOOD's ``sort(p)[:, -M:]``)."""
    top = probs_asc[:, probs_asc.shape[1] - m :]
    return (top.pow(gamma) * (1 - top).pow(gamma)).sum(dim=1)


@register
class GEN(Detector):
    """Negative generalised entropy of the top-M softmax probabilities; APS over ``(γ, M)``.

    Args:
        gamma: the exponent ``γ`` (OpenOOD's default 0.1).
        M: how many of the largest probabilities enter the sum (OpenOOD's default 100; capped at C
            when scoring, see the module docstring).
        mc: Bayes-H's MC form (the module docstring); False: the score of the study's logits.
        sweep: APS grid ``{"gamma_list": [...], "M_list": [...]}``.
        corrected_sign: unused (the sign is already "larger = more ID").

    Raises:
        ValueError: ``gamma`` not positive or ``M`` below 1.
    """

    name = "gen"
    reads = frozenset({"logits"})

    def __init__(
        self,
        gamma: float = 0.1,
        M: int = 100,
        mc: bool = False,
        sweep: dict[str, list[Any]] | None = None,
        corrected_sign: bool = False,
    ) -> None:
        super().__init__(sweep=sweep, corrected_sign=corrected_sign)
        self.gamma, self.M = self._checked(gamma, M)
        self.set_mc(mc, head=True)  # with it, the per-sample logits P(h_s) through the head

    @staticmethod
    def _checked(gamma: Any, m: Any) -> tuple[float, int]:
        g, k = float(gamma), int(m)
        if not g > 0:
            raise ValueError(f"gen: gamma must be positive, got {gamma!r}")
        if k < 1 or k != float(m):
            raise ValueError(f"gen: M must be a positive integer, got {m!r}")
        return g, k

    def set_hyperparam(self, values: list[Any]) -> None:
        """``values = [gamma, M]`` (the config's sweep order)."""
        self.gamma, self.M = self._checked(values[0], values[1])

    def get_hyperparam(self) -> list[Any]:
        return [self.gamma, self.M]

    def score(self, features: Features) -> tuple[Tensor, Tensor]:
        """Score one batch.

        Args:
            features: reads ``logits`` [B, C] (with ``mc``, Bayes-H's ``samples`` [S, B, E]).

        Returns:
            ``pred`` int64 [B] (argmax of the logits) and ``conf`` [B] (``−G_γ``, the logits' dtype).
        """
        self.check_fitted()
        draws = sample_logits(self, features, self.mc)  # [S, B, C]
        probs = sorted_softmax(draws.flatten(0, 1))  # [S·B, C]
        neg = -generalized_entropy(probs, self.gamma, min(self.M, probs.shape[1]))
        return features.logits.argmax(dim=1), neg.view(draws.shape[:2]).mean(0)

    def score_candidates(self, features: Features, candidates: list[list[Any]]) -> list[tuple[Tensor, Tensor]]:
        """Every candidate ``[gamma, M]`` of a search from one softmax and sort of the batch; candidates with
        the same ``(gamma, min(M, C))`` share one result (equal to ``set_hyperparam`` then ``score``)."""
        self.check_fitted()
        pred = features.logits.argmax(dim=1)
        draws = sample_logits(self, features, self.mc)  # [S, B, C]
        probs = sorted_softmax(draws.flatten(0, 1))  # [S·B, C]
        done: dict[tuple[float, int], Tensor] = {}
        out = []
        for values in candidates:
            gamma, m = self._checked(values[0], values[1])
            key = (gamma, min(m, probs.shape[1]))
            if key not in done:
                done[key] = -generalized_entropy(probs, *key).view(draws.shape[:2]).mean(0)
            out.append((pred, done[key]))
        return out
