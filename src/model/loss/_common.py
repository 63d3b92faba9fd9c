"""Shared plumbing of the contrastive losses: input checks, fp32 evaluation, MC averaging."""

from __future__ import annotations

from torch import Tensor


def off_diagonal(c: Tensor) -> Tensor:
    """All off-diagonal entries of the trailing [D, D] matrices, as [..., D*(D-1)].

    Flatten, drop the last entry, view as (D-1) x (D+1) and drop the first column:
    every off-diagonal element exactly once (the classic Barlow Twins trick), batched
    over any leading dimensions.
    """
    d = c.shape[-1]
    if c.shape[-2] != d:
        raise ValueError(f"off_diagonal expects square matrices, got shape {tuple(c.shape)}")
    lead = c.shape[:-2]
    return c.flatten(-2)[..., :-1].reshape(*lead, d - 1, d + 1)[..., 1:].flatten(-2)


def check_batch_size(batch_size: int, loss_name: str) -> int:
    """The configured batch size divides the statistics; it must allow an unbiased estimate."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise TypeError(f"{loss_name}: batch_size must be an int, got {batch_size!r}")
    if batch_size < 2:
        raise ValueError(
            f"{loss_name}: batch_size={batch_size}; the loss needs per-feature statistics over "
            "the batch (unbiased std/variance), so use a batch of at least 2 samples "
            "(dataset.batch_size)"
        )
    return batch_size


def check_pair(z1: Tensor, z2: Tensor, loss_name: str, mc: bool) -> None:
    """Shape checks done on Python ints only, so they cost no host-device sync."""
    want = 3 if mc else 2
    layout = "[mc_samples, batch, dim]" if mc else "[batch, dim]"
    if z1.dim() != want or z2.dim() != want:
        hint = (
            "the MC losses are for the Bayes-H/Bayes-Z models; use barlow_twins/vicreg with ssl"
            if not mc
            else "use the MC loss (mc_barlow_twins/mc_vicreg) only with [M, B, D] samples"
        )
        raise ValueError(
            f"{loss_name} expects two {layout} tensors, got shapes {tuple(z1.shape)} and {tuple(z2.shape)} ({hint})"
        )
    if z1.shape != z2.shape:
        raise ValueError(
            f"{loss_name}: the two views must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if z1.shape[-2] < 2:
        raise ValueError(
            f"{loss_name}: got a batch of {z1.shape[-2]} sample(s); per-feature statistics over "
            "the batch need at least 2 (check dataset.batch_size and drop_last)"
        )


def mean_over_samples(terms: dict[str, Tensor]) -> dict[str, Tensor]:
    """MC losses return, for every key, the arithmetic mean over the M per-sample values."""
    return {k: v.mean(0) for k, v in terms.items()}
