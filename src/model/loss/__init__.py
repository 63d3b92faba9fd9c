"""Contrastive losses and their registry (``LOSSES``).

Configs and checkpoints name a loss by its ``_target_`` path (as Hydra writes it) or by its
registry key (``type``); the registry builds the object, so nothing is imported by name or unpickled.
A new loss is one module here whose class carries ``@LOSSES.register("<key>")`` (every module of
this package is imported below, so it registers itself) plus its config ``conf/model/loss/<key>.yaml``.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any

from torch import nn

from src.model.loss._common import LOSSES
from src.model.loss.barlow_twins import BarlowTwinsLoss, MCBarlowTwinsLoss
from src.model.loss.vicreg import MCVICRegLoss, VICRegLoss

__all__ = ["LOSSES", "BarlowTwinsLoss", "MCBarlowTwinsLoss", "MCVICRegLoss", "VICRegLoss", "build_loss", "loss_key"]

for _module in pkgutil.iter_modules([str(Path(__file__).parent)]):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")


def loss_key(spec: dict[str, Any]) -> str:
    """The registry key of a loss config node: its ``_target_`` if given, else ``type``."""
    return LOSSES.resolve(spec)


def build_loss(spec: dict[str, Any]) -> nn.Module:
    """Build a loss from plain values, e.g. the composed ``model.loss`` node as a dict."""
    return LOSSES.build(spec)
