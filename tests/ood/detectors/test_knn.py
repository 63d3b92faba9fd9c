"""knn against a per-sample deep-nearest-neighbour score written here from the formula (numpy float64:
each feature divided by its norm, distances to every normalised training feature, full sort, 1-based K),
chunking invisible, scale invariance, K capped at N, the one-scan search over the K grid against one
scan per K (candidate by candidate and through the study's search), the fit and argument checks."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import Tensor

from src.ood import evaluator
from src.ood.detectors import build_detector
from src.ood.detectors.base import NotFittedError
from src.ood.detectors.knn import KNN
from src.ood.evaluator import evaluate
from src.ood.features import Features, FeatureStore
from tests.ood.fakes import InMemoryProtocol, features, tiny_network


def knn_per_sample(train: Tensor, test: Tensor, k: int) -> np.ndarray:
    keys = [row / np.linalg.norm(row) for row in train.double().numpy()]
    out = []
    for x in test.double().numpy():
        z = x / np.linalg.norm(x)
        dists = sorted(float(np.sqrt(((z - key) ** 2).sum())) for key in keys)
        out.append(-dists[min(k, len(keys)) - 1])
    return np.array(out)


def as_features(x: Tensor) -> Features:
    return features(x[:, :3].clone(), feats=x)


def fitted(train: Tensor, **kwargs: object) -> KNN:
    det = KNN(**kwargs)  # type: ignore[arg-type]
    det.fit(as_features(train), torch.zeros(train.shape[0], dtype=torch.long))
    return det


@pytest.mark.parametrize("k", [1, 2, 7, 50, 60])
def test_knn_matches_per_sample_formula(k: int) -> None:
    g = torch.Generator().manual_seed(15)
    train, test = torch.randn(60, 5, generator=g), torch.randn(25, 5, generator=g)
    det = fitted(train, K=k, query_chunk=4, train_chunk=7)
    pred, conf = det.postprocess(as_features(test))
    assert pred.dtype == torch.int64 and conf.dtype == torch.float64 and conf.shape == (25,)
    np.testing.assert_allclose(conf.numpy(), knn_per_sample(train, test, k), rtol=1e-12, atol=1e-12)
    assert torch.equal(pred, test[:, :3].argmax(1))


def test_knn_k_is_one_based_on_the_unit_sphere() -> None:
    # training directions at 0°, 90°, 180° on the circle; a test point at 0° (any length)
    train = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-0.5, 0.0]], dtype=torch.float64)
    test = torch.tensor([[5.0, 0.0]], dtype=torch.float64)
    det = fitted(train, K=1)
    for k, dist in {1: 0.0, 2: 2**0.5, 3: 2.0}.items():
        det.set_hyperparam([k])
        torch.testing.assert_close(det.postprocess(as_features(test))[1], torch.tensor([-dist], dtype=torch.float64))


def test_knn_is_scale_invariant_and_chunking_is_invisible() -> None:
    g = torch.Generator().manual_seed(4)
    train, test = torch.randn(40, 6, generator=g), torch.randn(23, 6, generator=g)
    whole = fitted(train, K=5, query_chunk=1000, train_chunk=1000).score(as_features(test))[1]
    for qc, tc in [(1, 1), (3, 5), (7, 40), (23, 2)]:
        assert torch.equal(fitted(train, K=5, query_chunk=qc, train_chunk=tc).score(as_features(test))[1], whole)
    scales = 0.1 + 10 * torch.rand(23, 1, generator=g, dtype=torch.float64)
    scaled = fitted(3 * train.double(), K=5).score(as_features(test.double() * scales))[1]
    torch.testing.assert_close(scaled, whole, rtol=1e-12, atol=1e-12)


def test_knn_training_point_is_its_own_nearest_neighbour() -> None:
    train = 100 + torch.randn(30, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert torch.equal(fitted(train, K=1).score(as_features(train))[1], torch.zeros(30, dtype=torch.float64))


def test_knn_caps_k_at_the_training_size(caplog: pytest.LogCaptureFixture) -> None:
    g = torch.Generator().manual_seed(6)
    train, test = torch.randn(12, 4, generator=g), torch.randn(9, 4, generator=g)
    with caplog.at_level(logging.WARNING, logger="src.ood.detectors.knn"):
        det = fitted(train, K=50)
    assert "capped at 12" in caplog.text
    assert det.record_info() == {"K_used": 12, "train_features": 12}
    farthest = det.score(as_features(test))[1]
    np.testing.assert_allclose(farthest.numpy(), knn_per_sample(train, test, 12), rtol=1e-12, atol=1e-12)
    det.set_hyperparam([12])
    assert torch.equal(det.score(as_features(test))[1], farthest)
    assert det.get_hyperparam() == [12]
    det.set_hyperparam([5])
    assert det.record_info() == {"K_used": 5, "train_features": 12}


def test_knn_fit_and_argument_checks() -> None:
    det = KNN(K=3)
    with pytest.raises(NotFittedError):
        det.postprocess(as_features(torch.randn(4, 5)))
    with pytest.raises(ValueError, match="no features"):
        det.fit(as_features(torch.randn(0, 5)), torch.zeros(0, dtype=torch.long))
    for bad in (0, -2, 2.5):
        with pytest.raises(ValueError, match="positive integer"):
            det.set_hyperparam([bad])
        with pytest.raises(ValueError, match="positive integer"):
            KNN(K=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk"):
        KNN(train_chunk=0)


def test_knn_config_grid() -> None:
    det = build_detector("knn")
    assert isinstance(det, KNN) and det.K == 50 and det.needs_fit and det.mc is False
    assert det.reads == {"logits", "feats"} and det.fit_reads == {"feats"}
    assert det.candidates() == [[50], [100], [200], [500], [1000]]
    det.set_hyperparam([200])
    assert det.get_hyperparam() == [200]
    fixed = build_detector("knn", hyperparam={"K": 100})
    assert fixed.fixed_hyperparam == [100] and fixed.K == 100
    mc = build_detector("knn", hyperparam={"mc": True})
    assert isinstance(mc, KNN) and mc.mc is True and mc.fixed_hyperparam is None


def test_knn_sliced_candidates_equal_the_per_k_scan() -> None:
    g = torch.Generator().manual_seed(9)
    train, test = torch.randn(300, 6, generator=g), torch.randn(41, 6, generator=g)
    train[50:60] = train[0]  # ties among the neighbours
    det = fitted(train, query_chunk=8, train_chunk=64)
    ks = [[1], [10], [50], [200], [300], [1000]]
    scored = det.score_candidates(as_features(test), ks)
    for values, (pred, conf) in zip(ks, scored):
        det.set_hyperparam(values)
        ref_pred, ref_conf = det.score(as_features(test))
        assert torch.equal(pred, ref_pred) and torch.equal(conf, ref_conf), values
    assert torch.equal(scored[-1][1], scored[-2][1])  # K = 1000 capped at N = 300


def test_knn_search_sliced_equals_per_k(monkeypatch: pytest.MonkeyPatch) -> None:
    protocol = InMemoryProtocol(batch_size=5)
    net = tiny_network("ssl_bayes_h")
    sweep = {"K_list": [1, 3, 10, 30, 1000]}  # 1000 > the 64 training points: capped at 64
    results, aurocs = {}, {}
    real_auroc = evaluator.auroc_only
    for sliced in (True, False):
        if not sliced:
            monkeypatch.setattr(KNN, "score_candidates", lambda self, features, candidates: None)
        seen: list[float] = []

        def recording(c: np.ndarray, y: np.ndarray, seen: list[float] = seen) -> float:
            seen.append(real_auroc(c, y))
            return seen[-1]

        monkeypatch.setattr(evaluator, "auroc_only", recording)
        det = KNN(sweep=sweep, train_chunk=16)
        store = FeatureStore.for_detectors(net, protocol, [det], seed=0)
        results[sliced] = evaluate(net, det, protocol, features=store)
        aurocs[sliced] = seen
    assert aurocs[True] == aurocs[False] and len(aurocs[True]) == 5
    assert results[True].hyperparam == results[False].hyperparam
    for key, value in results[False].scores.items():
        assert np.array_equal(results[True].scores[key], value), key


def test_knn_mc_matches_per_sample_mean_over_samples() -> None:
    g = torch.Generator().manual_seed(11)
    train, samples = torch.randn(50, 6, generator=g), torch.randn(4, 13, 6, generator=g)
    logits = torch.randn(13, 3, generator=g)
    bayes_h = Features(logits=logits, feats=samples.mean(0), samples=samples, space="H")
    det = fitted(train, K=7, mc=True, query_chunk=5, train_chunk=9)
    pred, conf = det.postprocess(bayes_h)
    expected = np.mean([knn_per_sample(train, samples[s], 7) for s in range(4)], axis=0)
    np.testing.assert_allclose(conf.numpy(), expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(pred, logits.argmax(1))
    plain = fitted(train, K=7).score(bayes_h)[1]  # off by default: the score of h̄
    np.testing.assert_allclose(plain.numpy(), knn_per_sample(train, samples.mean(0), 7), rtol=1e-12, atol=1e-12)
    # every candidate of the one-scan search equals its own score, with the MC average too
    cands = [[1], [7], [50], [80]]
    for values, (_, c) in zip(cands, det.score_candidates(bayes_h, cands)):
        det.set_hyperparam(values)
        assert torch.equal(c, det.score(bayes_h)[1]), values


def test_knn_mc_reads_samples_only_for_bayes_h() -> None:
    g = torch.Generator().manual_seed(12)
    train, feats = torch.randn(20, 4, generator=g), torch.randn(6, 4, generator=g)
    for space in (None, "Z"):  # a deterministic backbone representation: the MC average is the score
        batch = Features(logits=feats[:, :3], feats=feats, space=space)
        assert torch.equal(fitted(train, K=3, mc=True).score(batch)[1], fitted(train, K=3).score(batch)[1])
    nets = {name: tiny_network(name) for name in ("ssl", "ssl_bayes_h", "ssl_bayes_z")}
    assert KNN(mc=True).reads_for(nets["ssl_bayes_h"]) == {"logits", "feats", "samples"}
    for name in ("ssl", "ssl_bayes_z"):
        assert KNN(mc=True).reads_for(nets[name]) == {"logits", "feats"}
    assert KNN().reads_for(nets["ssl_bayes_h"]) == {"logits", "feats"}
    det = KNN(K=2, mc=True)
    store = FeatureStore.for_detectors(nets["ssl_bayes_h"], InMemoryProtocol(), [det], seed=0)
    evaluator.fit_detector(det, nets["ssl_bayes_h"], store.split("default", "id/train"))
    batch = store.split("default", "id/test").batches[0]
    assert batch.samples is not None and batch.samples.shape[1] == len(batch)
    expected = np.mean([knn_per_sample(store.split("default", "id/train").all().feats, h, 2) for h in batch.samples], 0)
    np.testing.assert_allclose(det.score(batch)[1].numpy(), expected, rtol=1e-10, atol=1e-12)
