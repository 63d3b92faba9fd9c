"""Embedding files: the frozen backbone's representations of a dataset split, as the probe reads them.

``<target_dir>/{train,val,test}.pt`` each hold the plain dict
``{"reps": float32 [N, D] or [N, M, D], "labels": int64 [N]}`` written with ``torch.save``.
Deviation from the reference, which pickled a ``TensorDataset``: a ``TensorDataset`` does not
load with ``torch.load(..., weights_only=True)``, a dict of tensors does. ``load_embeddings``
returns the ``TensorDataset`` the reference's loader saw, and also reads the reference's files
(``TensorDataset`` is allow-listed for that one load).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from src.utils.io import save_torch

#: embedding file names, in the order they are written
EMBEDDING_SPLITS = ("train", "val", "test")


class EmbeddingWriter:
    """Streams the rows of one embedding file to disk; the final file appears only on ``commit``.

    Rows go into a disk-backed float32 buffer ``[N, *row_shape]`` (a NumPy memmap allocated
    from the dataset length at the first write), so memory stays bounded whatever N is (an
    ImageNet Bayes-H train file is ≈31.5 GB). ``commit`` saves ``{"reps", "labels"}`` with
    ``torch.save`` to a temporary name and renames it over ``path``; the buffer is deleted.
    Used as a context manager, an exception removes every temporary file.

    Args:
        path: the final ``<split>.pt``.
        num_rows: N, the length of the dataset.
    """

    def __init__(self, path: str | os.PathLike[str], num_rows: int) -> None:
        self.path = Path(path)
        self.num_rows = int(num_rows)
        self.offset = 0
        self.labels = torch.empty(self.num_rows, dtype=torch.int64)
        self._buffer_path = self.path.with_name(f".{self.path.name}.{os.getpid()}.buffer")
        self._buffer: np.memmap | None = None

    def write(self, reps: Tensor, labels: Tensor) -> None:
        """Append a batch: ``reps`` [B, *row_shape] (any float dtype), ``labels`` [B]."""
        n = reps.shape[0]
        if self.offset + n > self.num_rows:
            raise ValueError(f"{self.path}: {self.offset + n} rows written but the dataset has {self.num_rows}")
        if self._buffer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            shape = (self.num_rows, *reps.shape[1:])
            self._buffer = np.memmap(self._buffer_path, dtype=np.float32, mode="w+", shape=shape)
        elif tuple(reps.shape[1:]) != self._buffer.shape[1:]:
            raise ValueError(f"{self.path}: row shape changed from {self._buffer.shape[1:]} to {tuple(reps.shape[1:])}")
        self._buffer[self.offset : self.offset + n] = reps.detach().to("cpu", torch.float32).numpy()
        self.labels[self.offset : self.offset + n] = labels.detach().to("cpu", torch.int64)
        self.offset += n

    def commit(self) -> Path:
        """Write the final file atomically (every row must have been written) and drop the buffer."""
        if self._buffer is None or self.offset != self.num_rows:
            raise ValueError(f"{self.path}: {self.offset} of {self.num_rows} rows written; refusing to save")
        self._buffer.flush()
        reps = torch.from_numpy(self._buffer)
        save_torch(self.path, {"reps": reps, "labels": self.labels})
        self._discard()
        return self.path

    def _discard(self) -> None:
        self._buffer = None  # drops the mapping before the file is removed
        self._buffer_path.unlink(missing_ok=True)

    def __enter__(self) -> EmbeddingWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._discard()


def save_embeddings(path: str | os.PathLike[str], reps: Tensor, labels: Tensor) -> Path:
    """Save ``{"reps": float32, "labels": int64}`` atomically (in-memory tensors; see ``EmbeddingWriter``)."""
    obj = {"reps": reps.detach().to("cpu", torch.float32), "labels": labels.detach().to("cpu", torch.int64)}
    return save_torch(path, obj)


def load_embeddings(path: str | os.PathLike[str], mmap: bool = True) -> TensorDataset:
    """An embedding file as ``TensorDataset(reps float32 [N, ...], labels int64 [N])``.

    Loads with ``weights_only=True``. ``mmap=True`` maps the tensors instead of reading them
    into memory (a file of this project's format only). The reference's pickled
    ``TensorDataset`` files are accepted too, with ``TensorDataset`` allow-listed for the load.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not an embedding file (not a ``torch.save`` file, truncated,
            holding objects other than plain tensors, or without tensors ``reps`` and ``labels``).
    """
    path = Path(path)
    regenerate = "delete it and re-run pre_embed_datasets.py to write it again"
    if not path.is_file():
        raise FileNotFoundError(f"embedding file {path} does not exist; run pre_embed_datasets.py first")
    try:
        with torch.serialization.safe_globals([TensorDataset]):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # UnpicklingError, RuntimeError (not a zip / truncated), EOFError, ...
        text = str(err)
        reason = (
            "it holds objects other than plain tensors, which are refused (loading them could run code)"
            if "weights_only" in text.lower() or "Unsupported" in text
            else "it is not a torch.save file or it is truncated"
        )
        raise ValueError(
            f"{path} is not a readable embedding file: {reason} ({type(err).__name__}); {regenerate}"
        ) from err
    if isinstance(obj, TensorDataset):
        reps, labels = obj.tensors[:2]
    elif isinstance(obj, dict) and {"reps", "labels"} <= set(obj):
        reps, labels = obj["reps"], obj["labels"]
    else:
        keys = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(
            f"{path} is not an embedding file: expected a dict with tensors 'reps' and 'labels' (or a "
            f"TensorDataset), got {keys}; {regenerate}"
        )
    if not isinstance(reps, Tensor) or not isinstance(labels, Tensor):
        raise ValueError(
            f"{path}: 'reps' and 'labels' must be tensors, got {type(reps).__name__} and "
            f"{type(labels).__name__}; {regenerate}"
        )
    if reps.dim() < 2 or labels.dim() < 1:
        raise ValueError(
            f"{path}: expected reps [N, D] or [N, M, D] and labels [N, ...], got {tuple(reps.shape)} and "
            f"{tuple(labels.shape)}; {regenerate}"
        )
    if reps.shape[0] != labels.shape[0]:
        raise ValueError(f"{path}: {reps.shape[0]} representations but {labels.shape[0]} labels; {regenerate}")
    return TensorDataset(reps, labels)
