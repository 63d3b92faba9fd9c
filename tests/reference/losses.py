"""Barlow Twins and VICReg as the reference computes them, one pair of views at a time, and the MC
losses as a Python loop over the M sample pairs.

Written from the formulas (T-Q9, T-Q10), with none of the project's helpers: the unbiased std and
variance spelt out, the off-diagonal entries selected with a boolean mask, every coefficient and
divisor taken from the loss's configuration (``batch_size`` and ``z_dim`` are constants of the
config, not the tensors' sizes). Tests compare the project's batched losses with these (values and
gradients); ``benchmarks/train_step.py`` times the project against them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

BARLOW_TWINS_TERMS = ("cl_loss", "on_diag_loss", "off_diag_loss", "weighted_off_diag_loss")
VICREG_TERMS = (
    "cl_loss",
    "var_loss",
    "weighted_var_loss",
    "inv_loss",
    "weighted_inv_loss",
    "cov_loss",
    "weighted_cov_loss",
)


def _unbiased_std(z: Tensor) -> Tensor:
    """Per-feature std over the N rows, divisor N - 1, no epsilon."""
    n = z.shape[0]
    centred = z - z.sum(0) / n
    return torch.sqrt((centred**2).sum(0) / (n - 1))


def _off_diagonal_mask(d: int, device: torch.device) -> Tensor:
    return ~torch.eye(d, dtype=torch.bool, device=device)


def barlow_twins(z1: Tensor, z2: Tensor, batch_size: int, lambda_coeff: float = 5e-3) -> dict[str, Tensor]:
    """One [N, D] pair (T-Q9).

    z~ = (z - mean_N z) / std_N z            unbiased std, no epsilon
    C  = z~1^T z~2 / batch_size              the configured batch size
    on_diag = sum_i (C_ii - 1)^2;  off_diag = sum_{i != j} C_ij^2
    cl_loss = on_diag + lambda off_diag
    """
    n, d = z1.shape
    a = (z1 - z1.sum(0) / n) / _unbiased_std(z1)
    b = (z2 - z2.sum(0) / n) / _unbiased_std(z2)
    c = a.T @ b / batch_size
    on_diag = ((torch.diagonal(c) - 1) ** 2).sum()
    off_diag = (c[_off_diagonal_mask(d, c.device)] ** 2).sum()
    return {
        "cl_loss": on_diag + lambda_coeff * off_diag,
        "on_diag_loss": on_diag,
        "off_diag_loss": off_diag,
        "weighted_off_diag_loss": lambda_coeff * off_diag,
    }


def vicreg(
    za: Tensor,
    zb: Tensor,
    batch_size: int,
    z_dim: int,
    variance_coeff: float = 25.0,
    invariance_coeff: float = 25.0,
    covariance_coeff: float = 1.0,
) -> dict[str, Tensor]:
    """One [N, D] pair (T-Q10).

    centre each view over the batch first
    var_loss = (mean_d relu(1 - sqrt(var_N(z_a) + 1e-6)) + the same for z_b) / 2     unbiased variance
    inv_loss = mean over N*D of (z_a - z_b)^2                                        the centred views
    cov_loss = sum_{i!=j} (z_a^T z_a / (batch_size - 1))_ij^2 / z_dim + the same for z_b   summed
    cl_loss  = invariance inv_loss + variance var_loss + covariance cov_loss
    """
    n, d = za.shape
    a = za - za.sum(0) / n
    b = zb - zb.sum(0) / n
    mask = _off_diagonal_mask(d, za.device)

    def hinge(z: Tensor) -> Tensor:
        return torch.relu(1 - torch.sqrt((z**2).sum(0) / (n - 1) + 1e-6)).sum() / d

    def covariance(z: Tensor) -> Tensor:
        return ((z.T @ z / (batch_size - 1))[mask] ** 2).sum() / z_dim

    var_loss = (hinge(a) + hinge(b)) / 2
    inv_loss = ((a - b) ** 2).sum() / (n * d)
    cov_loss = covariance(a) + covariance(b)
    return {
        "cl_loss": invariance_coeff * inv_loss + variance_coeff * var_loss + covariance_coeff * cov_loss,
        "var_loss": var_loss,
        "weighted_var_loss": variance_coeff * var_loss,
        "inv_loss": inv_loss,
        "weighted_inv_loss": invariance_coeff * inv_loss,
        "cov_loss": cov_loss,
        "weighted_cov_loss": covariance_coeff * cov_loss,
    }


def mc(loss: Callable[..., dict[str, Tensor]], z1: Tensor, z2: Tensor, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
    """The MC loss on [M, N, D]: sample m of view 1 paired with sample m of view 2, the full loss per
    pair, every term averaged over the M pairs (samples are never pooled into a larger batch)."""
    per_sample = [loss(z1[m], z2[m], *args, **kwargs) for m in range(z1.shape[0])]
    return {k: sum(terms[k] for terms in per_sample) / len(per_sample) for k in per_sample[0]}


def _barlow_twins_of(module: Any) -> dict[str, Any]:
    return {"batch_size": module.batch_size, "lambda_coeff": module.lambda_coeff}


def _vicreg_of(module: Any) -> dict[str, Any]:
    return {
        "batch_size": module.batch_size,
        "z_dim": module.z_dim,
        "variance_coeff": module.variance_coeff,
        "invariance_coeff": module.invariance_coeff,
        "covariance_coeff": module.covariance_coeff,
    }


#: registry key -> (plain per-pair loss, the loss module's configuration as its arguments, is it MC)
REFERENCES: dict[str, tuple[Callable[..., dict[str, Tensor]], Callable[[Any], dict[str, Any]], bool]] = {
    "barlow_twins": (barlow_twins, _barlow_twins_of, False),
    "mc_barlow_twins": (barlow_twins, _barlow_twins_of, True),
    "vicreg": (vicreg, _vicreg_of, False),
    "mc_vicreg": (vicreg, _vicreg_of, True),
}


def reference_loss(key: str, module: Any, z1: Tensor, z2: Tensor) -> dict[str, Tensor]:
    """The reference value of registered loss ``key`` configured as ``module`` on (z1, z2).

    Raises:
        KeyError: no reference is written for ``key`` (add one to ``REFERENCES``).
    """
    fn, config, is_mc = REFERENCES[key]
    kwargs = config(module)
    return mc(fn, z1, z2, **kwargs) if is_mc else fn(z1, z2, **kwargs)
