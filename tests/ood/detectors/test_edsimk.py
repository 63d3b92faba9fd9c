"""edsimk against the per-sample reference (float64 distances to every training feature, full sort,
0-based K), chunking invisible, exact zero for a duplicate, K range errors."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from src.ood.detectors import build_detector
from src.ood.detectors.edsimk import EDSimK, kth_nearest_distance
from src.ood.features import Features
from tests.ood.fakes import features
from tests.reference import detectors as ref


def as_features(x: Tensor) -> Features:
    return features(x[:, :3].clone(), feats=x)


@pytest.mark.parametrize("k", [0, 1, 7, 59])
def test_edsimk_matches_reference(k: int) -> None:
    g = torch.Generator().manual_seed(14)
    train, test = torch.randn(60, 5, generator=g), torch.randn(25, 5, generator=g)
    det = EDSimK(K=k, query_chunk=4, train_chunk=7)
    det.fit(as_features(train), torch.zeros(60, dtype=torch.long))
    pred, conf = det.postprocess(as_features(test))
    assert pred.dtype == torch.int64 and conf.dtype == torch.float64 and conf.shape == (25,)
    torch.testing.assert_close(conf, -ref.kth_nearest_distance(train, test, k), rtol=1e-12, atol=1e-12)
    assert torch.equal(pred, test[:, :3].argmax(1))


def test_edsimk_k_is_a_zero_based_index() -> None:
    train = torch.tensor([[0.0], [1.0], [3.0], [6.0]], dtype=torch.float64)
    det = EDSimK(K=0)
    det.fit(features(torch.zeros(4, 2, dtype=torch.float64), feats=train), torch.zeros(4, dtype=torch.long))
    test = features(torch.zeros(2, 2, dtype=torch.float64), feats=torch.tensor([[0.1], [6.0]], dtype=torch.float64))
    expected = {0: [0.1, 0.0], 1: [0.9, 3.0], 2: [2.9, 5.0], 3: [5.9, 6.0]}
    for k, dist in expected.items():
        det.set_hyperparam([k])
        torch.testing.assert_close(det.postprocess(test)[1], -torch.tensor(dist, dtype=torch.float64))
    with pytest.raises(ValueError, match="K = 4"):  # refused once the training set is known
        det.set_hyperparam([4])
    det.K = 4  # and at scoring time, whatever set it
    with pytest.raises(ValueError, match="K = 4"):
        det.postprocess(test)


def test_edsimk_duplicate_gives_exact_zero() -> None:
    train = 100 + torch.randn(30, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    det = EDSimK(K=0)
    det.fit(as_features(train), torch.zeros(30, dtype=torch.long))
    assert torch.equal(det.postprocess(as_features(train))[1], torch.zeros(30, dtype=torch.float64))


@pytest.mark.parametrize("k", [0, 3, 12, 39])
def test_kth_nearest_chunked_equals_unchunked(k: int) -> None:
    g = torch.Generator().manual_seed(4)
    keys, queries = torch.randn(40, 6, generator=g), torch.randn(23, 6, generator=g)
    whole = kth_nearest_distance(queries, keys, k, query_chunk=1000, key_chunk=1000)
    for qc, kc in [(1, 1), (3, 5), (7, 40), (23, 2)]:
        assert torch.equal(kth_nearest_distance(queries, keys, k, query_chunk=qc, key_chunk=kc), whole)
    assert whole.dtype == torch.float64
    torch.testing.assert_close(whole, ref.kth_nearest_distance(keys, queries, k), rtol=1e-12, atol=0)


def test_kth_nearest_errors() -> None:
    keys = torch.randn(5, 2)
    with pytest.raises(ValueError, match="K = 5"):
        kth_nearest_distance(keys, keys, 5)
    with pytest.raises(ValueError, match="K = -1"):
        kth_nearest_distance(keys, keys, -1)
    with pytest.raises(ValueError, match="chunk"):
        kth_nearest_distance(keys, keys, 0, query_chunk=0)


def test_edsimk_candidates_and_set_hyperparam() -> None:
    det = build_detector("edsimk")
    assert isinstance(det, EDSimK) and det.K == 50 and det.reads == {"logits", "feats"}
    assert det.candidates() == [[1], [10], [50], [200], [1000]]
    det.set_hyperparam([10])
    assert det.get_hyperparam() == [10] and det.K == 10
