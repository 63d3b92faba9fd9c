"""The evaluation of one network with one detector over shared features.

The permanent form of the equivalence check made when detectors stopped calling the network
themselves: for every registered detector and model variant, evaluating with one feature store
shared by all detectors gives exactly (``np.array_equal``) the scores and rows of evaluating the
detector alone with its own store; without a seed for the deterministic model, with one for all.
Also: one network pass per (preprocessor, split, batch) for the feature detectors (hyper-parameter
candidates included), the ACC column from the ID test logits, the search's tie and skip rules.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from src.ood.detectors import DETECTORS, build_detector
from src.ood.detectors.base import Detector, NetworkDetector
from src.ood.evaluator import StudyResult, evaluate, hyperparameter_search, id_accuracy
from src.ood.features import Features, FeatureStore
from src.ood.wrapper import OODNetwork
from tests.ood.fakes import MODELS, InMemoryProtocol, tiny_network

ROWS = ["shifted", "nearood", "noise", "farood"]
#: small lists: above the first K candidates (10), one or two batches each
SMALL = {"id/train": 24, "id/val": 8, "ood/val": 8, "id/test": 8, "ood/near/shifted": 8, "ood/far/noise": 8}


@pytest.fixture(scope="module")
def networks() -> dict[str, OODNetwork]:
    return {name: tiny_network(name, seed=10 + i) for i, name in enumerate(MODELS)}


def applicable(net: OODNetwork) -> list[Detector]:
    """Every registered detector the model admits, with at most two APS candidates (time)."""
    out = []
    for det in (build_detector(n) for n in DETECTORS):
        if det.probabilistic and net.stochastic_space is None:
            continue
        det.sweep = {k: v[:2] for k, v in det.sweep.items()}
        out.append(det)
    return out


def run(net: OODNetwork, detectors: list[Detector], seed: int | None, shared: bool) -> dict[str, StudyResult]:
    """``evaluate`` for each detector, as ``run_studies`` drives it (torch seeded before each)."""
    protocol = InMemoryProtocol(SMALL)
    store = FeatureStore.for_detectors(net, protocol, detectors, seed=seed) if shared else None
    out = {}
    for det in detectors:
        if seed is not None:
            torch.manual_seed(seed)
        own = store or FeatureStore.for_detectors(net, InMemoryProtocol(SMALL), [det], seed=seed)
        out[det.name] = evaluate(net, det, protocol, features=own)  # type: ignore[arg-type]
    return out


def assert_same(a: StudyResult, b: StudyResult, name: str) -> None:
    assert a.rows == b.rows, name
    assert a.hyperparam == b.hyperparam, name
    assert a.scores.keys() == b.scores.keys(), name
    for key in a.scores:
        assert np.array_equal(a.scores[key], b.scores[key]), (name, key)


@pytest.mark.parametrize(
    "model_name", [pytest.param(m, marks=[] if m == "ssl" else [pytest.mark.slow]) for m in MODELS]
)  # the stochastic variants take longest (MC samples, three views): the edit loop checks ssl
def test_shared_features_give_the_scores_of_a_detector_alone(model_name: str, networks: dict[str, OODNetwork]) -> None:
    net = networks[model_name]
    seed = None if net.stochastic_space is None else 3  # the deterministic model needs none
    shared = run(net, applicable(net), seed, shared=True)
    alone = run(net, applicable(net), seed, shared=False)
    for name in shared:
        assert_same(shared[name], alone[name], name)
        rows = shared[name].rows
        assert [r["Dataset"] for r in rows] == ROWS
        assert all(np.isfinite(r[k]) for r in rows for k in ("AUROC", "FPR@95", "AUPR_IN", "AUPR_OUT", "ACC"))
        splits = ("id", "shifted", "noise")
        assert set(shared[name].scores) == {*splits, *(f"{s}_{k}" for s in splits for k in ("pred", "label"))} | {
            "ood_sets",
            "ood_groups",
        }


def test_feature_detectors_run_the_network_once_per_batch(networks: dict[str, OODNetwork]) -> None:
    net = networks["ssl_bayes_z"]
    detectors = [build_detector(n) for n in DETECTORS]
    detectors = [d for d in detectors if not isinstance(d, NetworkDetector)]
    assert any(d.candidates() for d in detectors)  # APS candidates share the validation features
    protocol = InMemoryProtocol(SMALL)
    store = FeatureStore.for_detectors(net, protocol, detectors)
    calls: list[int] = []
    real = net.features
    net.features = lambda x, reads=(): calls.append(x.shape[0]) or real(x, reads)  # type: ignore[method-assign]
    try:
        for det in detectors:
            if det.sweep:
                det.sweep = {k: v[:3] for k, v in det.sweep.items()}
            evaluate(net, det, protocol, features=store)  # type: ignore[arg-type]
    finally:
        del net.features
    kinds = {d.preprocessor for d in detectors}
    images = sum(len(protocol.data[s][1]) for s in protocol.data)
    assert sum(calls) == images * len(kinds)  # every list once per preprocessor, whatever the detectors
    assert sorted(set(protocol.reads)) == sorted({(s, k, False) for s in protocol.data for k in kinds})


def test_acc_is_the_accuracy_of_the_id_test_logits(networks: dict[str, OODNetwork]) -> None:
    net = networks["ssl"]
    store = FeatureStore(net, InMemoryProtocol(SMALL), {"default": {"logits"}})
    test = store.split("default", "id/test")
    logits, labels = test.all().logits, test.labels
    expected = 100.0 * float((logits.argmax(1) == labels).double().mean())
    assert id_accuracy(test) == pytest.approx(expected, abs=1e-12)
    result = evaluate(net, build_detector("msp"), InMemoryProtocol(SMALL), features=store)  # type: ignore[arg-type]
    assert {r["ACC"] for r in result.rows} == {id_accuracy(test)}


class Scripted(Detector):
    """Scores a fixed value per candidate: conf = v on ID batches, 0 on OOD ones (marked by huge logits)."""

    name = "scripted"

    def __init__(self, values: list[Any]) -> None:
        super().__init__(sweep={"v": values})
        self.v: Any = None

    def set_hyperparam(self, values: list[Any]) -> None:
        if values[0] == "refuse":
            raise ValueError("not for this data")
        self.v = values[0]

    def score(self, features: Features) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(features)
        ood = bool(features.logits[0, 0] > 1e3)
        return torch.zeros(n, dtype=torch.long), torch.full((n,), 0.0 if ood else float(self.v))


class FixedSplit:
    """A split of given features (what ``inference`` reads of a feature detector's split)."""

    def __init__(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.name = "fixed"
        self.batches = [Features(logits=logits[:3]), Features(logits=logits[3:])]
        self.labels = labels


def test_hyperparameter_search_ties_skips_and_failure(networks: dict[str, OODNetwork]) -> None:
    id_val = FixedSplit(torch.zeros(6, 2), torch.arange(6) % 2)
    ood_val = FixedSplit(torch.full((5, 2), 1e4), torch.full((5,), -1))
    # AUROC: v = 0 ties everything (0.5), v = 1 and v = 2 separate perfectly (1.0): the earliest best
    # wins; a candidate the detector refuses is skipped
    det = Scripted(["refuse", 0, 1, 2])
    assert hyperparameter_search(det, networks["ssl"], id_val, ood_val) == [1]  # type: ignore[arg-type]
    assert det.v == 1
    # v = -1 inverts (AUROC 0): nothing beats 0
    with pytest.raises(RuntimeError, match="no hyper-parameter candidate"):
        hyperparameter_search(Scripted([-1]), networks["ssl"], id_val, ood_val)  # type: ignore[arg-type]
