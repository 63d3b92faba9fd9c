"""logpprior against the per-sample reference: the prior log-density (standard normal, or the MoG
prior's per-dimension 1-D mixture) of the MC-mean representation of v1 and v2 (or of v3)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor

from src.ood.detectors.logpprior import LogPPrior
from src.ood.features import Features
from src.ood.wrapper import OODNetwork
from tests.ood.fakes import InMemoryProtocol, store_for, tiny_network
from tests.reference import detectors as ref


@pytest.fixture(scope="module", params=[("ssl_bayes_h", "mog"), ("ssl_bayes_h", "standard"), ("ssl_bayes_z", "mog")])
def bayes_net(request: pytest.FixtureRequest) -> OODNetwork:
    return tiny_network(request.param[0], seed=7, prior=request.param[1])


class Spy:
    """Forwards to a network and records the inputs of each ``features`` call."""

    def __init__(self, net: OODNetwork) -> None:
        self._net = net
        self.inputs: list[Tensor] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._net, name)

    def features(self, x: Tensor, reads: Any = ()) -> Features:
        self.inputs.append(x)
        return self._net.features(x, reads)


@pytest.mark.parametrize("use_augumented", [True, False])
def test_logpprior_matches_reference(bayes_net: OODNetwork, use_augumented: bool) -> None:
    det = LogPPrior(use_augumented=use_augumented)
    assert det.uses_augmented_views == use_augumented
    assert det.reads == ({"logits"} if use_augumented else {"logits", "sample_mean"})
    protocol = InMemoryProtocol()
    test = store_for(bayes_net, [det], protocol).split("barlowtwins", "id/test")
    (views, _), batch = next(iter(test.inputs(use_augumented))), test.batches[0]
    spy = Spy(bayes_net)
    torch.manual_seed(9)
    pred, conf = det.postprocess_network(spy, views, batch)  # type: ignore[arg-type]
    assert pred.dtype == torch.int64 and conf.dtype == torch.float32 and conf.shape == (8,)
    assert pred.tolist() == batch.logits.argmax(1).tolist()  # from the v3 features
    if not use_augumented:
        assert spy.inputs == []  # r(v3) comes from the features
        assert batch.sample_mean is not None
        expected = ref.log_prior_density(bayes_net.prior, batch.sample_mean)
    else:
        # v1 then v2 through the network, each drawing fresh MC noise
        assert len(spy.inputs) == 2 and spy.inputs[0] is views[0] and spy.inputs[1] is views[1]
        torch.manual_seed(9)
        r1 = bayes_net.features(views[0], {"sample_mean"}).sample_mean
        r2 = bayes_net.features(views[1], {"sample_mean"}).sample_mean
        assert r1 is not None and r2 is not None
        p1, p2 = ref.log_prior_density(bayes_net.prior, r1), ref.log_prior_density(bayes_net.prior, r2)
        expected = [a + b for a, b in zip(p1, p2)]
        if not hasattr(bayes_net.prior, "means"):  # closed form: −D·ln(2π) − ½(‖r(v1)‖² + ‖r(v2)‖²)
            d = r1.shape[1]
            closed = -d * math.log(2 * math.pi) - 0.5 * (r1.double().pow(2).sum(1) + r2.double().pow(2).sum(1))
            torch.testing.assert_close(conf.double(), closed, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(conf.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-3)


def test_logpprior_errors(bayes_net: OODNetwork) -> None:
    ssl = tiny_network("ssl", seed=1)
    det = LogPPrior()
    batch = store_for(ssl, [det], InMemoryProtocol()).split("barlowtwins", "id/test")
    views = next(iter(batch.inputs(True)))[0]
    with pytest.raises(ValueError, match="stochastic model"):
        det.postprocess_network(ssl, views, batch.batches[0])
    bayes_batch = store_for(bayes_net, [det], InMemoryProtocol()).split("barlowtwins", "id/test").batches[0]
    with pytest.raises(ValueError, match="three views"):
        det.postprocess_network(bayes_net, views[2], bayes_batch)
