"""Loading checkpoints safely: ``torch.load(..., weights_only=True)`` and nothing else.

Every checkpoint this project writes holds plain values only, so it opens without
unpickling arbitrary objects. A file that needs unpickling (e.g. a checkpoint of the
paper's original release, whose hyper-parameters hold pickled ``functools.partial``
objects) is refused with the reason, never loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from src.task.bayesian_ssl import HBayesianSelfSupervisedLearning, ZBayesianSelfSupervisedLearning
from src.task.ssl import SelfSupervisedLearning

#: model name (``train.name`` / ``metadata.model_name``) -> Lightning module class
SSL_MODELS: dict[str, type[pl.LightningModule]] = {
    "ssl": SelfSupervisedLearning,
    "ssl_bayes_h": HBayesianSelfSupervisedLearning,
    "ssl_bayes_z": ZBayesianSelfSupervisedLearning,
}


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, unsafe or of the wrong model type."""


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
            "it is probably truncated or corrupted: delete it and rerun the stage that writes it"
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"checkpoint {path} is not a Lightning checkpoint (no `state_dict` entry)")
    return ckpt


def load_ssl_model(
    path: str | Path, model_name: str | None = None, map_location: str | torch.device | None = "cpu"
) -> pl.LightningModule:
    """Rebuild an SSL module from its checkpoint's plain hyper-parameters and load its weights.

    ``model_name`` (``ssl``, ``ssl_bayes_h``, ``ssl_bayes_z``), when given, must match the
    checkpoint's own ``model_name``.
    """
    ckpt = load_checkpoint(path, map_location)
    hparams = dict(ckpt.get("hyper_parameters") or {})
    stored = hparams.get("model_name")
    if stored not in SSL_MODELS:
        raise CheckpointError(
            f"checkpoint {path} is not an SSL model checkpoint: hyper_parameters.model_name={stored!r}, "
            f"expected one of {sorted(SSL_MODELS)}"
        )
    if model_name is not None and model_name != stored:
        raise CheckpointError(
            f"checkpoint {path} holds a {stored!r} model, but {model_name!r} was asked for; "
            "check the run directory or the model name"
        )
    try:
        module = SSL_MODELS[stored](**hparams)
    except (TypeError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint {path}: its hyper_parameters do not build a {stored!r} model ({err}); the file was "
            "written by another version of the code or edited: rerun the stage that writes it"
        ) from err
    module.on_load_checkpoint(ckpt)
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise CheckpointError(
            f"checkpoint {path}: its weights do not fit the {stored!r} model its hyper_parameters describe "
            f"({' '.join(line.strip() for line in first[:3])}); the file is inconsistent: rerun the stage that "
            "writes it"
        ) from err
    return module
