"""Projection heads and their application over Monte-Carlo samples.

The heads mirror lightly's: a ``layers`` Sequential of Linear → BatchNorm1d → ReLU blocks
and a final Linear; a Linear has a bias iff no BatchNorm follows it. State-dict keys are
therefore ``projection_head.layers.{0,1,3}`` (two blocks) and ``{0,1,3,4,6}`` (three).

Bayes-H projects samples [M, B, L]. The reference maps the head over the M slices one by
one, so every BatchNorm layer sees per-slice batch statistics and updates its running
statistics M times. :func:`batch_norm_per_slice` computes exactly that for all slices at
once: the same outputs, gradients and running statistics as the loop.

Under DDP with ``sync_batchnorm`` Lightning turns every BatchNorm1d into an
``nn.SyncBatchNorm``; the per-slice path then takes each slice's statistics over the global
per-slice batch (all ranks), as SyncBatchNorm does for a 2-D input.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
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


def batch_norm_per_slice(bn: _BatchNorm, x: Tensor) -> Tensor:
    """Apply ``bn`` to each slice ``x[m]`` of ``x`` [M, B, C] as if called M times in order.

    In training mode (or without running statistics) slice m is normalised with its own
    batch mean and biased variance. Running statistics then receive the M sequential
    momentum updates r <- (1 - a) r + a s_m (unbiased variance), in closed form:
    r_M = (1 - a)^M r_0 + sum_m a (1 - a)^(M-1-m) s_m. In eval mode the running
    statistics are shared by all slices, so the plain layer is applied to [M*B, C].

    ``bn`` may be an ``nn.SyncBatchNorm``: in training mode under a process group of W > 1
    ranks, slice m's mean, biased variance and (for the running statistics) unbiased
    variance N/(N-1) var are those of the global slice (N = sum of the ranks' B rows), see
    :func:`_global_slice_moments`; otherwise it behaves as a BatchNorm1d.
    """
    m, b, c = x.shape
    use_batch_stats = bn.training or not bn.track_running_stats
    if not use_batch_stats:
        return bn(x.reshape(m * b, c)).reshape(m, b, c)
    group = _sync_group(bn)
    if group is None and b < 2:
        raise ValueError(f"BatchNorm in training mode needs more than 1 sample per slice, got [M={m}, B={b}, C={c}]")
    if group is not None and b < 1:
        # a rank without rows has no local mean to contribute
        raise ValueError(f"SyncBatchNorm per slice needs at least 1 sample per rank, got [M={m}, B={b}, C={c}]")

    xf = at_least_fp32(x)
    if group is None:
        mean = xf.mean(1, keepdim=True)  # [M, 1, C]
        var = xf.var(1, unbiased=False, keepdim=True)
        unbiased: float | Tensor = b / (b - 1)
    else:
        mean, var, n = _global_slice_moments(xf, group)
        unbiased = n / (n - 1)  # with W > 1 ranks of >= 1 row each, N >= 2
    y = (xf - mean) * torch.rsqrt(var + bn.eps)
    if bn.affine:
        y = y * bn.weight.to(xf.dtype) + bn.bias.to(xf.dtype)
    y = y.to(x.dtype)

    if bn.training and bn.track_running_stats:
        with torch.no_grad():
            batch_mean = mean.squeeze(1)  # [M, C]
            batch_var = (var * unbiased).squeeze(1)
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
                powers = torch.arange(m - 1, -1, -1, device=x.device, dtype=torch.float32)
                weights = (a * (1 - a) ** powers).unsqueeze(1)  # [M, 1]
                keep = (1 - a) ** m
                bn.running_mean.mul_(keep).add_((weights * batch_mean).sum(0).to(bn.running_mean.dtype))
                bn.running_var.mul_(keep).add_((weights * batch_var).sum(0).to(bn.running_var.dtype))
                bn.num_batches_tracked.add_(m)
    return y


def apply_per_slice(layers: nn.Sequential, x: Tensor) -> Tensor:
    """Run ``layers`` on [M, B, C] with per-slice BatchNorm statistics (Linear/ReLU act on the last dim).

    BatchNorm1d and its DDP conversion nn.SyncBatchNorm (not a BatchNorm1d subclass) are both
    handled by :func:`batch_norm_per_slice`.
    """
    for layer in layers:
        if isinstance(layer, (nn.BatchNorm1d, nn.SyncBatchNorm)):
            x = batch_norm_per_slice(layer, x)
        elif isinstance(layer, (nn.Linear, nn.ReLU, nn.Identity)):
            x = layer(x)
        else:
            raise TypeError(f"apply_per_slice cannot batch layer {layer!r} over MC samples")
    return x


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
