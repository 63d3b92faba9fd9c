"""kldivsimk against the per-sample reference (torch's Normal–Normal KL(train ‖ test) per test
point, NaN → 65504, full sort, 0-based K): the batched float64 expansion, chunking, K semantics,
NaN and overflow, and the detector on real Bayes networks' posteriors."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.distributions import Normal, kl_divergence

from src.ood.detectors import NotFittedError, build_detector
from src.ood.detectors.kldivsimk import NAN_VALUE, KLDivSimK, kth_smallest_kl
from tests.ood.fakes import InMemoryProtocol, features, store_for, tiny_network
from tests.reference import detectors as ref

F32_MAX = torch.finfo(torch.float32).max


def posteriors(n: int, d: int, seed: int) -> tuple[Tensor, Tensor]:
    """Realistic extremes: μ ∈ [−20, 20], ℓ ∈ [2 ln 0.01, 2 ln 5] (the model's clamps)."""
    g = torch.Generator().manual_seed(seed)
    mu = (torch.rand(n, d, generator=g) * 2 - 1) * 20 * (torch.rand(n, 1, generator=g) < 0.3) + torch.randn(
        n, d, generator=g
    )
    log_var = torch.empty(n, d).uniform_(-9.210340, 3.218876, generator=g)
    return mu.clamp(-20, 20), log_var


@pytest.mark.parametrize("k", [0, 1, 7, 36])
def test_kth_smallest_kl_matches_reference(k: int) -> None:
    tm, tlv = posteriors(37, 16, seed=0)
    m, lv = posteriors(11, 16, seed=1)
    fast = kth_smallest_kl(tm, tlv, m, lv, k)
    assert fast.dtype == torch.float32 and fast.shape == (11,)
    torch.testing.assert_close(fast, ref.kth_smallest_kl(tm, tlv, m, lv, k), rtol=1e-6, atol=1e-6)
    # the fork's own float32 arithmetic agrees up to its rounding
    torch.testing.assert_close(fast, ref.kth_smallest_kl(tm, tlv, m, lv, k, torch.float32), rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("chunks", [(1, 1), (3, 2), (5, 11), (36, 4), (37, 20)])
def test_kth_smallest_kl_chunking_is_invisible(chunks: tuple[int, int]) -> None:
    tm, tlv = posteriors(37, 16, seed=2)
    m, lv = posteriors(11, 16, seed=3)
    for k in (0, 4, 36):
        whole = kth_smallest_kl(tm, tlv, m, lv, k, train_chunk_size=10_000, test_chunk_size=10_000)
        chunked = kth_smallest_kl(tm, tlv, m, lv, k, train_chunk_size=chunks[0], test_chunk_size=chunks[1])
        torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=0)


def test_kth_smallest_kl_k_semantics() -> None:
    tm, tlv = posteriors(9, 4, seed=4)
    m, lv = posteriors(3, 4, seed=5)
    train_q = Normal(tm.double(), torch.exp(0.5 * tlv.double()))
    all_kl = torch.stack(
        [kl_divergence(train_q, Normal(a, torch.exp(0.5 * b))).sum(-1) for a, b in zip(m.double(), lv.double())]
    )
    ordered = all_kl.sort(dim=1).values.float()
    for k in range(9):  # K is a 0-based index: K = 0 the nearest, K = 8 the farthest
        torch.testing.assert_close(kth_smallest_kl(tm, tlv, m, lv, k, 2, 2), ordered[:, k], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 9\)"):
        kth_smallest_kl(tm, tlv, m, lv, 9)
    with pytest.raises(ValueError, match="must be an integer"):
        kth_smallest_kl(tm, tlv, m, lv, -1)


def mild(n: int, d: int, seed: int) -> tuple[Tensor, Tensor]:
    """Posteriors whose KL values stay far below 65504."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.rand(n, d, generator=g) - 0.5


def test_kth_smallest_kl_nan_and_overflow() -> None:
    tm, tlv = mild(5, 4, seed=6)
    m, lv = mild(3, 4, seed=7)
    tm[2, 1] = float("nan")  # this training Gaussian has KL = NaN → 65504 against every test point
    m[1, 0] = float("nan")  # this test point has KL = NaN → 65504 against every training Gaussian
    finite = kth_smallest_kl(tm[[0, 1, 3, 4]], tlv[[0, 1, 3, 4]], m, lv, 3)  # largest of the finite four
    assert (finite[[0, 2]] < NAN_VALUE).all()
    out = kth_smallest_kl(tm, tlv, m, lv, 4, train_chunk_size=2, test_chunk_size=2)
    assert out[0] == NAN_VALUE and out[2] == NAN_VALUE and out[1] == NAN_VALUE
    out = kth_smallest_kl(tm, tlv, m, lv, 3, train_chunk_size=2, test_chunk_size=2)
    torch.testing.assert_close(out[[0, 2]], finite[[0, 2]])
    assert out[1] == NAN_VALUE
    torch.testing.assert_close(out, ref.kth_smallest_kl(tm, tlv, m, lv, 3), rtol=1e-6, atol=1e-6)
    # a divergence beyond the float32 range is +∞ in the fork's float32 code, and nan_to_num maps
    # +∞ to the float32 maximum
    tm2 = torch.full_like(tm, 1e30)
    out = kth_smallest_kl(tm2, tlv, m, lv, 0)
    assert out[0] == F32_MAX and out[2] == F32_MAX
    torch.testing.assert_close(out, ref.kth_smallest_kl(tm2, tlv, m, lv, 0, torch.float32))


@pytest.mark.parametrize("model_name", ["ssl_bayes_h", "ssl_bayes_z"])
def test_kldivsimk_on_a_bayes_network(model_name: str) -> None:
    net = tiny_network(model_name, seed=5, prior="mog")
    det = build_detector("kldivsimk")
    assert isinstance(det, KLDivSimK) and det.K == 50 and det.candidates() == [[10], [50], [200], [1000]]
    store = store_for(net, [det], InMemoryProtocol({"id/train": 24, "id/test": 6}))
    train = store.split("barlowtwins", "id/train")
    det.fit(train.all(), train.labels)
    assert det.train_mu is not None and det.train_mu.shape[0] == 24
    batch = store.split("barlowtwins", "id/test").batches[0]
    with pytest.raises(ValueError, match="training posteriors"):
        det.postprocess(batch)  # K = 50 >= 24
    with pytest.raises(ValueError, match="training posteriors"):
        det.set_hyperparam([24])
    train_all = train.all()
    assert train_all.mu is not None and train_all.log_var is not None and batch.mu is not None
    for k in (0, 5, 23):
        det.set_hyperparam([k])
        pred, conf = det.postprocess(batch)
        assert pred.dtype == torch.int64 and conf.dtype == torch.float32 and conf.shape == (6,)
        assert pred.tolist() == batch.logits.argmax(1).tolist()
        expected = ref.kth_smallest_kl(train_all.mu, train_all.log_var, batch.mu, batch.log_var, k)
        torch.testing.assert_close(conf, expected, rtol=1e-6, atol=1e-5)
    chunked = KLDivSimK(K=5, train_chunk_size=5, test_chunk_size=4)
    chunked.fit(train_all, train.labels)
    det.set_hyperparam([5])
    torch.testing.assert_close(chunked.postprocess(batch)[1], det.postprocess(batch)[1])


def test_kldivsimk_errors() -> None:
    logits = torch.zeros(3, 2)
    with pytest.raises(NotFittedError):
        KLDivSimK(K=1).postprocess(features(logits, mu=torch.zeros(3, 4), log_var=torch.zeros(3, 4)))
    with pytest.raises(ValueError, match="stochastic model"):
        KLDivSimK(K=1).fit(features(logits), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="non-negative integer"):
        KLDivSimK(K=-1)
