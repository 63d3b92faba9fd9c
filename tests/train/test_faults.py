"""The pipeline and a non-finite loss: by default it stops the run with the step and the bad terms
named, keeps the last good checkpoint and marks nothing done; with ``continue_on_non_finite_loss=true``
the run goes on to the end, as the reference's did. Same-seed CPU runs are identical. (slow: multi-epoch
runs; the guard itself is tested fast in tests/train/callbacks/test_fault_guard.py)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from src.task.bayesian_ssl import ZBayesianSelfSupervisedLearning
from src.train.callbacks.fault_guard import NonFiniteLossError
from src.train.pipeline import run_pipeline
from src.utils.checkpoint import load_checkpoint
from tests.train.conftest import compose_run

FAULT_AT = 30  # training step (0-based global step) whose KL term is made infinite


def tiny(demo_root: Path, out: Path, *extra: str):
    return compose_run(
        "ssl_bayes_z",
        "mc_vicreg",
        demo_root,
        out,
        ["dataset.input_height=8", "train.trainer.max_epochs=3", "++train.trainer.limit_train_batches=20", *extra],
    )


@pytest.fixture
def faulty_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bayes-Z's training step at global step FAULT_AT returns an infinite KL term (and loss)."""
    original = ZBayesianSelfSupervisedLearning.shared_step

    def faulty(self: ZBayesianSelfSupervisedLearning, batch):  # type: ignore[no-untyped-def]
        out = original(self, batch)
        if self.training and self.trainer.global_step == FAULT_AT:
            out["kl_prior_loss"] = out["kl_prior_loss"] * float("inf")
            out["loss"] = out["loss"] + out["kl_prior_loss"]
        return out

    monkeypatch.setattr(ZBayesianSelfSupervisedLearning, "shared_step", faulty)


@pytest.mark.slow
def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    demo_root: Path, tmp_path: Path, faulty_step: None
) -> None:
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as info:
        run_pipeline(tiny(demo_root, out))
    message = str(info.value)
    assert f"global step {FAULT_AT} (epoch 1, batch {FAULT_AT - 20})" in message
    terms = re.search(r"non-finite terms: ([a-z_, ]+)\.", message)
    assert terms is not None and set(terms.group(1).split(", ")) == {"loss", "kl_prior_loss"}, message
    assert "last.ckpt" in message, message
    # nothing is marked done
    assert not (out / "results.json").exists()
    assert not (out / "checkpoints" / "pretrain_done.json").exists()
    # the last checkpoint is the good one from the end of epoch 0, with finite weights
    ckpt = load_checkpoint(out / "checkpoints" / "last.ckpt")
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == 20
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert not list(out.rglob("*.tmp"))


@pytest.mark.slow
def test_the_switch_keeps_training_through_a_non_finite_loss(
    demo_root: Path, tmp_path: Path, faulty_step: None, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "run"
    with caplog.at_level("WARNING", logger="src.train.callbacks.fault_guard"):
        results = run_pipeline(tiny(demo_root, out, "continue_on_non_finite_loss=true"))
    assert results is not None and (out / "results.json").is_file()
    assert f"non-finite at global step {FAULT_AT}" in caplog.text and "Training goes on" in caplog.text
    # all 3 epochs were trained: the last training epoch logged its index
    rows = (out / "csv" / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    epochs = {row.split(",")[header.index("train_epoch")] for row in rows[1:]} - {""}
    assert {float(e) for e in epochs} == {0.0, 1.0, 2.0}


@pytest.mark.slow
def test_same_seed_cpu_runs_are_identical(demo_root: Path, tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        results = run_pipeline(tiny(demo_root, out, "train.trainer.max_epochs=1", "finetune.trainer.max_epochs=1"))
        metrics = (out / "csv" / "lightning_logs" / "version_0" / "metrics.csv").read_text()
        runs.append((results, metrics, load_checkpoint(out / "finetune" / "checkpoints" / "last.ckpt")["state_dict"]))
    (ra, ma, wa), (rb, mb, wb) = runs
    assert ra["metrics"] == rb["metrics"] and ra["offline_metrics"] == rb["offline_metrics"]
    assert ma == mb  # every logged loss term of every step
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
