"""A misspelt config key or an unknown option fails at composition with its full name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
CONF = SRC / "experiments" / "conf"


# ============================================================================ 6. misspelt config keys
@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.kwargs.mc_sampels=3", "train.kwargs.mc_sampels"),
        ("model.backbone.z_dimm=8", "model.backbone.z_dimm"),
        ("dataset.batch_sise=8", "dataset.batch_sise"),
    ],
)
def test_misspelt_config_key_is_named(override: str, key: str) -> None:
    with initialize_config_dir(version_base=None, config_dir=str(CONF)):
        with pytest.raises(ConfigCompositionException, match=rf"Could not override '{re.escape(key)}'") as info:
            compose(config_name="config", overrides=["+model/task/ssl@train=ssl_bayes_h", override])
    # the struct-mode cause names the full key, so the typo is found at composition, not mid-run
    assert f"full_key: {key}" in str(info.value.__cause__)


def test_unknown_config_option_lists_the_available_ones() -> None:
    with initialize_config_dir(version_base=None, config_dir=str(CONF)):
        with pytest.raises(Exception, match=r"Could not find 'model/task/ssl/ssl_bayes_q'[\s\S]*ssl_bayes_h"):
            compose(config_name="config", overrides=["+model/task/ssl@train=ssl_bayes_q"])
