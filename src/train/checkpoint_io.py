"""Lightning checkpoint I/O that never leaves a half-written file and never unpickles code.

Lightning writes a checkpoint straight to its final name, so a run killed while saving
leaves a truncated ``last.ckpt`` that a resume would then fail on. Here the bytes go to a
temporary file in the same folder first and are renamed over the target (with the mode the user's
umask gives; a full or read-only folder is reported with the folder and the fix); loading (resume)
goes through :func:`src.utils.checkpoint.load_checkpoint`, i.e. ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytorch_lightning.plugins.io import TorchCheckpointIO

from src.utils.io import save_torch


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with temp-file-and-rename saves and weights-only loads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not support storage_options, got {storage_options!r}")
        save_torch(Path(path), checkpoint)

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        from src.utils.checkpoint import load_checkpoint  # avoids an import cycle through the models

        return load_checkpoint(path, map_location=map_location or "cpu")
