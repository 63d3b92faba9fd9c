"""Contrastive losses and their registry.

Configs and checkpoints name a loss by its ``_target_`` path (as Hydra writes it) or by
its registry key; the module builds the object itself, so nothing is unpickled.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from src.model.loss.barlow_twins import BarlowTwinsLoss, MCBarlowTwinsLoss
from src.model.loss.vicreg import MCVICRegLoss, VICRegLoss

LOSSES: dict[str, type[nn.Module]] = {
    "barlow_twins": BarlowTwinsLoss,
    "mc_barlow_twins": MCBarlowTwinsLoss,
    "vicreg": VICRegLoss,
    "mc_vicreg": MCVICRegLoss,
}

# Hydra `_target_` spellings accepted for each registry key.
_TARGETS: dict[str, str] = {f"{cls.__module__}.{cls.__name__}": key for key, cls in LOSSES.items()}

__all__ = ["LOSSES", "BarlowTwinsLoss", "MCBarlowTwinsLoss", "MCVICRegLoss", "VICRegLoss", "build_loss", "loss_key"]


def loss_key(spec: dict[str, Any]) -> str:
    """The registry key of a loss spec: its ``_target_`` if given, else ``type``."""
    target = spec.get("_target_")
    if target is not None:
        if target in _TARGETS:
            return _TARGETS[target]
        raise ValueError(f"model.loss._target_={target!r} is not a known loss; known targets: {sorted(_TARGETS)}")
    key = spec.get("type")
    if key in LOSSES:
        return key
    raise ValueError(
        f"model.loss needs a `_target_` (one of {sorted(_TARGETS)}) or a `type` (one of {sorted(LOSSES)}); got {spec!r}"
    )


def build_loss(spec: dict[str, Any]) -> nn.Module:
    """Build a loss from plain values, e.g. the composed ``model.loss`` node as a dict."""
    key = loss_key(spec)
    kwargs = {k: v for k, v in spec.items() if k not in {"_target_", "_partial_", "type", "name", "loss_kwargs"}}
    try:
        return LOSSES[key](**kwargs)
    except TypeError as err:
        raise TypeError(f"model.loss ({key}): {err}") from err
