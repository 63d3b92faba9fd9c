"""Bad embedding files, missing runs and bad probe settings get an error naming the path and the fix."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

from src.data.datamodule.transfer_learning import PrecomputedRepresentationsDatamodule
from src.data.dataset.embeddings import load_embeddings
from src.experiments.scripts import demo_linear_probing, demo_report


def _q(path: Path | str) -> str:
    """``path`` as a regex that matches it literally."""
    return re.escape(str(path))


# ============================================================================ 11. unsafe pickles are never unpickled
class CreatesFileWhenUnpickled:
    """A pickle payload: unpickling it calls ``open(marker, "w")``, which creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_embedding_file_with_an_arbitrary_object_is_refused_without_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "train.pt"
    torch.save({"reps": torch.zeros(2, 3), "labels": CreatesFileWhenUnpickled(marker)}, path)
    with pytest.raises(ValueError, match=rf"{_q(path)} is not a readable embedding file: .*refused.*re-run pre_embed"):
        load_embeddings(path)
    assert not marker.exists()


@pytest.mark.parametrize("exists", [True, False], ids=["empty", "missing"])
def test_demo_linear_probing_without_runs(tmp_path: Path, exists: bool) -> None:
    runs = tmp_path / "runs"
    if exists:
        (runs / "unfinished").mkdir(parents=True)  # a run folder without results.json is not finished
    with pytest.raises(FileNotFoundError, match=rf"--runs-dir {_q(runs)} .*run the demo pretraining first"):
        demo_linear_probing.main(["--runs-dir", str(runs), "--embeddings-dir", str(tmp_path / "emb")])
    assert not (tmp_path / "emb").exists()


def test_demo_report_without_runs(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    argv = ["--runs-dir", str(tmp_path / "runs"), "--ood-report-dir", str(tmp_path)]
    argv += ["--probe-report-dir", str(tmp_path), "--output-dir", str(tmp_path / "report")]
    with pytest.raises(FileNotFoundError, match=rf"no <run>/results\.json under {_q(tmp_path / 'runs')}; run the demo"):
        demo_report.main(argv)


# ========================================================================= 14. embedding/JSON files, batch sizes
def test_missing_embedding_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=rf"embedding file {_q(tmp_path / 'train.pt')} does not exist; run"):
        load_embeddings(tmp_path / "train.pt")
    dm = PrecomputedRepresentationsDatamodule(tmp_path / "emb", batch_size=4, test_mode=True)
    with pytest.raises(FileNotFoundError, match=rf"no embeddings in {_q(tmp_path / 'emb')}: train\.pt is missing"):
        dm.setup("fit")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"not a torch file", r"is not a readable embedding file: it is not a torch\.save file or it is truncated"),
        (
            {"features": torch.zeros(2, 3)},
            r"is not an embedding file: expected a dict with tensors 'reps' and 'labels'",
        ),
        ({"reps": [[0.0, 1.0]], "labels": torch.zeros(1)}, r"'reps' and 'labels' must be tensors, got list"),
        ({"reps": torch.zeros(3), "labels": torch.zeros(3)}, r"expected reps \[N, D\] or \[N, M, D\]"),
        ({"reps": torch.zeros(3, 2), "labels": torch.zeros(2)}, r"3 representations but 2 labels"),
    ],
    ids=["garbage", "wrong_keys", "not_tensors", "wrong_rank", "length_mismatch"],
)
def test_embedding_file_of_the_wrong_format(tmp_path: Path, content: Any, match: str) -> None:
    path = tmp_path / "train.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(ValueError, match=rf"{_q(path)}.*{match}.*re-run pre_embed_datasets\.py"):
        load_embeddings(path)


def test_bad_probe_batch_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer, got 0; set batch_size in the linear"):
        PrecomputedRepresentationsDatamodule(tmp_path, batch_size=0)
