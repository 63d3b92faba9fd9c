"""Loggers from the `logging` config node, and the wandb session of a stage."""

from __future__ import annotations

from pathlib import Path

import pytest
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from src.train.loggers import LOGGERS, ON_BY_DEFAULT, get_lightning_loggers, wandb_session


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
    """The reference raised here, so its semi-supervised DVC commands could not run (T-Q18b, D-Q1)."""
    cfg = {"wandb": False, "csv": True, "tracking_project_name": "bayes-ssl", "wandb_logger_kwargs": {"tags": ["x"]}}
    with caplog.at_level("WARNING"):
        loggers = get_lightning_loggers(cfg, tmp_path)
    assert [type(lg) for lg in loggers] == [CSVLogger]
    assert "tracking_project_name" in caplog.text and "wandb_logger_kwargs" in caplog.text


@pytest.mark.parametrize("wandb_on", [False, True])
def test_wandb_session_finishes_the_wandb_run_however_the_stage_ends(
    wandb_on: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wandb

    calls: list[int] = []
    monkeypatch.setattr(wandb, "finish", lambda *a, **k: calls.append(1))
    with wandb_session({"wandb": wandb_on}):
        pass
    with pytest.raises(RuntimeError, match="stage failed"), wandb_session({"wandb": wandb_on}):
        raise RuntimeError("stage failed")
    assert len(calls) == (2 if wandb_on else 0)


def test_every_registered_logger_has_its_flag_in_the_logging_config() -> None:
    from omegaconf import OmegaConf

    from tests.conftest import CONF

    flags = OmegaConf.load(CONF / "logging" / "default.yaml")
    assert set(LOGGERS) <= set(flags) and list(LOGGERS) == ["tensorboard", "wandb", "csv"]
    assert ON_BY_DEFAULT <= set(LOGGERS)
