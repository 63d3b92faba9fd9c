"""The trainer configs' speed defaults: one pretraining device unless asked, cuDNN autotuning on, and
autotuning giving way to ``deterministic``."""

from __future__ import annotations

import logging

import pytest
import torch

from src.train.run_config import is_ignored
from src.train.trainer import trainer_kwargs
from tests.conftest import compose_config


def test_pretrain_pins_one_device_and_both_phases_autotune() -> None:
    cfg = compose_config("+model/task/ssl@train=ssl_bayes_h", "+model/task@finetune=finetune")
    assert cfg.train.trainer.devices == 1  # `auto` with sync_batchnorm became DDP on a multi-GPU host
    assert cfg.train.trainer.benchmark is True and cfg.finetune.trainer.benchmark is True
    assert trainer_kwargs(cfg.train.trainer)["benchmark"] is True
    # multi-GPU stays one override away
    multi = compose_config("+model/task/ssl@train=ssl", "train.trainer.devices=2", "train.trainer.strategy=ddp")
    assert multi.train.trainer.devices == 2


def test_deterministic_turns_autotuning_off(caplog: pytest.LogCaptureFixture) -> None:
    cfg = compose_config("+model/task/ssl@train=ssl", "train.trainer.deterministic=true")
    with caplog.at_level(logging.INFO, logger="src.train.trainer"):
        kwargs = trainer_kwargs(cfg.train.trainer)
    assert kwargs["benchmark"] is False and kwargs["deterministic"] is True
    assert "benchmark=false" in caplog.text
    # the debug node is applied first, so a deterministic debug run does not autotune either
    assert trainer_kwargs({"benchmark": True}, {"deterministic": True})["benchmark"] is False
    assert trainer_kwargs({"benchmark": True, "deterministic": False})["benchmark"] is True


def test_speed_only_keys_do_not_count_in_the_run_record() -> None:
    for key in ("train.trainer.benchmark", "finetune.trainer.benchmark", "train.channels_last"):
        assert is_ignored(key), key
    assert is_ignored("train.kwargs.channels_last")
    assert not is_ignored("train.trainer.devices") and not is_ignored("dataset.augment_on_device")


def test_benchmark_reaches_the_trainer(tmp_path) -> None:
    from src.train.trainer import build_trainer

    before = torch.backends.cudnn.benchmark
    try:
        cfg = compose_config("+model/task/ssl@train=ssl")
        build_trainer(cfg.train.trainer, tmp_path, reliability=False, logging_cfg={})
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = before
