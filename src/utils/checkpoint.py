"""Opening checkpoints safely: ``torch.load(..., weights_only=True)`` and nothing else.

Every checkpoint this project writes holds plain values only, so it opens without
unpickling arbitrary objects. A file that needs unpickling (e.g. a checkpoint of the
paper's original release, whose hyper-parameters hold pickled ``functools.partial``
objects) is refused with the reason, never loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, unsafe or of the wrong model type."""


#: how to get a damaged checkpoint written again, under DVC and by hand (every message that asks for it)
REWRITE_ADVICE = (
    "write it again: under DVC, `dvc repro` the stage that writes it (DVC removes a stage's outputs before it "
    "runs the stage); by hand, run that stage's command again with overwrite=true for run_pipeline.py and "
    "run_semi_supervised.py (a finished run whose checkpoint is missing or cut short is redone), or after deleting "
    "the file for the other stages"
)
#: the same for a checkpoint that reads but does not fit its model (it cannot be told from a good one by its bytes)
REDO_RUN_ADVICE = (
    "write it again: under DVC, `dvc repro` the stage that writes it; by hand, delete the run folder that holds it "
    "(or choose another output_path) and run that stage's command again"
)


def _refusal_reason(text: str) -> str:
    """The line of torch's weights-only error that names the refused object (e.g. ``GLOBAL posix.system``).

    torch's first line advises re-running with ``weights_only=False``; that advice is not passed on.
    """
    for line in text.splitlines():
        if "GLOBAL" in line or "Unsupported" in line:
            # keep the diagnosis, drop torch's "Please use ... to allowlist this global" advice
            reason = line.strip().removeprefix("WeightsUnpickler error:").strip()
            reason = reason.split(". Please use")[0].rstrip(".")
            if reason.startswith("Unsupported operand"):
                reason += " (a pickle instruction that loading with weights_only=True does not allow)"
            return reason
    return "the file needs unpickling of arbitrary objects"


def load_checkpoint(path: str | Path, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Open a checkpoint with ``weights_only=True``; clear errors for every way it can fail."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (did the training stage finish?)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ... by cause
        text = str(err)
        if "weights_only" in text or "Unsupported global" in text or "WeightsUnpickler" in text:
            raise CheckpointError(
                f"checkpoint {path} holds objects that are not plain values, so it is refused and was not "
                "unpickled (loading it could run arbitrary code). Checkpoints of this project hold plain "
                "values only; re-save a foreign checkpoint with plain hyper-parameters (tensors, numbers, "
                f"strings, lists, dicts) from a trusted environment. Refused: {_refusal_reason(text)}"
            ) from err
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(err).__name__}: {text.splitlines()[0] if text else ''}); "
            f"it is probably truncated or corrupted: {REWRITE_ADVICE}"
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"checkpoint {path} is not a Lightning checkpoint (no `state_dict` entry)")
    return ckpt
