"""Loggers from the `logging` config node, and the wandb session of a stage."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from src.train.loggers import LOGGERS, ON_BY_DEFAULT, get_lightning_loggers, wandb_mode, wandb_session


def test_csv_only_by_default(tmp_path: Path) -> None:
    loggers = get_lightning_loggers({"wandb": False, "csv": True, "tensorboard": False}, tmp_path)
    assert [type(lg) for lg in loggers] == [CSVLogger]
    assert Path(loggers[0].save_dir) == tmp_path / "csv" and loggers[0].name == "lightning_logs"


def test_order_tensorboard_wandb_csv_and_wandb_offline_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    # wandb credentials in ~/.netrc do not switch wandb online: the file is not read
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password 0123456789\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_API_KEY", "0123456789")
    cfg = {
        "wandb": True,
        "csv": True,
        "tensorboard": True,
        "tracking_project_name": "bayes-ssl",
        "wandb_logger_kwargs": {"tags": ["a"]},
    }
    loggers = get_lightning_loggers(cfg, tmp_path / "run")
    assert [type(lg) for lg in loggers] == [TensorBoardLogger, WandbLogger, CSVLogger]
    init = loggers[1]._wandb_init
    assert init["mode"] == "offline"  # never needs network
    assert init["project"] == "bayes-ssl" and init["tags"] == ["a"]
    assert init["dir"] == str(tmp_path / "run")  # wandb adds wandb/: <run>/wandb/offline-run-*
    assert "reinit" not in init  # a boolean reinit is deprecated in wandb >= 0.19
    assert "WANDB_MODE" not in os.environ  # the process environment is left alone


@pytest.mark.parametrize(
    ("logger_kwargs", "env", "expected"),
    [
        ({}, None, ("offline", "default")),
        ({}, "online", ("online", "WANDB_MODE")),
        ({}, "disabled", ("disabled", "WANDB_MODE")),
        ({}, "dryrun", ("offline", "WANDB_MODE")),  # wandb's deprecated alias, mapped
        ({"mode": "offline"}, "online", ("offline", "logging.wandb_logger_kwargs.mode")),  # the config wins
        ({"mode": "online"}, "disabled", ("online", "logging.wandb_logger_kwargs.mode")),
        ({"offline": False}, "disabled", ("online", "logging.wandb_logger_kwargs.offline")),
        ({"offline": True}, None, ("offline", "logging.wandb_logger_kwargs.offline")),
    ],
)
def test_wandb_mode_precedence(
    logger_kwargs: dict[str, Any], env: str | None, expected: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """logging.wandb_logger_kwargs.mode > WANDB_MODE > offline."""
    if env is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", env)
    assert wandb_mode(logger_kwargs) == expected


def test_wandb_mode_errors_and_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ValueError, match=r"wandb mode 'sometimes' \(from WANDB_MODE\)"):
        get_lightning_loggers({"wandb": True, "csv": False}, tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = {"wandb": True, "csv": False, "wandb_logger_kwargs": {"offline": True}}
    (logger,) = get_lightning_loggers(cfg, tmp_path / "ft", group="abc12345", job_type="finetune")
    init = logger._wandb_init
    assert (init["mode"], init["group"], init["job_type"], init["name"]) == (
        "offline",
        "abc12345",
        "finetune",
        "abc12345-finetune",
    )
    assert "offline" not in init and logger._offline is False  # Lightning's flag would set WANDB_MODE=dryrun
    # the config's own group/name are kept
    cfg["wandb_logger_kwargs"] = {"group": "mine", "name": "n"}
    (logger,) = get_lightning_loggers(cfg, tmp_path / "ft", group="abc12345", job_type="finetune")
    assert (logger._wandb_init["group"], logger._wandb_init["name"], logger._wandb_init["mode"]) == (
        "mine",
        "n",
        "disabled",
    )


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
