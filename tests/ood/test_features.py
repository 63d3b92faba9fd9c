"""The feature store: one network pass per (preprocessor, split), only the fields read, batches
aligned with the inputs, seeded draws that do not depend on the order of splits or on where the
inputs come from; Features access errors and concatenation."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from src.ood.detectors import build_detector
from src.ood.features import Features, FeatureStore, MissingFeatureError, rng_neutral_iter, split_seed
from tests.ood.fakes import InMemoryProtocol, tiny_network


@pytest.fixture(scope="module")
def net_h():  # type: ignore[no-untyped-def]
    return tiny_network("ssl_bayes_h", seed=2)


def test_features_get_errors_and_cat() -> None:
    f = Features(logits=torch.zeros(2, 3), feats=torch.ones(2, 4))
    with pytest.raises(MissingFeatureError, match="needs a stochastic model"):
        f.get("mu", "sigmamean")
    with pytest.raises(MissingFeatureError, match="was not computed: declare it"):
        Features(logits=torch.zeros(2, 3), space="H").get("mu")
    assert len(f) == 2 and torch.equal(f.get("feats"), torch.ones(2, 4))
    a = Features(logits=torch.zeros(2, 3), samples=torch.zeros(5, 2, 4), space="H")
    b = Features(logits=torch.ones(3, 3), samples=torch.ones(5, 3, 4), space="H")
    c = Features.cat([a, b])
    assert c.logits.shape == (5, 3) and c.samples is not None and c.samples.shape == (5, 5, 4)  # MC axis first
    assert c.feats is None and c.space == "H"
    with pytest.raises(ValueError, match="no feature batches"):
        Features.cat([])


def test_each_split_is_computed_once_with_the_union_of_reads(net_h) -> None:  # type: ignore[no-untyped-def]
    protocol = InMemoryProtocol()
    detectors = [build_detector(n) for n in ("msp", "mds", "sigmamean", "kldivsimk")]
    store = FeatureStore.for_detectors(net_h, protocol, detectors)
    assert store.reads == {"default": {"logits", "feats"}, "barlowtwins": {"logits", "mu", "log_var"}}
    calls = []
    real = net_h.features
    net_h.features = lambda x, reads=(): calls.append(x.shape[0]) or real(x, reads)  # type: ignore[method-assign]
    try:
        for _ in range(3):
            split = store.split("default", "id/test")
            batches = split.batches
            assert len(split.all()) == 20 and split.labels.tolist() == (torch.arange(20) % 4).tolist()
    finally:
        del net_h.features
    assert calls == [8, 8, 4] and protocol.reads == [("id/test", "default", False)]
    assert batches[0].feats is not None and batches[0].mu is None  # what the default detectors read
    bt = store.split("barlowtwins", "id/test").batches[0]
    assert bt.mu is not None and bt.feats is None
    with pytest.raises(KeyError, match="no features for the 'barlowtwins'"):
        FeatureStore(net_h, protocol, {"default": set()}).split("barlowtwins", "id/test")
    with pytest.raises(ValueError, match="unknown feature fields"):
        FeatureStore(net_h, protocol, {"default": {"sigma"}})


def test_barlowtwins_features_are_the_plain_view(net_h) -> None:  # type: ignore[no-untyped-def]
    protocol = InMemoryProtocol()
    store = FeatureStore(net_h, protocol, {"barlowtwins": {"mu"}})
    views, _ = next(iter(store.split("barlowtwins", "id/test").inputs(True)))
    batch = store.split("barlowtwins", "id/test").batches[0]
    assert torch.equal(batch.mu, net_h.features(views[2], {"mu"}).mu)  # v3 (μ is deterministic)
    again = next(iter(store.split("barlowtwins", "id/test").inputs(True)))[0]
    assert not torch.equal(again[0], views[0]) and torch.equal(again[2], views[2])  # v1 random, v3 fixed


def test_seeded_features_do_not_depend_on_the_split_order(net_h) -> None:  # type: ignore[no-untyped-def]
    def draw(order: list[str]) -> dict[str, torch.Tensor]:
        store = FeatureStore(net_h, InMemoryProtocol(), {"default": {"feats"}}, seed=7)
        torch.manual_seed(len(order))  # the global state before does not matter either
        return {name: store.split("default", name).all().feats for name in order}  # type: ignore[misc]

    a, b = draw(["id/test", "id/val"]), draw(["id/val", "ood/val", "id/test"])
    assert torch.equal(a["id/test"], b["id/test"]) and torch.equal(a["id/val"], b["id/val"])
    # and the global RNG is left where it was
    state = torch.get_rng_state()
    seeded = FeatureStore(net_h, InMemoryProtocol(), {"default": {"feats"}}, seed=7)
    assert len(seeded.split("default", "id/train").batches) == 8
    assert torch.equal(torch.get_rng_state(), state)
    assert split_seed(7, "default", "id/test") != split_seed(7, "default", "id/val")
    # without a seed the draws come from the global RNG
    unseeded = FeatureStore(net_h, InMemoryProtocol(), {"default": {"feats"}})
    assert len(unseeded.split("default", "id/test").batches) == 3
    assert not torch.equal(torch.get_rng_state(), state)


def test_rng_neutral_iteration_of_a_dataloader() -> None:
    loader = DataLoader(TensorDataset(torch.arange(6.0)), batch_size=4)
    state = torch.get_rng_state()
    iter(loader)
    assert not torch.equal(torch.get_rng_state(), state)  # a DataLoader draws its base seed
    state = torch.get_rng_state()
    batches = list(rng_neutral_iter(loader))
    assert torch.equal(torch.get_rng_state(), state) and len(batches) == 2
