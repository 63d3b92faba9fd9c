"""Training progress: the bar in a terminal and plain lines otherwise (``logging.progress: auto``), the
line mode's fields and interval, the bar without ``v_num``, and a logging interval of at most one epoch,
so that a short epoch still writes its training loss to metrics.csv."""

from __future__ import annotations

import csv
import logging
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from src.train.callbacks.progress import (
    LineProgress,
    LiveProgressBar,
    LogIntervalFit,
    batch_size,
    progress_callback,
    resolve_progress_mode,
)
from src.train.trainer import build_trainer

#: 4 batches of 5 samples per epoch: fewer than Lightning's default logging interval of 50, as in the demo
SAMPLES, BATCH = 20, 5


class Tiny(pl.LightningModule):
    """A linear regression logging its training loss to the progress bar, as the SSL models do."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(3, 1)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        loss = ((self.net(x) - y) ** 2).mean()
        self.log("train_loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=x.shape[0])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(SAMPLES, 3, generator=g), torch.randn(SAMPLES, 1, generator=g))
        return DataLoader(data, batch_size=BATCH)


def set_terminal(monkeypatch: pytest.MonkeyPatch, is_terminal: bool) -> None:
    for stream in (sys.stdout, sys.stderr):
        monkeypatch.setattr(stream, "isatty", lambda: is_terminal)


def build(tmp_path: Path, logging_cfg: dict[str, Any], **trainer: Any) -> pl.Trainer:
    cfg = {"max_epochs": 2, "accelerator": "cpu", "enable_model_summary": False, **trainer}
    return build_trainer(cfg, tmp_path, logging_cfg={"csv": True, **logging_cfg}, phase="pretrain").trainer


@pytest.mark.parametrize(
    ("is_terminal", "mode", "kind"), [(True, "bar", LiveProgressBar), (False, "lines", LineProgress)]
)
def test_auto_picks_the_bar_in_a_terminal_and_lines_otherwise(
    is_terminal: bool, mode: str, kind: type, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_terminal(monkeypatch, is_terminal)
    assert resolve_progress_mode("auto") == resolve_progress_mode(None) == mode
    trainer = build(tmp_path, {"progress": "auto"})
    assert type(trainer.progress_bar_callback) is kind
    assert sum(isinstance(c, pl.callbacks.ProgressBar) for c in trainer.callbacks) == 1


def test_explicit_modes_and_a_wrong_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    set_terminal(monkeypatch, False)
    assert isinstance(build(tmp_path, {"progress": "bar"}).progress_bar_callback, LiveProgressBar)
    set_terminal(monkeypatch, True)
    assert isinstance(build(tmp_path, {"progress": "lines"}).progress_bar_callback, LineProgress)
    assert build(tmp_path, {"progress": "none"}).progress_bar_callback is None
    # a trainer config that turns the bar off wins over the mode
    assert build(tmp_path, {"progress": "bar"}, enable_progress_bar=False).progress_bar_callback is None
    with pytest.raises(ValueError, match=r"logging.progress='fancy' is not a progress mode; use one of auto, bar"):
        progress_callback({"progress": "fancy"}, "pretrain", {})
    with pytest.raises(ValueError, match=r"logging.progress_every_n_steps must be >= 1"):
        progress_callback({"progress": "lines", "progress_every_n_steps": 0}, "pretrain", {})


LINE = re.compile(
    r"^pretrain epoch (?P<epoch>\d+)/2 step (?P<step>\d+)/8 \((?P<pct>\d+)%\) (?P<rate>[\d.]+) samples/s "
    r"train_loss=(?P<loss>[-+.\deE]+) ETA (?P<eta>\d+:\d\d:\d\d)$"
)


def test_line_mode_writes_one_line_per_interval_with_its_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    set_terminal(monkeypatch, False)  # output to a file, CI, nohup: lines
    trainer = build(tmp_path, {"progress_every_n_steps": 3})
    with caplog.at_level(logging.INFO, logger="src.train.callbacks.progress"):
        trainer.fit(Tiny())
    messages = [r.getMessage() for r in caplog.records if r.name == "src.train.callbacks.progress"]
    steps = [m for m in messages if LINE.match(m)]
    # the first step (the run has started), then every 3 steps of the 8
    assert [int(LINE.match(m)["step"]) for m in steps] == [1, 3, 6]
    assert [int(LINE.match(m)["epoch"]) for m in steps] == [1, 1, 2]
    assert [int(LINE.match(m)["pct"]) for m in steps] == [12, 38, 75]
    for m in steps:
        fields = LINE.match(m)
        assert float(fields["rate"]) > 0 and torch.isfinite(torch.tensor(float(fields["loss"])))
    assert "pretrain: 8 steps (4 training batches per epoch), from step 0; progress every 3 steps" in messages
    assert "log_every_n_steps 50 > 4 training batches per epoch: logging every 4 steps" in messages
    epoch_lines = [m for m in messages if re.match(r"^pretrain epoch \d/2 done in \d+:\d\d:\d\d: train_loss=", m)]
    assert len(epoch_lines) == 2
    assert re.match(r"^pretrain: 8 steps in \d+:\d\d:\d\d$", messages[-1])
    # nothing else: the two notices at the start, one line per interval, one per epoch, one at the end
    assert len(messages) == 2 + len(steps) + 2 + 1


def test_line_mode_by_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    set_terminal(monkeypatch, False)
    trainer = build(tmp_path, {"progress_every_s": 3600})
    with caplog.at_level(logging.INFO, logger="src.train.callbacks.progress"):
        trainer.fit(Tiny())
    steps = [r.getMessage() for r in caplog.records if LINE.match(r.getMessage())]
    assert [int(LINE.match(m)["step"]) for m in steps] == [1]  # the first step; no hour has passed


def test_the_bar_shows_the_logged_loss_without_v_num(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    set_terminal(monkeypatch, True)
    trainer = build(tmp_path, {}, max_epochs=1)
    model = Tiny()
    trainer.fit(model)
    bar = trainer.progress_bar_callback
    assert isinstance(bar, LiveProgressBar)
    shown = bar.get_metrics(trainer, model)
    assert "v_num" not in shown and set(shown) == {"train_loss"}


def test_a_short_epoch_still_logs_its_training_loss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """4 batches per epoch against Lightning's default interval of 50: a row every epoch in metrics.csv."""
    set_terminal(monkeypatch, False)
    trainer = build(tmp_path, {"progress": "none"})
    assert any(isinstance(c, LogIntervalFit) for c in trainer.callbacks) and trainer.log_every_n_steps == 50
    trainer.fit(Tiny())
    assert trainer.log_every_n_steps == SAMPLES // BATCH
    with (tmp_path / "csv" / "lightning_logs" / "version_0" / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["train_loss"]]
    assert [int(r["step"]) for r in rows] == [3, 7]


def test_batch_size_reads_the_first_tensor() -> None:
    x = torch.zeros(7, 3)
    assert batch_size(((x, x, x), torch.zeros(7))) == 7
    assert batch_size({"x": torch.zeros(4, 2)}) == 4
    assert batch_size([torch.tensor(1.0), ["a"]]) is None
