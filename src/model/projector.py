"""Projection heads and their application over Monte-Carlo samples.

The heads mirror lightly's: a ``layers`` Sequential of Linear → BatchNorm1d → ReLU blocks
and a final Linear; a Linear has a bias iff no BatchNorm follows it. State-dict keys are
therefore ``projection_head.layers.{0,1,3}`` (two blocks) and ``{0,1,3,4,6}`` (three).

Bayes-H projects samples [M, B, L]. The reference maps the head over the M slices one by
one, so every BatchNorm layer sees per-slice batch statistics and updates its running
statistics M times. :func:`batch_norm_per_slice` computes exactly that for all slices at
once: the same outputs, gradients and running statistics as the loop, with one native
``batch_norm`` call on a [B, M*C] view (each (slice, channel) pair a channel) and the M
running-statistics updates in closed form.

Under DDP with ``sync_batchnorm`` Lightning turns every BatchNorm1d into an
``nn.SyncBatchNorm``; the per-slice path then takes each slice's statistics over the global
per-slice batch (all ranks), as SyncBatchNorm does for a 2-D input.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from src.model.loss._common import all_gather_with_grad
from src.utils.precision import at_least_fp32

_BatchNorm = nn.BatchNorm1d | nn.SyncBatchNorm


def _sync_group(bn: nn.Module) -> Any | None:
    """The process group whose ranks share ``bn``'s batch statistics, or None (local statistics).

    Mirrors ``nn.SyncBatchNorm.forward``: only a SyncBatchNorm, only in training mode, only
    under an initialised process group of more than one rank.
    """
    if not (isinstance(bn, nn.SyncBatchNorm) and bn.training and dist.is_available() and dist.is_initialized()):
        return None
    group = bn.process_group if bn.process_group is not None else dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


def _global_slice_moments(xf: Tensor, group: Any) -> tuple[Tensor, Tensor, Tensor]:
    """Per-slice mean and biased variance of ``xf`` [M, B_r, C] over all ranks' rows.

    Returns mean [M, 1, C], variance [M, 1, C] and the global count N = sum_r B_r as a
    [M, 1, C] tensor (kept on the device: no host sync). Each rank contributes its count
    n_r, mean mu_r and sum of squared deviations S_r; they are combined exactly (Chan et al.):
        mu  = sum_r n_r mu_r / N
        var = sum_r (S_r + n_r (mu_r - mu)^2) / N
    which, unlike sum-of-squares minus squared mean, does not cancel catastrophically. The
    gather is autograd-aware (backward sums the ranks' gradients), so every rank's input
    receives the gradient of the global statistics, as with nn.SyncBatchNorm.
    """
    b = xf.shape[1]
    mean_r = xf.mean(1)  # [M, C]
    ssd_r = (xf - mean_r.unsqueeze(1)).pow(2).sum(1)  # [M, C]
    count_r = torch.full_like(mean_r, float(b))
    stats = torch.stack(all_gather_with_grad(torch.stack((count_r, mean_r, ssd_r)), group))  # [W, 3, M, C]
    counts, means, ssds = stats.unbind(1)  # each [W, M, C]
    n = counts.sum(0)
    mean = (counts * means).sum(0) / n
    var = (ssds + counts * (means - mean).pow(2)).sum(0) / n
    return mean.unsqueeze(1), var.unsqueeze(1), n.unsqueeze(1)


def _update_running_stats(bn: _BatchNorm, batch_mean: Tensor, batch_var: Tensor) -> None:
    """The M sequential momentum updates of ``bn``'s running statistics by the slices' batch mean and
    unbiased variance ([M, C] each), in closed form (see :func:`batch_norm_per_slice`)."""
    m = batch_mean.shape[0]
    with torch.no_grad():
        if bn.momentum is None:
            # Cumulative moving average: the factor changes with every update.
            for i in range(m):
                bn.num_batches_tracked.add_(1)
                a = 1.0 / bn.num_batches_tracked.to(bn.running_mean.dtype)  # stays on device
                bn.running_mean.mul_(1 - a).add_(a * batch_mean[i].to(bn.running_mean.dtype))
                bn.running_var.mul_(1 - a).add_(a * batch_var[i].to(bn.running_var.dtype))
        else:
            a = float(bn.momentum)
            # weight of slice i after all M updates: a (1 - a)^(M - 1 - i)
            dtype = torch.promote_types(bn.running_mean.dtype, torch.float32)  # float64 statistics stay float64
            powers = torch.arange(m - 1, -1, -1, device=batch_mean.device, dtype=dtype)
            weights = (a * (1 - a) ** powers).unsqueeze(1)  # [M, 1]
            keep = (1 - a) ** m
            bn.running_mean.mul_(keep).add_((weights * batch_mean.to(dtype)).sum(0).to(bn.running_mean.dtype))
            bn.running_var.mul_(keep).add_((weights * batch_var.to(dtype)).sum(0).to(bn.running_var.dtype))
            bn.num_batches_tracked.add_(m)


def _batch_norm_synced(bn: _BatchNorm, x: Tensor, group: Any) -> Tensor:
    """Per-slice SyncBatchNorm on [M, B_r, C]: each slice normalised with its global (all ranks) statistics."""
    m, b, c = x.shape
    if b < 1:
        # a rank without rows has no local mean to contribute
        raise ValueError(f"SyncBatchNorm per slice needs at least 1 sample per rank, got [M={m}, B={b}, C={c}]")
    xf = at_least_fp32(x)
    mean, var, n = _global_slice_moments(xf, group)
    y = (xf - mean) * torch.rsqrt(var + bn.eps)
    if bn.affine:
        y = y * bn.weight.to(xf.dtype) + bn.bias.to(xf.dtype)
    if bn.training and bn.track_running_stats:
        # with W > 1 ranks of >= 1 row each, N >= 2
        _update_running_stats(bn, mean.squeeze(1), (var * n / (n - 1)).squeeze(1))
    return y.to(x.dtype)


def batch_norm_slices_last(bn: _BatchNorm, x: Tensor) -> Tensor:
    """:func:`batch_norm_per_slice` for slices laid out as [B, M, C] (contiguous): returns [B, M, C].

    Training mode (or no running statistics), local statistics: ONE native ``F.batch_norm`` on the free
    view [B, M*C] with the affine weight and bias repeated M times, so every (slice, channel) pair is its
    own channel with its own batch statistics, as in the reference's M calls. The kernel writes those
    statistics (the mean and the unbiased variance) into scratch [M*C] buffers (momentum 1 replaces
    their content exactly), from which the layer's running statistics get the closed-form update of M
    sequential calls.
    """
    b, m, c = x.shape
    use_batch_stats = bn.training or not bn.track_running_stats
    if not use_batch_stats:  # eval with running statistics: shared by all slices
        return bn(x.reshape(b * m, c)).view(b, m, c)
    group = _sync_group(bn)
    if group is not None:
        return _batch_norm_synced(bn, x.transpose(0, 1), group).transpose(0, 1).contiguous()
    if b < 2:
        raise ValueError(f"BatchNorm in training mode needs more than 1 sample per slice, got [M={m}, B={b}, C={c}]")
    weight = bn.weight.repeat(m) if bn.affine else None
    bias = bn.bias.repeat(m) if bn.affine else None
    flat = x.contiguous().view(b, m * c)
    if not (bn.training and bn.track_running_stats):
        y = F.batch_norm(flat, None, None, weight, bias, training=True, momentum=0.0, eps=bn.eps)
        return y.view(b, m, c)
    stats_dtype = bn.running_mean.dtype
    batch_mean = torch.zeros(m * c, dtype=stats_dtype, device=x.device)
    batch_var = torch.ones(m * c, dtype=stats_dtype, device=x.device)
    y = F.batch_norm(flat, batch_mean, batch_var, weight, bias, training=True, momentum=1.0, eps=bn.eps)
    _update_running_stats(bn, batch_mean.view(m, c), batch_var.view(m, c))
    return y.view(b, m, c)


def batch_norm_per_slice(bn: _BatchNorm, x: Tensor) -> Tensor:
    """Apply ``bn`` to each slice ``x[m]`` of ``x`` [M, B, C] as if called M times in order.

    In training mode (or without running statistics) slice m is normalised with its own
    batch mean and biased variance. Running statistics then receive the M sequential
    momentum updates r <- (1 - a) r + a s_m (unbiased variance), in closed form:
    r_M = (1 - a)^M r_0 + sum_m a (1 - a)^(M-1-m) s_m. In eval mode the running
    statistics are shared by all slices, so the plain layer is applied to [M*B, C].
    The normalisation itself is one native ``F.batch_norm`` on [B, M*C] (see
    :func:`batch_norm_slices_last`; one transposing copy of ``x`` and one of the result).

    ``bn`` may be an ``nn.SyncBatchNorm``: in training mode under a process group of W > 1
    ranks, slice m's mean, biased variance and (for the running statistics) unbiased
    variance N/(N-1) var are those of the global slice (N = sum of the ranks' B rows), see
    :func:`_global_slice_moments`; otherwise it behaves as a BatchNorm1d.
    """
    return batch_norm_slices_last(bn, x.transpose(0, 1).contiguous()).transpose(0, 1).contiguous()


def apply_per_slice(layers: nn.Sequential, x: Tensor) -> Tensor:
    """Run ``layers`` on [M, B, C] with per-slice BatchNorm statistics (Linear/ReLU act on the last dim).

    From the first BatchNorm on, the activations are kept as [B, M, C] (Linear and ReLU do not care), so
    every BatchNorm reads its [B, M*C] view without a copy: one transposing copy in (at the first
    BatchNorm) and one out. BatchNorm1d and its DDP conversion nn.SyncBatchNorm (not a BatchNorm1d
    subclass) are both handled by :func:`batch_norm_slices_last`.
    """
    slices_last = False  # whether x is [B, M, C]
    for layer in layers:
        if isinstance(layer, (nn.BatchNorm1d, nn.SyncBatchNorm)):
            if not slices_last:
                x, slices_last = x.transpose(0, 1).contiguous(), True
            x = batch_norm_slices_last(layer, x)
        elif isinstance(layer, (nn.Linear, nn.ReLU, nn.Identity)):
            x = layer(x)
        else:
            raise TypeError(f"apply_per_slice cannot batch layer {layer!r} over MC samples")
    return x.transpose(0, 1).contiguous() if slices_last else x


class ProjectionHead(nn.Module):
    """MLP projection head from (in, out, batch_norm, relu) blocks, lightly's layout.

    ``forward`` accepts [B, in] or MC samples [M, B, in]; the latter keeps the reference's
    per-slice BatchNorm statistics (see :func:`batch_norm_per_slice`).
    """

    def __init__(self, blocks: list[tuple[int, int, bool, bool]]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for in_dim, out_dim, batch_norm, relu in blocks:
            layers.append(nn.Linear(in_dim, out_dim, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(out_dim))
            if relu:
                layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            return self.layers(x)
        if x.dim() == 3:
            return apply_per_slice(self.layers, x)
        raise ValueError(f"ProjectionHead expects [B, D] or [M, B, D], got {tuple(x.shape)}")


def build_projection_head(dataset: str, in_dim: int, hidden_dim: int, z_dim: int) -> ProjectionHead:
    """ImageNet (the exact name): 3-layer Barlow Twins head; every other dataset: 2-layer head."""
    if dataset == "imagenet":
        blocks = [
            (in_dim, hidden_dim, True, True),
            (hidden_dim, hidden_dim, True, True),
            (hidden_dim, z_dim, False, False),
        ]
    else:
        blocks = [(in_dim, hidden_dim, True, True), (hidden_dim, z_dim, False, False)]
    return ProjectionHead(blocks)
