"""Numerics under mixed precision: the loss, KL and sampling maths run at least in fp32."""

from __future__ import annotations

import torch
from torch import Tensor

_HALF = (torch.float16, torch.bfloat16)


def at_least_fp32(t: Tensor) -> Tensor:
    """fp16/bf16 -> fp32; fp32 and fp64 keep their precision (T-Q30: fp32 losses are the project's choice)."""
    return t.float() if t.dtype in _HALF else t


def autocast_off(t: Tensor) -> torch.autocast:
    """A context that turns autocast off on ``t``'s device."""
    return torch.autocast(device_type=t.device.type, enabled=False)
