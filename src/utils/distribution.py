"""Element-wise Gaussian log densities.

Both helpers work on tensors of any shape and optionally reduce over ``dim``:
``reduction="avg"`` takes the mean, ``"sum"`` the sum, ``None`` returns the
element-wise tensor. Any other value is an error (the reference silently ignored
``"mean"``; see T-Q21).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LOG_2PI: float = math.log(2.0 * math.pi)  # 1.8378770664093453

_REDUCTIONS = (None, "avg", "sum")


def _check_reduction(reduction: str | None) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(
            f"reduction={reduction!r} is not supported; use one of {_REDUCTIONS} "
            "('avg' for the mean over `dim`, 'sum' for the sum, None for no reduction)"
        )


def _reduce(x: Tensor, reduction: str | None, dim: int | tuple[int, ...] | None) -> Tensor:
    if reduction is None:
        return x
    if reduction == "avg":
        return x.mean() if dim is None else x.mean(dim)
    return x.sum() if dim is None else x.sum(dim)


def log_normal_diag(
    x: Tensor,
    mu: Tensor,
    log_var: Tensor,
    reduction: str | None = None,
    dim: int | tuple[int, ...] | None = None,
) -> Tensor:
    """log N(x; mu, exp(log_var)) = -1/2 [ln 2pi + log_var + exp(-log_var) (x - mu)^2].

    ``x``, ``mu`` and ``log_var`` broadcast against each other (e.g. samples
    ``[M, B, D]`` against parameters ``[B, D]``).
    """
    _check_reduction(reduction)
    log_p = -0.5 * (LOG_2PI + log_var + torch.exp(-log_var) * (x - mu) ** 2)
    return _reduce(log_p, reduction, dim)


def log_standard_normal(
    x: Tensor,
    reduction: str | None = None,
    dim: int | tuple[int, ...] | None = None,
) -> Tensor:
    """log N(x; 0, 1) = -1/2 ln 2pi - 1/2 x^2, element-wise, optionally reduced."""
    _check_reduction(reduction)
    log_p = -0.5 * LOG_2PI - 0.5 * x**2
    return _reduce(log_p, reduction, dim)
