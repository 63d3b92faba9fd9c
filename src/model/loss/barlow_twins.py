"""Barlow Twins loss, as computed by the reference (T-Q9).

For two views z1, z2 of shape [N, D]:

    z~ = (z - mean_N(z)) / std_N(z)              # unbiased std (N-1), no epsilon
    C  = z~1^T z~2 / batch_size                  # configured batch size, not N-1
    on_diag  = sum_i (C_ii - 1)^2
    off_diag = sum_{i != j} C_ij^2
    cl_loss  = on_diag + lambda * off_diag

Identical views give C_ii = (N-1)/N, so on_diag never goes below D/N^2 (0.015625 for
D=1024, N=256); this floor is the reference's and is kept.

Under DDP (W > 1 ranks) with ``gather_distributed=True`` both views are first gathered
across ranks (N = W*B rows) and C is divided by ``batch_size * W``: the loss of one process
on the global batch. The default, ``False``, is the reference's per-device loss (T-Q27).
"""

from __future__ import annotations

from typing import Any

import torch
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


def barlow_twins_terms(z1: Tensor, z2: Tensor, batch_size: int, lambda_coeff: float) -> dict[str, Tensor]:
    """All Barlow Twins terms for views ``[..., N, D]``; each term has shape ``[...]``.

    Leading dimensions are independent problems (e.g. MC samples), computed in one batched
    matmul rather than a Python loop.
    """
    z1n = (z1 - z1.mean(-2, keepdim=True)) / z1.std(-2, keepdim=True)
    z2n = (z2 - z2.mean(-2, keepdim=True)) / z2.std(-2, keepdim=True)
    c = torch.matmul(z1n.transpose(-1, -2), z2n) / batch_size  # [..., D, D]
    on_diag = (torch.diagonal(c, dim1=-2, dim2=-1) - 1).pow(2).sum(-1)
    off_diag = off_diagonal_square_sum(c)
    weighted_off_diag = lambda_coeff * off_diag
    return {
        "cl_loss": on_diag + weighted_off_diag,
        "on_diag_loss": on_diag,
        "off_diag_loss": off_diag,
        "weighted_off_diag_loss": weighted_off_diag,
    }


@LOSSES.register("barlow_twins")
class BarlowTwinsLoss(nn.Module):
    """Barlow Twins on a pair of ``[B, D]`` embeddings; returns the dict of named terms.

    Args:
        batch_size: the configured per-device batch size; the cross-correlation is divided
            by ``batch_size * W`` (W = 1 without DDP or with ``gather_distributed=False``).
        lambda_coeff: weight of the off-diagonal (redundancy-reduction) term.
        gather_distributed: under DDP, compute the loss on the global batch gathered from all
            ranks (autograd-aware); False (the default) keeps the reference's per-device loss (T-Q27).
        name, loss_kwargs: config metadata, accepted and ignored as the reference does (T-Q3).
            Any other keyword is an error (a misspelt coefficient must not fall back to its default).
    """

    mc: bool = False

    def __init__(
        self,
        batch_size: int,
        lambda_coeff: float = 5e-3,
        name: str | None = None,
        loss_kwargs: dict[str, Any] | None = None,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        self.batch_size = check_batch_size(batch_size, type(self).__name__)
        self.lambda_coeff = float(lambda_coeff)
        if not isinstance(gather_distributed, bool):
            raise TypeError(f"{type(self).__name__}: gather_distributed must be a bool, got {gather_distributed!r}")
        self.gather_distributed = gather_distributed

    def forward(self, z1: Tensor, z2: Tensor) -> dict[str, Tensor]:
        """``z1``, ``z2``: [B, D] (MC: [M, B, D]) on this rank; terms are scalars."""
        check_pair(z1, z2, type(self).__name__, mc=self.mc)
        z1, z2, world = gather_views(z1, z2, self.gather_distributed)
        with autocast_off(z1):
            terms = barlow_twins_terms(at_least_fp32(z1), at_least_fp32(z2), self.batch_size * world, self.lambda_coeff)
        return mean_over_samples(terms) if self.mc else terms

    def extra_repr(self) -> str:
        return (
            f"batch_size={self.batch_size}, lambda_coeff={self.lambda_coeff}, "
            f"gather_distributed={self.gather_distributed}"
        )


@LOSSES.register("mc_barlow_twins")
class MCBarlowTwinsLoss(BarlowTwinsLoss):
    """Barlow Twins over MC samples ``[M, B, D]``.

    Sample m of view 1 is paired with sample m of view 2, the full loss is computed per
    pair (all M pairs in one batched computation) and every returned term is averaged
    over M. Samples are never pooled into a larger batch.
    """

    mc = True
