"""``ebo``: the energy score (Liu, Wang, Owens & Li, "Energy-based out-of-distribution detection", NeurIPS 2020).

With ``f`` the logits [B, C] and a temperature ``T > 0``:

    conf(x) = −E(x; f, T) = T · logsumexp_c(f_c(x) / T),    pred(x) = argmax_c f_c(x)

(the negative free energy; larger = more in-distribution). OpenOOD v1.5's ``ebo`` postprocessor:
default ``T = 1``, APS over ``temperature_list: [1, 10, 100, 1000]`` (``conf/ood/ebo.yaml``).

Features: ``logits`` only. For Bayes-H these are the MC mean over the S samples of the linear
predictor's logits P(h_s) (= P(h̄) up to rounding, O-Q13); for ssl and Bayes-Z they are P(e).

**MC form** (``mc: true``, off by default): for Bayes-H the score averaged over
the per-sample logits ``P(h_s) = h_s Wᵀ + b`` of the finetuned head (``reads_head``) over the S samples
``h_s`` [S, B, E], ``conf(x) = (1/S) Σ_s T · logsumexp_c(P(h_s)_c / T)``
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


def energy_score(logits: Tensor, temperature: float) -> Tensor:
    """``T · logsumexp(logits / T)`` over the classes: [B, C] → [B], in the logits' dtype."""
    return temperature * torch.logsumexp(logits / temperature, dim=1)


@register
class EBO(Detector):
    """Energy score ``T · logsumexp(f / T)``; APS over ``T``.

    Args:
        temperature: ``T`` (OpenOOD's default 1).
        mc: Bayes-H's MC form (the module docstring); False: the score of the study's logits.
        sweep: APS grid ``{"temperature_list": [...]}``.
        corrected_sign: unused (the sign is already "larger = more ID").

    Raises:
        ValueError: a temperature that is not positive.
    """

    name = "ebo"
    reads = frozenset({"logits"})

    def __init__(
        self,
        temperature: float = 1.0,
        mc: bool = False,
        sweep: dict[str, list[Any]] | None = None,
        corrected_sign: bool = False,
    ) -> None:
        super().__init__(sweep=sweep, corrected_sign=corrected_sign)
        self.temperature = self._checked(temperature)
        self.set_mc(mc, head=True)  # with it, the per-sample logits P(h_s) through the head

    @staticmethod
    def _checked(temperature: Any) -> float:
        t = float(temperature)
        if not t > 0:
            raise ValueError(f"ebo: the temperature must be positive, got {temperature!r}")
        return t

    def set_hyperparam(self, values: list[Any]) -> None:
        """``values = [temperature]``."""
        self.temperature = self._checked(values[0])

    def get_hyperparam(self) -> list[Any]:
        return [self.temperature]

    def score(self, features: Features) -> tuple[Tensor, Tensor]:
        """Score one batch.

        Args:
            features: reads ``logits`` [B, C] (with ``mc``, Bayes-H's ``samples`` [S, B, E]).

        Returns:
            ``pred`` int64 [B] (argmax of the logits) and ``conf`` [B] (the logits' dtype).
        """
        self.check_fitted()
        draws = sample_logits(self, features, self.mc)  # [S, B, C]
        conf = energy_score(draws.flatten(0, 1), self.temperature).view(draws.shape[:2]).mean(0)
        return features.logits.argmax(dim=1), conf
