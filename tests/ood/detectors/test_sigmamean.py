"""sigmamean against the per-sample reference: the mean posterior σ of the plain view's features."""

from __future__ import annotations

import pytest
import torch

from src.ood.detectors import build_detector
from src.ood.detectors.sigmamean import SigmaMean
from tests.ood.fakes import InMemoryProtocol, features, store_for, tiny_network
from tests.reference import detectors as ref


def test_sigmamean_matches_reference() -> None:
    g = torch.Generator().manual_seed(5)
    logits, log_var = torch.randn(6, 4, generator=g), torch.empty(6, 16).uniform_(-9.2, 3.2, generator=g)
    pred, conf = SigmaMean().postprocess(features(logits, log_var=log_var))
    assert pred.dtype == torch.int64 and conf.dtype == torch.float32 and conf.shape == (6,)
    assert pred.tolist() == logits.argmax(1).tolist()
    torch.testing.assert_close(conf, torch.tensor(ref.sigma_mean(log_var), dtype=torch.float32), rtol=1e-5, atol=0)


@pytest.mark.parametrize("model_name", ["ssl_bayes_h", "ssl_bayes_z"])
def test_sigmamean_on_a_bayes_network(model_name: str) -> None:
    net = tiny_network(model_name, seed=4)
    det = build_detector("sigmamean")
    assert isinstance(det, SigmaMean) and det.preprocessor == "barlowtwins" and det.reads == {"logits", "log_var"}
    batch = store_for(net, [det], InMemoryProtocol()).split("barlowtwins", "id/test").batches[0]
    _, conf = det.postprocess(batch)
    assert batch.log_var is not None
    torch.testing.assert_close(
        conf, torch.tensor(ref.sigma_mean(batch.log_var), dtype=torch.float32), rtol=1e-5, atol=0
    )
    # σ is deterministic given the image: the same as the posterior of a direct call on v3
    x = InMemoryProtocol()("id/test", "barlowtwins", False)[0][0][2]
    torch.testing.assert_close(net.features(x, {"log_var"}).log_var, batch.log_var)


def test_sigmamean_needs_a_stochastic_model() -> None:
    with pytest.raises(ValueError, match="stochastic model"):
        SigmaMean().postprocess(features(torch.zeros(2, 3)))
