"""The devices the step equivalence tests run on: the CPU always, CUDA when present (marked ``cuda``, so the
device check runs them with ``pytest -m cuda``), in true fp32 (TF32 off for the duration of a test)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

#: ``@pytest.mark.parametrize("device", DEVICES)``
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")],
    ),
]


@contextmanager
def fp32_on(device: str) -> Iterator[torch.device]:
    """``device`` with TF32 off (CUDA's fp32 matmuls and convolutions in full fp32), restored afterwards."""
    if device != "cuda":
        yield torch.device(device)
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield torch.device(device)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
