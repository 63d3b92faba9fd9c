"""Optimizers and learning-rate schedulers built from plain values (spec §8, Quirks Q4, Q13, Q26).

An optimizer spec is the composed ``model.optimizer`` node as a dict, e.g.
``{"_target_": "torch.optim.AdamW", "name": "adamw", "scale_lr": True, "lr": 1e-3,
"weight_decay": 1e-4}``. Nothing is mutated: the effective lr is computed, not written back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from timm.optim import Lars
from torch import nn

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
    "lars": Lars,
}

_TARGETS: dict[str, str] = {
    "torch.optim.AdamW": "adamw",
    "torch.optim.Adam": "adam",
    "torch.optim.SGD": "sgd",
    "timm.optim.Lars": "lars",
    "timm.optim.lars.Lars": "lars",
    "lightly.utils.lars.LARS": "lars",  # the reference's class; timm's Lars is used instead
}

# Keys of an optimizer spec that are not optimizer arguments.
META_KEYS = frozenset({"_target_", "_partial_", "name", "scale_lr", "lr_linear"})


def optimizer_key(spec: dict[str, Any]) -> str:
    target = spec.get("_target_")
    if target is not None:
        if target not in _TARGETS:
            raise ValueError(f"model.optimizer._target_={target!r} is not a known optimizer; known: {sorted(_TARGETS)}")
        return _TARGETS[target]
    name = spec.get("name")
    if name in OPTIMIZERS:
        return name
    raise ValueError(
        f"model.optimizer needs a `_target_` (one of {sorted(_TARGETS)}) or a `name` "
        f"(one of {sorted(OPTIMIZERS)}); got {spec!r}"
    )


def effective_lr(spec: dict[str, Any], batch_size: int) -> float:
    """lr, multiplied by batch_size / 256 when ``scale_lr`` is true (per-device batch, Q27)."""
    if "lr" not in spec:
        raise ValueError(f"model.optimizer has no `lr`: {spec!r}")
    lr = float(spec["lr"])
    return lr * batch_size / 256 if spec.get("scale_lr", False) else lr


def optimizer_kwargs(spec: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """Constructor arguments of the optimizer (scaled lr; lightly's LARS names mapped to timm's)."""
    kwargs = {k: v for k, v in spec.items() if k not in META_KEYS}
    kwargs["lr"] = effective_lr(spec, batch_size)
    if optimizer_key(spec) == "lars" and "trust_coefficient" in kwargs:
        kwargs["trust_coeff"] = kwargs.pop("trust_coefficient")
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    return kwargs


def build_optimizer(
    params: Iterable[nn.Parameter] | Iterable[dict[str, Any]], spec: dict[str, Any], batch_size: int
) -> torch.optim.Optimizer:
    """One optimizer over ``params`` with uniform weight decay (no bias/norm exclusion, as the reference)."""
    cls = OPTIMIZERS[optimizer_key(spec)]
    try:
        return cls(params, **optimizer_kwargs(spec, batch_size))
    except TypeError as err:
        raise TypeError(f"model.optimizer ({cls.__name__}): {err}") from err


class CosineWarmup:
    """lightly's CosineWarmupScheduler factor as a picklable-free callable (plain attributes).

    factor(s) = (s + 1) / W for s < W; else, with t = s - W and T' = T - W,
    end - (end - 1) (1 + cos(pi t / (T' - 1))) / 2, and ``end`` when t == T' or T' == 1.
    """

    def __init__(self, warmup_steps: int, max_steps: int, end_value: float, start_value: float = 1.0) -> None:
        if max_steps < 1:
            raise ValueError(f"cosine_warmup: the run has {max_steps} optimizer steps; it needs at least 1")
        self.warmup_steps = int(warmup_steps)
        self.max_steps = int(max_steps)
        self.end_value = float(end_value)
        self.start_value = float(start_value)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start_value * (step + 1) / self.warmup_steps
        t = step - self.warmup_steps
        span = self.max_steps - self.warmup_steps
        if span <= 1 or t == span:
            return self.end_value
        cos = (math.cos(math.pi * t / (span - 1)) + 1) / 2
        return self.end_value - (self.end_value - self.start_value) * cos


class LinearWarmup:
    """factor(s) = s / max(1, W) for s < W, else 1 (the reference's ``lambda`` scheduler)."""

    def __init__(self, warmup_steps: int) -> None:
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / max(1, self.warmup_steps)
        return 1.0


SCHEDULERS = ("cosine", "cosine_warmup", "lambda", "cosine_warm_restarts", "one_cycle")


def build_scheduler(
    name: str | None,
    optimizer: torch.optim.Optimizer,
    *,
    learning_rate: float,
    eta_min_scale: float,
    max_epochs: int,
    total_steps: int,
    train_iters_per_epoch: int | None = None,
    warmup_epochs: int | None = None,
) -> dict[str, Any] | None:
    """A Lightning ``lr_scheduler`` config for scheduler ``name`` (None/"" for no scheduler).

    ``learning_rate`` is the *unscaled* config lr, so eta_min = learning_rate * eta_min_scale
    (Q26). ``one_cycle`` is stepped per optimizer step: the reference stepped it per epoch,
    which never leaves the warm-up (Q13); this is a documented deviation.
    """
    if not name:
        return None
    eta_min = learning_rate * eta_min_scale
    if name == "cosine":
        if max_epochs < 1:
            raise ValueError(f"scheduler=cosine needs trainer.max_epochs >= 1, got {max_epochs}")
        sch = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs, eta_min=eta_min)
        return {"scheduler": sch, "interval": "epoch"}
    if name == "cosine_warmup":
        warmup = int(total_steps / max_epochs * 4)
        fn = CosineWarmup(warmup_steps=warmup, max_steps=total_steps, end_value=eta_min_scale)
        return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, fn), "interval": "step"}
    if name == "lambda":
        if warmup_epochs is None:
            raise ValueError(
                "scheduler=lambda needs `warmup_epochs` (add train.kwargs.warmup_epochs=<int>); "
                "no shipped config sets it"
            )
        per_epoch = train_iters_per_epoch or total_steps // max(1, max_epochs)
        fn = LinearWarmup(per_epoch * int(warmup_epochs))
        return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, fn), "interval": "step"}
    if name == "cosine_warm_restarts":
        t0 = max_epochs // 10
        if t0 < 1:
            raise ValueError(
                f"scheduler=cosine_warm_restarts needs max_epochs >= 10 (T_0 = max_epochs // 10), got {max_epochs}"
            )
        sch = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=t0, T_mult=2, eta_min=eta_min)
        return {"scheduler": sch, "interval": "epoch"}
    if name == "one_cycle":
        sch = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=total_steps)
        return {"scheduler": sch, "interval": "step"}
    raise ValueError(f"scheduler={name!r} is not known; use one of {SCHEDULERS} or null")
