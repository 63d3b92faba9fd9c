"""``ebo``: the energy score (Liu, Wang, Owens & Li, "Energy-based out-of-distribution detection", NeurIPS 2020).

With ``f`` the logits [B, C] and a temperature ``T > 0``:

    conf(x) = −E(x; f, T) = T · logsumexp_c(f_c(x) / T),    pred(x) = argmax_c f_c(x)

(the negative free energy; larger = more in-distribution). OpenOOD v1.5's ``ebo`` postprocessor:
default ``T = 1``, APS over ``temperature_list: [1, 10, 100, 1000]`` (``conf/ood/ebo.yaml``).

Features: ``logits`` only. For Bayes-H these are the MC mean over the S samples of the linear
predictor's logits P(h_s) (= P(h̄) up to rounding, O-Q13); for ssl and Bayes-Z they are P(e). An MC
form (the mean over s of the energy of P(h_s)) is not offered: it needs the per-sample logits, which
:class:`~src.ood.features.Features` does not hold.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from src.ood.detectors import register
from src.ood.detectors.base import Detector
from src.ood.features import Features


def energy_score(logits: Tensor, temperature: float) -> Tensor:
    """``T · logsumexp(logits / T)`` over the classes: [B, C] → [B], in the logits' dtype."""
    return temperature * torch.logsumexp(logits / temperature, dim=1)


@register
class EBO(Detector):
    """Energy score ``T · logsumexp(f / T)``; APS over ``T``.

    Args:
        temperature: ``T`` (OpenOOD's default 1).
        sweep: APS grid ``{"temperature_list": [...]}``.
        corrected_sign: unused (the sign is already "larger = more ID").

    Raises:
        ValueError: a temperature that is not positive.
    """

    name = "ebo"
    reads = frozenset({"logits"})

    def __init__(
        self, temperature: float = 1.0, sweep: dict[str, list[Any]] | None = None, corrected_sign: bool = False
    ) -> None:
        super().__init__(sweep=sweep, corrected_sign=corrected_sign)
        self.temperature = self._checked(temperature)

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
            features: reads ``logits`` [B, C].

        Returns:
            ``pred`` int64 [B] (argmax of the logits) and ``conf`` [B] (the logits' dtype).
        """
        logits = features.logits
        return logits.argmax(dim=1), energy_score(logits, self.temperature)
