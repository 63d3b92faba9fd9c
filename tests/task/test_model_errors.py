"""Invalid model arguments and batches of one sample are refused with the key and the fix."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from src.model.loss.barlow_twins import BarlowTwinsLoss
from src.model.loss.vicreg import VICRegLoss
from tests.conftest import build_model, three_view_batch


# ============================================================================ 7./8. model arguments
@pytest.mark.parametrize("model_name", ["ssl_bayes_h", "ssl_bayes_z"])
@pytest.mark.parametrize("mc_samples", [0, -2])
def test_mc_samples_below_one(model_name: str, mc_samples: int) -> None:
    with pytest.raises(ValueError, match=rf"train\.mc_samples must be an integer >= 1, got {mc_samples}"):
        build_model(model_name, "mc_barlow_twins", mc_samples=mc_samples)


@pytest.mark.parametrize("model_name", ["ssl_bayes_h", "ssl_bayes_z"])
def test_negative_beta_scale(model_name: str) -> None:
    with pytest.raises(ValueError, match=r"train\.beta_scale must be a number >= 0, got -0\.1"):
        build_model(model_name, "mc_vicreg", beta_scale=-0.1)


# ============================================================================ 9. a batch of one sample
@pytest.mark.parametrize(
    "make_loss", [lambda: BarlowTwinsLoss(batch_size=1), lambda: VICRegLoss(batch_size=1, z_dim=8)], ids=["bt", "vic"]
)
def test_loss_refuses_a_batch_of_one(make_loss: Any) -> None:
    with pytest.raises(ValueError, match=r"batch_size=1; .*at least 2 samples \(dataset\.batch_size\)"):
        make_loss()(torch.randn(1, 8), torch.randn(1, 8))


@pytest.mark.parametrize(
    ("model_name", "loss"), [("ssl", "barlow_twins"), ("ssl", "vicreg"), ("ssl_bayes_h", "mc_vicreg")]
)
def test_training_step_refuses_a_batch_of_one(model_name: str, loss: str) -> None:
    model = build_model(model_name, loss, hidden_dim=16, z_dim=16)
    with pytest.raises(ValueError, match=r"training batch of 1 sample\(s\).*set dataset\.batch_size >= 2"):
        model.training_step(three_view_batch(batch_size=1), 0)
