"""VICReg loss, as computed by the reference (T-Q10).

For two views z_a, z_b of shape [N, D]:

    z_a <- z_a - mean_N(z_a);  z_b <- z_b - mean_N(z_b)          # centred first
    s_a = sqrt(var_N(z_a) + 1e-6)                                # unbiased variance
    var_loss = ( mean_d relu(1 - s_a) + mean_d relu(1 - s_b) ) / 2
    inv_loss = mean over N*D of (z_a - z_b)^2                    # on the centred views
    cov_a = z_a^T z_a / (batch_size - 1)                         # configured batch size
    cov_loss = sum_{i!=j} cov_a_ij^2 / z_dim + sum_{i!=j} cov_b_ij^2 / z_dim   # summed
    cl_loss = invariance * inv_loss + variance * var_loss + covariance * cov_loss

Under DDP (W > 1 ranks) with ``gather_distributed=True`` both views are first gathered
across ranks (N = W*B rows) and the covariance is divided by ``batch_size * W - 1``: the
loss of one process on the global batch, as the official VICReg code computes it. The
default, ``False``, is the reference's per-device loss (T-Q27).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from src.model.loss._common import (
    LOSSES,
    check_batch_size,
    check_pair,
    gather_views,
    mean_over_samples,
    off_diagonal_square_sum,
)
from src.utils.precision import at_least_fp32, autocast_off

VARIANCE_EPS: float = 1e-6


def _covariance_term(z: Tensor, batch_size: int, z_dim: int) -> Tensor:
    z = z - z.mean(-2, keepdim=True)  # the reference re-centres here (a no-op)
    cov = torch.matmul(z.transpose(-1, -2), z) / (batch_size - 1)
    return off_diagonal_square_sum(cov) / z_dim


def vicreg_terms(
    z_a: Tensor,
    z_b: Tensor,
    batch_size: int,
    z_dim: int,
    variance_coeff: float,
    invariance_coeff: float,
    covariance_coeff: float,
) -> dict[str, Tensor]:
    """All VICReg terms for views ``[..., N, D]``; each term has shape ``[...]``."""
    z_a = z_a - z_a.mean(-2, keepdim=True)
    z_b = z_b - z_b.mean(-2, keepdim=True)

    std_a = torch.sqrt(z_a.var(-2) + VARIANCE_EPS)
    std_b = torch.sqrt(z_b.var(-2) + VARIANCE_EPS)
    var_loss = (F.relu(1 - std_a).mean(-1) + F.relu(1 - std_b).mean(-1)) / 2

    inv_loss = (z_a - z_b).pow(2).mean((-2, -1))

    cov_loss = _covariance_term(z_a, batch_size, z_dim) + _covariance_term(z_b, batch_size, z_dim)

    weighted_inv = invariance_coeff * inv_loss
    weighted_var = variance_coeff * var_loss
    weighted_cov = covariance_coeff * cov_loss
    return {
        "cl_loss": weighted_inv + weighted_var + weighted_cov,
        "var_loss": var_loss,
        "weighted_var_loss": weighted_var,
        "inv_loss": inv_loss,
        "weighted_inv_loss": weighted_inv,
        "cov_loss": cov_loss,
        "weighted_cov_loss": weighted_cov,
    }


@LOSSES.register("vicreg")
class VICRegLoss(nn.Module):
    """VICReg on a pair of ``[B, D]`` embeddings; returns the dict of named terms.

    Args:
        batch_size: configured per-device batch size; the covariance is divided by
            ``batch_size * W - 1`` (W = 1 without DDP or with ``gather_distributed=False``).
        z_dim: embedding width that divides the covariance penalty.
        variance_coeff, invariance_coeff, covariance_coeff: term weights (25, 25, 1).
        gather_distributed: under DDP, compute the loss on the global batch gathered from all
            ranks (autograd-aware); False (the default) keeps the reference's per-device loss (T-Q27).
        name, loss_kwargs: config metadata, accepted and ignored as the reference does (T-Q3).
    """

    mc: bool = False

    def __init__(
        self,
        batch_size: int,
        z_dim: int,
        variance_coeff: float = 25.0,
        invariance_coeff: float = 25.0,
        covariance_coeff: float = 1.0,
        name: str | None = None,
        loss_kwargs: dict[str, Any] | None = None,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        self.batch_size = check_batch_size(batch_size, type(self).__name__)
        if isinstance(z_dim, bool) or not isinstance(z_dim, int) or z_dim < 1:
            raise ValueError(f"{type(self).__name__}: z_dim must be a positive int, got {z_dim!r}")
        self.z_dim = z_dim
        self.variance_coeff = float(variance_coeff)
        self.invariance_coeff = float(invariance_coeff)
        self.covariance_coeff = float(covariance_coeff)
        if not isinstance(gather_distributed, bool):
            raise TypeError(f"{type(self).__name__}: gather_distributed must be a bool, got {gather_distributed!r}")
        self.gather_distributed = gather_distributed

    def forward(self, z_a: Tensor, z_b: Tensor) -> dict[str, Tensor]:
        """``z_a``, ``z_b``: [B, D] (MC: [M, B, D]) on this rank; terms are scalars."""
        check_pair(z_a, z_b, type(self).__name__, mc=self.mc)
        z_a, z_b, world = gather_views(z_a, z_b, self.gather_distributed)
        with autocast_off(z_a):
            terms = vicreg_terms(
                at_least_fp32(z_a),
                at_least_fp32(z_b),
                self.batch_size * world,
                self.z_dim,
                self.variance_coeff,
                self.invariance_coeff,
                self.covariance_coeff,
            )
        return mean_over_samples(terms) if self.mc else terms

    def extra_repr(self) -> str:
        return (
            f"batch_size={self.batch_size}, z_dim={self.z_dim}, var={self.variance_coeff}, "
            f"inv={self.invariance_coeff}, cov={self.covariance_coeff}, "
            f"gather_distributed={self.gather_distributed}"
        )


@LOSSES.register("mc_vicreg")
class MCVICRegLoss(VICRegLoss):
    """VICReg over MC samples ``[M, B, D]``: per-pair losses in one batch, each term averaged over M."""

    mc = True
