"""Conversion of config objects to plain values (what checkpoints and JSON files hold)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any


def to_plain(value: Any) -> Any:
    """Recursively turn OmegaConf containers, tuples and paths into dicts, lists and strings.

    Interpolations are resolved. Anything that is not a plain value (str, int, float, bool,
    None, list, dict) after conversion is an error, so a checkpoint never needs unpickling.
    """
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # omegaconf is optional for the core library
        DictConfig = ListConfig = ()  # type: ignore[assignment,misc]
        OmegaConf = None  # type: ignore[assignment]
    if OmegaConf is not None and isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (str, bytes)):
        return value
    if isinstance(value, Sequence):
        return [to_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    raise TypeError(
        f"{value!r} (type {type(value).__name__}) is not a plain value; constructor arguments "
        "of the models must be strings, numbers, lists or dicts so checkpoints load with "
        "torch.load(..., weights_only=True)"
    )
