"""Shared plumbing of the contrastive losses: input checks, fp32 evaluation, MC averaging,
and the cross-rank gather that makes the losses see the global batch under DDP."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from src.utils.registry import Registry

#: every contrastive loss, by the name a config's ``type`` or a checkpoint may use; configs name them by
#: ``_target_`` (``model.loss._target_``). ``name`` (the loss family) and ``loss_kwargs`` are metadata.
LOSSES: Registry[type[nn.Module]] = Registry(
    "loss", config_key="model.loss", name_keys=("type",), meta_keys=("name", "loss_kwargs")
)


def _off_diagonal_rows(c: Tensor) -> Tensor:
    """A strided view [..., D-1, D] of the off-diagonal entries of the trailing [D, D] matrices (no copy).

    Flatten, drop the last entry, view as (D-1) x (D+1) and drop the first column: every
    off-diagonal element exactly once (the classic Barlow Twins trick), in row-major order.
    """
    d = c.shape[-1]
    if c.shape[-2] != d:
        raise ValueError(f"off_diagonal expects square matrices, got shape {tuple(c.shape)}")
    lead = c.shape[:-2]
    return c.contiguous().flatten(-2)[..., :-1].view(*lead, d - 1, d + 1)[..., 1:]


def off_diagonal(c: Tensor) -> Tensor:
    """All off-diagonal entries of the trailing [D, D] matrices, as [..., D*(D-1)] (a copy), batched
    over any leading dimensions."""
    return _off_diagonal_rows(c).flatten(-2)


def off_diagonal_square_sum(c: Tensor) -> Tensor:
    """``off_diagonal(c).pow(2).sum(-1)`` without the copy of the off-diagonal entries.

    The squares of the strided view come out contiguous in the same order as those of the copy, and a sum
    over the last two dimensions of a contiguous tensor is the same reduction as over its flattened last
    dimension: the values are bit-identical, with one [..., D-1, D] temporary instead of two.
    """
    return _off_diagonal_rows(c).pow(2).sum((-2, -1))


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


def distributed_world_size(group: Any = None) -> int:
    """Size of ``group`` (default: the world) when torch.distributed is initialised, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(group)
    return 1


class _AllGatherWithGrad(torch.autograd.Function):
    """``all_gather`` whose backward returns this rank's slice of the SUMMED upstream gradients.

    Forward: x [*S] on every rank -> W tensors [*S], rank order. Backward: every rank r' holds
    dL_r'/dx_r for every chunk r; the gradient of x_r is sum_r' dL_r'/dx_r (one all-reduce of
    the stacked [W, *S] gradients, then index this rank) -- the official VICReg
    ``FullGatherLayer``. torch.distributed.nn.functional.all_gather computes the same but is
    deprecated (FutureWarning on every call) and emulates reduce-scatter with W scatters on gloo.
    All ranks must pass tensors of the same shape.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> tuple[Tensor, ...]:  # type: ignore[override]
        x = x.contiguous()
        ctx.group = group
        ctx.rank = dist.get_rank(group)
        out = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(out, x, group=group)
        return tuple(out)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        stacked = torch.stack(grads)  # grads are materialised (zeros for unused outputs)
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM, group=ctx.group)
        return stacked[ctx.rank], None


def all_gather_with_grad(x: Tensor, group: Any = None) -> tuple[Tensor, ...]:
    """The W ranks' copies of ``x`` (same shape on every rank), differentiable (see above)."""
    return _AllGatherWithGrad.apply(x, group if group is not None else dist.group.WORLD)


def gather_views(z1: Tensor, z2: Tensor, enabled: bool) -> tuple[Tensor, Tensor, int]:
    """Both views of the GLOBAL batch, and the number of ranks W they come from.

    ``z1``, ``z2``: local ``[..., B, D]`` -> ``[..., W*B, D]``, concatenated along the batch
    dim (-2) in rank order, every rank getting the same tensors (one collective for the
    stacked pair). The losses then divide by ``batch_size * W``. With ``enabled=False``, or
    outside an initialised process group of W > 1, the inputs come back untouched with W = 1,
    so single-process training runs exactly the code it always ran.

    Gradients: every rank evaluates the same global loss L; the gather's backward sums the
    W ranks' dL/dz_local, i.e. W * dL/dz_local, and DDP's mean over ranks of the parameter
    gradients then gives exactly dL/dtheta of one process on the concatenated batch.
    All ranks need the same local batch size (drop_last and the distributed sampler's padding
    guarantee it).
    """
    world = distributed_world_size() if enabled else 1
    if world == 1:
        return z1, z2, 1
    gathered = torch.cat(all_gather_with_grad(torch.stack((z1, z2))), dim=-2)  # [2, ..., W*B, D]
    return gathered[0], gathered[1], world
