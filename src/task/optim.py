"""Optimizers and learning-rate schedulers built from plain values, through two registries (T-Q4, T-Q13, T-Q26).

Every Lightning module of the project builds its optimizer with :func:`build_optimizer` and its
scheduler with :func:`build_scheduler`; a new optimizer or scheduler is one registration here.
An optimizer spec is the composed ``model.optimizer`` node as a dict, e.g.
``{"_target_": "torch.optim.AdamW", "name": "adamw", "scale_lr": True, "lr": 1e-3,
"weight_decay": 1e-4}``. Nothing is mutated: the effective lr is computed, not written back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from timm.optim import Lars
from torch import nn

from src.utils.registry import Registry

#: optimizers by ``model.optimizer.name`` (configs use ``_target_``; the reference's lightly LARS maps to
#: timm's ``Lars``, which makes the same update wherever the weight and gradient norms are non-zero)
OPTIMIZERS: Registry[type[torch.optim.Optimizer]] = Registry(
    "optimizer", config_key="model.optimizer", meta_keys=("scale_lr", "lr_linear")
)
OPTIMIZERS.add("adamw", torch.optim.AdamW, targets=["torch.optim.AdamW"])
OPTIMIZERS.add("adam", torch.optim.Adam, targets=["torch.optim.Adam"])
OPTIMIZERS.add("sgd", torch.optim.SGD, targets=["torch.optim.SGD"])
OPTIMIZERS.add("lars", Lars, targets=["timm.optim.Lars", "timm.optim.lars.Lars", "lightly.utils.lars.LARS"])

# Keys of an optimizer spec that are not optimizer arguments.
META_KEYS = OPTIMIZERS.meta_keys


def optimizer_key(spec: dict[str, Any]) -> str:
    """The registry name of a ``model.optimizer`` node (its ``_target_``, else its ``name``)."""
    return OPTIMIZERS.resolve(spec)


def effective_lr(spec: dict[str, Any], batch_size: int) -> float:
    """lr, multiplied by batch_size / 256 when ``scale_lr`` is true (per-device batch, T-Q27)."""
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
    """One optimizer over ``params`` with uniform weight decay (no bias/norm exclusion, as the reference).

    ``params`` may be parameter groups (dicts with ``params`` and per-group options such as ``lr``);
    the spec's options are the defaults of every group.
    """
    cls = OPTIMIZERS[optimizer_key(spec)]
    try:
        return cls(params, **optimizer_kwargs(spec, batch_size))
    except TypeError as err:
        raise TypeError(f"model.optimizer ({cls.__name__}): {err}") from err


def _steps(total_steps: int | Callable[[], int]) -> int:
    """The run's optimizer steps; a callable is asked only by the schedulers that need the number."""
    return int(total_steps() if callable(total_steps) else total_steps)


class CosineWarmup:
    """lightly's CosineWarmupScheduler factor as a callable with plain attributes (nothing to pickle).

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


#: learning-rate schedulers by ``train.scheduler``; each builder returns a Lightning ``lr_scheduler`` dict
SCHEDULERS: Registry[Callable[..., dict[str, Any]]] = Registry("scheduler", config_key="train.scheduler")


@SCHEDULERS.register("cosine")
def _cosine(optimizer: torch.optim.Optimizer, *, eta_min: float | None, max_epochs: int, **_: Any) -> dict[str, Any]:
    """CosineAnnealingLR over the epochs, stepped per epoch."""
    if eta_min is None:
        raise ValueError("scheduler=cosine needs `sch_eta_min_scale` (eta_min = learning_rate * sch_eta_min_scale)")
    if max_epochs < 1:
        raise ValueError(f"scheduler=cosine needs trainer.max_epochs >= 1, got {max_epochs}")
    sch = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs, eta_min=eta_min)
    return {"scheduler": sch, "interval": "epoch"}


@SCHEDULERS.register("cosine_warmup")
def _cosine_warmup(
    optimizer: torch.optim.Optimizer,
    *,
    eta_min_scale: float | None,
    max_epochs: int,
    total_steps: int | Callable[[], int],
    **_: Any,
) -> dict[str, Any]:
    """lightly's CosineWarmupScheduler: 4 epochs of linear warm-up, then cosine to ``eta_min_scale``, per step."""
    if eta_min_scale is None:
        raise ValueError("scheduler=cosine_warmup needs `sch_eta_min_scale` (the final lr factor)")
    total_steps = _steps(total_steps)
    warmup = int(total_steps / max_epochs * 4)
    fn = CosineWarmup(warmup_steps=warmup, max_steps=total_steps, end_value=eta_min_scale)
    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, fn), "interval": "step"}


