"""Numerics under mixed precision: the loss, KL and sampling maths run at least in fp32; which precision
a phase runs with (:func:`resolve_precision`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

_HALF = (torch.float16, torch.bfloat16)


def at_least_fp32(t: Tensor) -> Tensor:
    """fp16/bf16 -> fp32; fp32 and fp64 keep their precision (T-Q30: fp32 losses are the project's choice)."""
    return t.float() if t.dtype in _HALF else t


def autocast_off(t: Tensor) -> torch.autocast:
    """A context that turns autocast off on ``t``'s device."""
    return torch.autocast(device_type=t.device.type, enabled=False)


#: ``trainer.precision`` values: the project's three (``16-mixed`` the default), then Lightning's other spellings
PRECISIONS: tuple[str, ...] = (
    *("32-true", "16-mixed", "bf16-mixed"),
    *("64-true", "16-true", "bf16-true", "32", "16", "bf16", "64"),
)


def resolve_precision(
    precision: object, *, on_gpu: bool, bf16_supported: Callable[[], bool] | None = None, key: str = "trainer.precision"
) -> str:
    """The Lightning precision a phase runs with, from its configured ``trainer.precision``.

    - ``16-mixed`` (fp16 autocast with a GradScaler; the configs' default, as the reference): on a GPU as
      asked; without one ``32-true`` (fp16 autocast on a CPU is slow and was never the reference's path,
      so the CPU numbers are fp32).
    - ``bf16-mixed`` (bf16 autocast, no GradScaler, so no per-step host read of the scaler's inf flag):
      on a GPU only where the card computes in bf16 natively (Ampere, compute capability 8.0, or newer),
      else a ValueError; on a CPU as asked (torch's CPU bf16 autocast: an explicit choice, never a default,
      that changes the rounding of the CPU numbers and is fast only on CPUs with native bf16).
    - anything else Lightning accepts is passed on; an unknown value is a ValueError naming ``key``.

    ``bf16_supported`` answers whether the GPU has native bf16 (default: torch's answer without emulation).
    """
    value = str(precision)
    if value not in PRECISIONS:
        raise ValueError(
            f"{key}={precision!r} is not a precision; use 16-mixed (the default: fp16 autocast with a gradient "
            f"scaler), bf16-mixed (bf16 autocast, no scaler; GPUs from Ampere on) or 32-true (Lightning also "
            f"accepts {', '.join(PRECISIONS[3:])})"
        )
    if value in ("16-mixed", "16") and not on_gpu:
        return "32-true"
    if value in ("bf16-mixed", "bf16") and on_gpu:
        supported = bf16_supported or (lambda: torch.cuda.is_bf16_supported(including_emulation=False))
        if not supported():
            name = torch.cuda.get_device_name() if torch.cuda.is_available() else "this GPU"
            raise ValueError(
                f"{key}={value}: {name} has no native bfloat16 (it needs compute capability 8.0, Ampere, or "
                "newer); use 16-mixed (fp16 autocast with a gradient scaler, the default) or 32-true"
            )
        return "bf16-mixed"
    return value
