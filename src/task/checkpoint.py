"""Rebuilding an SSL model from its checkpoint: plain hyper-parameters, a registry lookup, the weights.

The checkpoint is opened with ``torch.load(..., weights_only=True)``
(:func:`src.utils.checkpoint.load_checkpoint`); its ``model_name`` selects the class in
:data:`src.task.SSL_MODELS`, so a checkpoint can never make the code import anything by name.
"""

from __future__ import annotations

from pathlib import Path

import torch

from src.task import SSL_MODELS, BaseSelfSupervisedLearning
from src.utils.checkpoint import REDO_RUN_ADVICE, CheckpointError, load_checkpoint


def load_ssl_model(
    path: str | Path, model_name: str | None = None, map_location: str | torch.device | None = "cpu"
) -> BaseSelfSupervisedLearning:
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
            f"expected one of {', '.join(SSL_MODELS.keys())}"
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
            f"written by another version of the code or edited: {REDO_RUN_ADVICE}"
        ) from err
    module.on_load_checkpoint(ckpt)
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise CheckpointError(
            f"checkpoint {path}: its weights do not fit the {stored!r} model its hyper_parameters describe "
            f"({' '.join(line.strip() for line in first[:3])}); the file is inconsistent: {REDO_RUN_ADVICE}"
        ) from err
    return module