@SCHEDULERS.register("lambda")
def _linear_warmup(
    optimizer: torch.optim.Optimizer,
    *,
    max_epochs: int,
    total_steps: int | Callable[[], int],
    train_iters_per_epoch: int | None,
    warmup_epochs: int | None,
    **_: Any,
) -> dict[str, Any]:
    """Linear warm-up over ``warmup_epochs``, then constant, per step (T-Q13: no config sets the epochs)."""
    if warmup_epochs is None:
        raise ValueError(
            "scheduler=lambda needs `warmup_epochs` (add train.kwargs.warmup_epochs=<int>); no shipped config sets it"
        )
    per_epoch = train_iters_per_epoch or _steps(total_steps) // max(1, max_epochs)
    fn = LinearWarmup(per_epoch * int(warmup_epochs))
    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, fn), "interval": "step"}


@SCHEDULERS.register("cosine_warm_restarts")
def _cosine_warm_restarts(
    optimizer: torch.optim.Optimizer, *, eta_min: float | None, max_epochs: int, **_: Any
) -> dict[str, Any]:
    """CosineAnnealingWarmRestarts with T_0 = max_epochs // 10, T_mult 2, per epoch."""
    if eta_min is None:
        raise ValueError("scheduler=cosine_warm_restarts needs `sch_eta_min_scale`")
    t0 = max_epochs // 10
    if t0 < 1:
        raise ValueError(
            f"scheduler=cosine_warm_restarts needs max_epochs >= 10 (T_0 = max_epochs // 10), got {max_epochs}"
        )
    sch = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=t0, T_mult=2, eta_min=eta_min)
    return {"scheduler": sch, "interval": "epoch"}


@SCHEDULERS.register("one_cycle")
def _one_cycle(
    optimizer: torch.optim.Optimizer, *, learning_rate: float, total_steps: int | Callable[[], int], **_: Any
) -> dict[str, Any]:
    """OneCycleLR over all optimizer steps, stepped per step (the reference stepped it per epoch, T-Q13)."""
    sch = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=_steps(total_steps))
    return {"scheduler": sch, "interval": "step"}


@SCHEDULERS.register("multistep")
def _multistep(
    optimizer: torch.optim.Optimizer, *, milestones: list[int] | None = None, gamma: float | None = None, **_: Any
) -> dict[str, Any]:
    """MultiStepLR(milestones, gamma), stepped per epoch (semi-supervised option, linear probes)."""
    if milestones is None or gamma is None:
        missing = [k for k, v in (("milestones", milestones), ("gamma", gamma)) if v is None]
        raise ValueError(f"scheduler=multistep needs {missing} (scheduler_kwargs)")
    sch = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(milestones), gamma=float(gamma))
    return {"scheduler": sch, "interval": "epoch"}


def build_scheduler(
    name: str | None,
    optimizer: torch.optim.Optimizer,
    *,
    learning_rate: float,
    eta_min_scale: float | None,
    max_epochs: int,
    total_steps: int | Callable[[], int],
    train_iters_per_epoch: int | None = None,
    warmup_epochs: int | None = None,
    **options: Any,
) -> dict[str, Any] | None:
    """A Lightning ``lr_scheduler`` config for scheduler ``name`` (None/"" for no scheduler).

    ``learning_rate`` is the *unscaled* config lr, so eta_min = learning_rate * eta_min_scale
    (T-Q26). ``total_steps`` may be a callable, asked only by the per-step schedulers.
    ``options`` are scheduler-specific (``milestones`` and ``gamma`` of ``multistep``).
    ``one_cycle`` is stepped per optimizer step: the reference stepped it per epoch, which never
    leaves the warm-up (T-Q13); this is a documented deviation.

    Raises:
        RegistryError: unknown ``name``; the message lists the known schedulers.
        ValueError: an option the scheduler needs is missing.
    """
    if not name:
        return None
    return SCHEDULERS.get(name)(
        optimizer,
        learning_rate=learning_rate,
        eta_min=None if eta_min_scale is None else learning_rate * eta_min_scale,
        eta_min_scale=eta_min_scale,
        max_epochs=max_epochs,
        total_steps=total_steps,
        train_iters_per_epoch=train_iters_per_epoch,
        warmup_epochs=warmup_epochs,
        **options,
    )
