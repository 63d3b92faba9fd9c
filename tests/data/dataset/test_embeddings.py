"""Embedding files (src/data/dataset/embeddings.py): streamed writes, the plain-dict format, the reference's files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from src.data.dataset.embeddings import EmbeddingWriter, load_embeddings


def test_embedding_file_format(tmp_path: Path) -> None:
    """Streamed rows, a plain dict that loads with weights_only=True, a TensorDataset from the loader."""
    reps = torch.randn(10, 3, 4)
    labels = torch.arange(10) % 4
    path = tmp_path / "emb" / "train.pt"
    with EmbeddingWriter(path, 10) as writer:
        for start in range(0, 10, 4):
            writer.write(reps[start : start + 4].double(), labels[start : start + 4])
        assert not path.exists()  # nothing final before commit
        writer.commit()
    assert sorted(p.name for p in path.parent.iterdir()) == ["train.pt"]  # buffer removed
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"reps", "labels"} and raw["reps"].dtype == torch.float32 and raw["labels"].dtype == torch.int64
    ds = load_embeddings(path)
    assert isinstance(ds, TensorDataset)
    assert torch.equal(ds.tensors[0], reps) and torch.equal(ds.tensors[1], labels)

    # an interrupted writer leaves nothing behind
    broken = tmp_path / "emb" / "val.pt"
    with pytest.raises(RuntimeError), EmbeddingWriter(broken, 10) as writer:
        writer.write(reps[:4], labels[:4])
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in path.parent.iterdir()) == ["train.pt"]
    with pytest.raises(ValueError, match="4 of 10 rows"):
        w = EmbeddingWriter(broken, 10)
        w.write(reps[:4], labels[:4])
        w.commit()

    # the reference's pickled TensorDataset files are read too
    torch.save(TensorDataset(reps, labels), tmp_path / "legacy.pt")
    assert torch.equal(load_embeddings(tmp_path / "legacy.pt").tensors[0], reps)
