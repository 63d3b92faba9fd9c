"""``train.channels_last``: true, false or auto (on when CUDA is available), a clear error otherwise."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from src.task.ssl import resolve_channels_last
from tests.conftest import build_model, compose_config


@pytest.mark.parametrize("model_name", ["ssl", "ssl_bayes_h", "ssl_bayes_z"])
def test_config_default_is_auto(model_name: str) -> None:
    cfg = compose_config(f"+model/task/ssl@train={model_name}")
    assert cfg.train.channels_last == "auto" and cfg.train.kwargs.channels_last == "auto"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), ("auto", torch.cuda.is_available()), (" AUTO ", torch.cuda.is_available())],
)
def test_values(value: Any, expected: bool) -> None:
    assert resolve_channels_last(value) is expected
    model = build_model("ssl", "barlow_twins", channels_last=value)
    assert model.channels_last is expected
    conv = model.encoder.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) is expected
    # the hyper-parameters keep the value as given: a checkpoint reloads with the loading machine's choice
    assert model.hparams["channels_last"] == value


@pytest.mark.parametrize("bad", ["yes", 1, None, "on"])
def test_bad_value_is_a_clear_error(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"train\.channels_last must be true, false or auto"):
        build_model("ssl", "barlow_twins", channels_last=bad)
