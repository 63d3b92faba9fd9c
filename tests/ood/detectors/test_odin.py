"""odin against the per-sample reference (its own backward per sample), the zero-gradient sign,
the input std it needs, and the APS grid order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.ood.detectors import build_detector
from src.ood.detectors.odin import ODIN
from tests.ood.fakes import CIFAR_STD, LogitsNet, images
from tests.reference import detectors as ref


@pytest.mark.parametrize(("temperature", "noise"), [(1.0, 0.0014), (1000.0, 0.0028), (10.0, 0.05)])
def test_odin_matches_reference(temperature: float, noise: float) -> None:
    net, x = LogitsNet(), images(12, 3, (3, 4, 4), torch.float64)
    pred, conf = ODIN(temperature=temperature, noise=noise).postprocess_network(net, x, None)  # type: ignore[arg-type]
    perturbed = net.calls[-1]
    ref_pred, ref_conf, ref_perturbed = ref.odin(net.logits, x, temperature, noise, CIFAR_STD)
    np.testing.assert_array_equal(pred.numpy(), ref_pred)
    np.testing.assert_allclose(conf.numpy(), ref_conf, rtol=1e-10)
    torch.testing.assert_close(perturbed, torch.stack(ref_perturbed), rtol=0, atol=1e-15)
    assert pred.dtype == torch.int64 and conf.shape == (12,)


def test_odin_zero_gradient_counts_as_positive_and_params_untouched() -> None:
    net, x = LogitsNet(dead_channel=1), images(4, 4, (3, 4, 4), torch.float64)
    x_before = x.clone()
    ODIN(temperature=1.0, noise=0.01).postprocess_network(net, x, None)  # type: ignore[arg-type]
    shift = x - net.calls[-1]
    # channel 1 has ∂L/∂x = 0 everywhere → s = +1 → x̃ = x − ε / std_1
    torch.testing.assert_close(shift[:, 1], torch.full_like(shift[:, 1], 0.01 / CIFAR_STD[1]))
    for c in (0, 2):
        torch.testing.assert_close(shift[:, c].abs(), torch.full_like(shift[:, c], 0.01 / CIFAR_STD[c]))
    assert all(p.grad is None for p in net.predictor.parameters())
    assert torch.equal(x, x_before) and not x.requires_grad


def test_odin_needs_input_std() -> None:
    x = images(2, 5, (3, 4, 4), torch.float64)
    with pytest.raises(ValueError, match="input_std"):
        ODIN().postprocess_network(LogitsNet(input_std=None), x, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="channels"):
        ODIN().postprocess_network(LogitsNet(input_std=(0.5, 0.5)), x, None)  # type: ignore[arg-type]


def test_odin_float32_output() -> None:
    net, x = LogitsNet(dtype=torch.float32), images(7, 6, (3, 4, 4))
    pred, conf = ODIN().postprocess_network(net, x, None)  # type: ignore[arg-type]
    assert pred.dtype == torch.int64 and conf.dtype == torch.float32 and conf.shape == (7,)
    assert torch.isfinite(conf).all()


def test_odin_candidate_order_and_set_hyperparam() -> None:
    det = build_detector("odin")
    assert isinstance(det, ODIN) and det.reads == set() and det.get_hyperparam() == [1000.0, 0.0014]
    expected = [[t, e] for e in (0.0014, 0.0028) for t in (1, 10, 100, 1000)]
    assert det.candidates() == expected  # temperature (the first sweep key) varies fastest
    det.set_hyperparam([10, 0.0028])
    assert det.get_hyperparam() == [10.0, 0.0028] and det.temperature == 10.0 and det.noise == 0.0028
