"""BatchNorm running statistics of a forward pass repeated without running it again.

In training mode a BatchNorm layer with running statistics moves them toward the batch statistics s
at every forward: r <- (1 - a) r + a s (a = the momentum; with ``momentum=None`` the cumulative
average a = 1 / n, n the updated ``num_batches_tracked``) and n <- n + 1. A second forward of the same
input with the same weights sees the same s, so from the statistics before (r0, n0) and after (r1, n1)
one forward, the second forward's result is known in closed form:

    momentum a:     r2 = (1 - a) r1 + a s = r1 + (1 - a) (r1 - r0)
    momentum None:  r2 = r1 + (s - r1) / n2 = r1 + n0 (r1 - r0) / (n0 + 2)
    counter:        n2 = n1 + (n1 - n0)

A layer the forward did not touch (eval mode, or not on the forward's path) has r1 = r0 and n1 = n0,
so the same formulas leave it unchanged: no host read decides which layers ran. (SyncBatchNorm's
statistics are the global batch's at both forwards, so the formulas hold for it too.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


def _tracking(module: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``module`` (itself included) that would update running statistics now."""
    return [
        m
        for m in module.modules()
        if isinstance(m, _BatchNorm)
        and m.training
        and m.track_running_stats
        and m.running_mean is not None
        and m.running_var is not None
        and m.num_batches_tracked is not None
    ]


@contextlib.contextmanager
def running_stats_as_if_twice(module: nn.Module) -> Iterator[None]:
    """Run ONE forward of ``module`` (or of a model containing its layers) inside this context; on exit
    every BatchNorm layer of ``module`` holds the running statistics and counter that a second, identical
    forward would have left (see the module docstring). Layers in eval mode are skipped on entry.

    The forward must run without autograd (``torch.no_grad``, as the online probe's does): in training mode
    BatchNorm's backward reads the running statistics it saw, which this context then changes in place.
    """
    if torch.is_grad_enabled():
        raise RuntimeError(
            "running_stats_as_if_twice: run the forward under torch.no_grad(); the running statistics are "
            "updated in place afterwards, which a backward through the BatchNorm layers would refuse"
        )
    layers = _tracking(module)
    with torch.no_grad():
        before = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in layers]
    yield
    with torch.no_grad():
        _repeat_update(layers, before)


def _repeat_update(layers: list[_BatchNorm], before: list[tuple[Tensor, Tensor, Tensor]]) -> None:
    by_momentum: dict[float, tuple[list[Tensor], list[Tensor]]] = {}
    for m, (mean0, var0, n0) in zip(layers, before, strict=True):
        if m.momentum is None:  # cumulative average: a factor per layer from its counter (on the device)
            factor = n0.to(m.running_mean.dtype) / (n0 + 2).to(m.running_mean.dtype)
            m.running_mean.add_(factor * (m.running_mean - mean0))
            m.running_var.add_(factor * (m.running_var - var0))
        else:
            now, old = by_momentum.setdefault(float(m.momentum), ([], []))
            now += [m.running_mean, m.running_var]
            old += [mean0, var0]
    for momentum, (now, old) in by_momentum.items():
        step = torch._foreach_sub(now, old)  # r1 - r0
        torch._foreach_mul_(step, 1.0 - momentum)
        torch._foreach_add_(now, step)
    counters = [m.num_batches_tracked for m in layers]
    if counters:
        torch._foreach_add_(counters, torch._foreach_sub(counters, [n0 for _, _, n0 in before]))
