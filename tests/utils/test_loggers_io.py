"""Loggers from the `logging` config node, and atomic file output."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from src.train.loggers import get_lightning_loggers
from src.utils.io import atomic_write, read_json, write_json


def test_csv_only_by_default(tmp_path: Path) -> None:
    loggers = get_lightning_loggers({"wandb": False, "csv": True, "tensorboard": False}, tmp_path)
    assert [type(lg) for lg in loggers] == [CSVLogger]
    assert Path(loggers[0].save_dir) == tmp_path / "csv" and loggers[0].name == "lightning_logs"


def test_order_tensorboard_wandb_csv_and_wandb_offline_without_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with wandb credentials
    cfg = {
        "wandb": True,
        "csv": True,
        "tensorboard": True,
        "tracking_project_name": "bayes-ssl",
        "wandb_logger_kwargs": {"tags": ["a"]},
    }
    loggers = get_lightning_loggers(cfg, tmp_path / "run")
    assert [type(lg) for lg in loggers] == [TensorBoardLogger, WandbLogger, CSVLogger]
    wandb_logger = loggers[1]
    assert wandb_logger._offline is True  # never needs network
    assert wandb_logger._wandb_init["project"] == "bayes-ssl" and wandb_logger._wandb_init["tags"] == ["a"]
    assert (tmp_path / "run" / "wandb").is_dir()


def test_wandb_options_without_wandb_are_ignored_with_a_warning(tmp_path: Path, caplog) -> None:
    """The reference raised here, so its semi-supervised DVC commands could not run (Quirk Q1)."""
    cfg = {"wandb": False, "csv": True, "tracking_project_name": "bayes-ssl", "wandb_logger_kwargs": {"tags": ["x"]}}
    with caplog.at_level("WARNING"):
        loggers = get_lightning_loggers(cfg, tmp_path)
    assert [type(lg) for lg in loggers] == [CSVLogger]
    assert "tracking_project_name" in caplog.text and "wandb_logger_kwargs" in caplog.text


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out" / "results.json"

    def fail(path: Path) -> None:
        path.write_text("{partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_write(target, fail)
    assert not target.exists() and os.listdir(target.parent) == []
    write_json(target, {"a": 1.5})
    assert target.read_text() == '{\n\t"a": 1.5\n}\n' and read_json(target) == {"a": 1.5}


def test_read_json_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_json(bad)


def test_unwritable_output_folder_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match="cannot create the output folder"):
        write_json(blocker / "sub" / "results.json", {})
