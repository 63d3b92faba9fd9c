"""Projection heads and their application over Monte-Carlo samples (spec §3, §5.3).

The heads mirror lightly's: a ``layers`` Sequential of Linear → BatchNorm1d → ReLU blocks
and a final Linear; a Linear has a bias iff no BatchNorm follows it. State-dict keys are
therefore ``projection_head.layers.{0,1,3}`` (two blocks) and ``{0,1,3,4,6}`` (three).

Bayes-H projects samples [M, B, L]. The reference maps the head over the M slices one by
one, so every BatchNorm layer sees per-slice batch statistics and updates its running
statistics M times. :func:`batch_norm_per_slice` computes exactly that for all slices at
once: the same outputs, gradients and running statistics as the loop.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from src.utils.precision import at_least_fp32


def batch_norm_per_slice(bn: nn.BatchNorm1d, x: Tensor) -> Tensor:
    """Apply ``bn`` to each slice ``x[m]`` of ``x`` [M, B, C] as if called M times in order.

    In training mode (or without running statistics) slice m is normalised with its own
    batch mean and biased variance. Running statistics then receive the M sequential
    momentum updates r <- (1 - a) r + a s_m (unbiased variance), in closed form:
    r_M = (1 - a)^M r_0 + sum_m a (1 - a)^(M-1-m) s_m. In eval mode the running
    statistics are shared by all slices, so the plain layer is applied to [M*B, C].
    """
    m, b, c = x.shape
    use_batch_stats = bn.training or not bn.track_running_stats
    if not use_batch_stats:
        return bn(x.reshape(m * b, c)).reshape(m, b, c)
    if b < 2:
        raise ValueError(f"BatchNorm in training mode needs more than 1 sample per slice, got [M={m}, B={b}, C={c}]")

    xf = at_least_fp32(x)
    mean = xf.mean(1, keepdim=True)  # [M, 1, C]
    var = xf.var(1, unbiased=False, keepdim=True)
    y = (xf - mean) * torch.rsqrt(var + bn.eps)
    if bn.affine:
        y = y * bn.weight.to(xf.dtype) + bn.bias.to(xf.dtype)
    y = y.to(x.dtype)

    if bn.training and bn.track_running_stats:
        with torch.no_grad():
            batch_mean = mean.squeeze(1)  # [M, C]
            batch_var = var.squeeze(1) * (b / (b - 1))
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
    """Run ``layers`` on [M, B, C] with per-slice BatchNorm statistics (Linear/ReLU act on the last dim)."""
    for layer in layers:
        if isinstance(layer, nn.BatchNorm1d):
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
    """ImageNet: 3-layer Barlow Twins head; every other dataset: 2-layer head (spec §3)."""
    if dataset == "imagenet":
        blocks = [
            (in_dim, hidden_dim, True, True),
            (hidden_dim, hidden_dim, True, True),
            (hidden_dim, z_dim, False, False),
        ]
    else:
        blocks = [(in_dim, hidden_dim, True, True), (hidden_dim, z_dim, False, False)]
    return ProjectionHead(blocks)
