"""ebo against a per-sample energy written here from the formula (T · log Σ_c exp(f_c / T), in float64
with the max shifted out), the OpenOOD grid, the temperature's checks and a fixed --hyperparam."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from src.ood.detectors import build_detector
from src.ood.detectors.ebo import EBO
from tests.ood.fakes import features


def energy_per_sample(logits: Tensor, temperature: float) -> list[float]:
    out = []
    for row in logits.tolist():
        scaled = [v / temperature for v in row]
        top = max(scaled)
        out.append(temperature * (top + math.log(sum(math.exp(v - top) for v in scaled))))
    return out


@pytest.mark.parametrize("temperature", [1, 10, 100, 1000, 0.5])
def test_ebo_matches_per_sample_energy(temperature: float) -> None:
    logits = 4 * torch.randn(40, 7, generator=torch.Generator().manual_seed(3))
    det = EBO(temperature=temperature)
    pred, conf = det.postprocess(features(logits))
    assert pred.dtype == torch.int64 and conf.dtype == torch.float32 and conf.shape == (40,)
    expected = torch.tensor(energy_per_sample(logits.double(), temperature), dtype=torch.float64)
    torch.testing.assert_close(conf.double(), expected, rtol=1e-6, atol=1e-5)
    assert torch.equal(pred, logits.argmax(1))
    # float64 logits: the same to float64 precision
    conf64 = det.score(features(logits.double()))[1]
    torch.testing.assert_close(conf64, expected, rtol=1e-12, atol=1e-12)


def test_ebo_large_logits_stay_finite() -> None:
    logits = torch.tensor([[1000.0, 999.0, -1000.0], [-500.0, -500.0, -500.0]])
    conf = EBO(temperature=1).score(features(logits))[1]
    assert torch.isfinite(conf).all()
    torch.testing.assert_close(conf, torch.tensor([1000 + math.log1p(math.exp(-1)), -500 + math.log(3)]))


def test_ebo_config_grid_and_hyperparams() -> None:
    det = build_detector("ebo")
    assert isinstance(det, EBO) and det.temperature == 1.0 and det.reads == {"logits"} and not det.needs_fit
    assert det.candidates() == [[1], [10], [100], [1000]]
    det.set_hyperparam([100])
    assert det.get_hyperparam() == [100.0] and det.temperature == 100.0
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="temperature must be positive"):
            det.set_hyperparam([bad])
    with pytest.raises(ValueError, match="temperature must be positive"):
        EBO(temperature=0)
    fixed = build_detector("ebo", hyperparam={"temperature": 10})
    assert isinstance(fixed, EBO) and fixed.fixed_hyperparam == [10] and fixed.temperature == 10.0
