"""What Lightning's checkpoints leave out but an exact resume needs: RNG streams and stop flags.

Lightning restores weights, optimizers, schedulers, loop counters and callback states, but
not the random number generators (Python, NumPy, torch, CUDA) nor ``trainer.should_stop``.
Without them a resumed run draws different augmentations, MC noise and shuffles than an
uninterrupted one, and a run stopped early by EarlyStopping would train one more epoch.

The generators are captured when a checkpoint is written (at the end of an epoch's
validation, where nothing draws random numbers before the next epoch's loader iterator) and
put back as soon as the checkpoint is loaded, before the resumed run creates its loader
iterator, so both runs draw the same numbers in the same order from there on. Everything is
stored as plain values (lists, ints, a uint8 tensor), so the checkpoint still opens with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

STATE_KEY = "resume_state"


def collect_rng_states() -> dict[str, Any]:
    """Python, NumPy, torch CPU and (when present) CUDA generator states, as plain values."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [str(kind), [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`collect_rng_states`."""
    version, internal, gauss = states["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(torch.as_tensor(states["torch"], dtype=torch.uint8).cpu())
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8).cpu() for s in cuda])


class ResumeState(pl.Callback):
    """Saves RNG states and ``trainer.should_stop`` in each checkpoint; restores them on resume."""

    def __init__(self) -> None:
        super().__init__()
        self._stop_on_start = False

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[STATE_KEY] = {"rng": collect_rng_states(), "should_stop": bool(trainer.should_stop)}

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        state = checkpoint.get(STATE_KEY)
        if state is None:
            return
        # Put the generators back right away. Between here and the first training batch nothing
        # draws from them except what an uninterrupted run also draws after its checkpoint: the
        # train loader's iterator (its base seed) and sampler; the sanity check runs inside
        # Lightning's isolate_rng, and the online probe is not re-initialised on a resume.
        set_rng_states(state["rng"])
        self._stop_on_start = bool(state.get("should_stop"))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._stop_on_start:
            # the interrupted run had already decided to stop (e.g. early stopping)
            trainer.should_stop = True
            self._stop_on_start = False
