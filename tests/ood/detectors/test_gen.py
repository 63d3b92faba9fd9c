"""gen against a per-sample generalised entropy written here from the formula (softmax in float64,
sorted descending, the top min(M, C) summed), M capped at C, the OpenOOD grid and its order, the shared
search (``score_candidates``) against one candidate at a time, the argument checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from src.ood import evaluator
from src.ood.detectors import build_detector
from src.ood.detectors.gen import GEN
from src.ood.evaluator import evaluate
from src.ood.features import FeatureStore
from tests.ood.fakes import InMemoryProtocol, features, tiny_network


def gen_per_sample(logits: Tensor, gamma: float, m: int) -> list[float]:
    out = []
    for row in logits.tolist():
        top = max(row)
        e = [math.exp(v - top) for v in row]
        p = sorted((v / sum(e) for v in e), reverse=True)[: min(m, len(row))]
        out.append(-sum(q**gamma * (1 - q) ** gamma for q in p))
    return out


@pytest.mark.parametrize("gamma", [0.01, 0.1, 0.5, 1, 2, 5, 10])
@pytest.mark.parametrize("m", [1, 3, 7, 10, 1000])
def test_gen_matches_per_sample_formula(gamma: float, m: int) -> None:
    logits = 3 * torch.randn(30, 7, generator=torch.Generator().manual_seed(8))
    det = GEN(gamma=gamma, M=m)
    pred, conf = det.postprocess(features(logits))
    assert pred.dtype == torch.int64 and conf.dtype == torch.float32 and conf.shape == (30,)
    expected = torch.tensor(gen_per_sample(logits.double(), gamma, m), dtype=torch.float64)
    torch.testing.assert_close(conf.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(det.score(features(logits.double()))[1], expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(pred, logits.argmax(1))


def test_gen_caps_m_at_the_number_of_classes() -> None:
    logits = torch.randn(12, 5, generator=torch.Generator().manual_seed(1))
    at_c = GEN(gamma=0.5, M=5).score(features(logits))[1]
    for m in (6, 100, 1000):
        assert torch.equal(GEN(gamma=0.5, M=m).score(features(logits))[1], at_c)
    assert not torch.equal(GEN(gamma=0.5, M=4).score(features(logits))[1], at_c)


def test_gen_confident_softmax_scores_higher() -> None:
    logits = torch.tensor([[10.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    conf = GEN(gamma=0.1, M=100).score(features(logits))[1]
    assert conf[0] > conf[1]
    assert torch.isfinite(GEN(gamma=0.1, M=3).score(features(torch.tensor([[1e4, 0.0, -1e4]])))[1]).all()


def test_gen_config_grid_and_order() -> None:
    det = build_detector("gen")
    assert isinstance(det, GEN) and (det.gamma, det.M) == (0.1, 100) and det.reads == {"logits"}
    gammas, ms = [0.01, 0.1, 0.5, 1, 2, 5, 10], [10, 50, 100, 200, 500, 1000]
    assert det.candidates() == [[g, m] for m in ms for g in gammas]  # gamma varies fastest
    det.set_hyperparam([2, 50])
    assert det.get_hyperparam() == [2.0, 50]
    fixed = build_detector("gen", hyperparam={"M": 10})
    assert fixed.fixed_hyperparam is None and fixed.candidates() == [[g, 10] for g in gammas]


def test_gen_argument_checks() -> None:
    for gamma, m, match in [(0, 10, "gamma"), (-1, 10, "gamma"), (0.1, 0, "M must"), (0.1, 2.5, "M must")]:
        with pytest.raises(ValueError, match=match):
            GEN(gamma=gamma, M=m)
        with pytest.raises(ValueError, match=match):
            GEN().set_hyperparam([gamma, m])


def test_gen_score_candidates_equal_one_candidate_at_a_time() -> None:
    det = build_detector("gen")
    batch = features(2 * torch.randn(25, 10, generator=torch.Generator().manual_seed(2)))
    cands = det.candidates()
    scored = det.score_candidates(batch, cands)
    assert len(scored) == len(cands)
    for values, (pred, conf) in zip(cands, scored):
        det.set_hyperparam(values)
        ref_pred, ref_conf = det.score(batch)
        assert torch.equal(pred, ref_pred) and torch.equal(conf, ref_conf), values


def test_gen_search_shared_equals_per_candidate(monkeypatch: pytest.MonkeyPatch) -> None:
    protocol = InMemoryProtocol(batch_size=5)
    net = tiny_network("ssl")
    results, aurocs = {}, {}
    real_auroc = evaluator.auroc_only
    for shared in (True, False):
        if not shared:
            monkeypatch.setattr(GEN, "score_candidates", lambda self, features, candidates: None)
        seen: list[float] = []

        def recording(c: np.ndarray, y: np.ndarray, seen: list[float] = seen) -> float:
            seen.append(real_auroc(c, y))
            return seen[-1]

        monkeypatch.setattr(evaluator, "auroc_only", recording)
        det = build_detector("gen")
        store = FeatureStore.for_detectors(net, protocol, [det], seed=0)
        results[shared] = evaluate(net, det, protocol, features=store)
        aurocs[shared] = seen
    assert aurocs[True] == aurocs[False] and len(aurocs[True]) == 42
    assert results[True].hyperparam == results[False].hyperparam
    # 4 classes: every M of the grid is capped at 4, so the search keeps the smallest M
    assert results[True].hyperparam[1] == 10
    for key, value in results[False].scores.items():
        assert np.array_equal(results[True].scores[key], value), key
