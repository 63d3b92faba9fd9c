"""gram, sigmamean, logpprior and kldivsimk against plain per-sample references of spec ood.md §11.5, §11.7–§11.9.

The references loop over test samples in Python: GRAM is transcribed from the OpenOOD code as the spec
describes it (flat Python lists of floats per (class, layer, power), Python ``min``/``max``/``sum``, the
full C×C Gram matrix); kldivsimk builds KL(q_i ‖ q_x) with ``torch.distributions.kl_divergence`` per test
sample and sorts; logpprior evaluates the prior's formulas with ``src.utils.distribution``. Stochastic
networks are compared by seeding the global RNG identically before the fast and the reference call.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import Independent, Normal, kl_divergence

from src.model.prior import MoGPrior, StandardPrior
from src.ood.detectors import DETECTORS, build_detector
from src.ood.detectors.gram import Gram
from src.ood.detectors.kldivsimk import NAN_VALUE, KLDivSimK, kth_smallest_kl
from src.ood.detectors.logpprior import LogPPrior
from src.ood.detectors.sigmamean import SigmaMean
from src.ood.wrapper import OODNetwork
from src.utils.distribution import log_normal_diag, log_standard_normal
from tests.conftest import build_model, three_view_batch

NUM_CLASSES = 4
F32_MAX = torch.finfo(torch.float32).max


# ---------------------------------------------------------------------------------------------
# networks and data
# ---------------------------------------------------------------------------------------------
def _network(model_name: str, loss: str, seed: int, **overrides: Any) -> OODNetwork:
    torch.manual_seed(seed)
    model = build_model(model_name, loss, num_classes=NUM_CLASSES, **overrides)
    return OODNetwork(model, nn.Linear(512, NUM_CLASSES)).eval()


@pytest.fixture(scope="module")
def net_h() -> OODNetwork:
    return _network("ssl_bayes_h", "mc_barlow_twins", seed=0, prior="mog")


@pytest.fixture(scope="module")
def net_h_standard() -> OODNetwork:
    return _network("ssl_bayes_h", "mc_barlow_twins", seed=1, prior="standard")


@pytest.fixture(scope="module")
def net_z() -> OODNetwork:
    return _network("ssl_bayes_z", "mc_barlow_twins", seed=2, prior="mog")


@pytest.fixture(scope="module")
def net_ssl() -> OODNetwork:
    return _network("ssl", "barlow_twins", seed=3)


@pytest.fixture(scope="module", params=["h", "h_standard", "z"])
def bayes_net(request: pytest.FixtureRequest) -> OODNetwork:
    return request.getfixturevalue({"h": "net_h", "h_standard": "net_h_standard", "z": "net_z"}[request.param])


def _train_batches(n_batches: int = 3, batch_size: int = 8) -> list[tuple[list[Tensor], Tensor]]:
    """Three-view batches with every class present (labels cycle through 0..3)."""
    out = []
    for i in range(n_batches):
        views, _ = three_view_batch(batch_size=batch_size, size=8, num_classes=NUM_CLASSES, seed=100 + i)
        out.append((list(views), torch.arange(batch_size) % NUM_CLASSES))
    return out


def _test_views(seed: int = 7, batch_size: int = 6) -> list[Tensor]:
    views, _ = three_view_batch(batch_size=batch_size, size=8, num_classes=NUM_CLASSES, seed=seed)
    return list(views)


class Spy:
    """Forwards everything to a network and records the inputs of each call."""

    def __init__(self, net: OODNetwork) -> None:
        self._net = net
        self.inputs: list[Tensor] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._net, name)

    def __call__(self, x: Tensor, **flags: bool) -> Any:
        self.inputs.append(x)
        return self._net(x, **flags)


# ---------------------------------------------------------------------------------------------
# gram
# ---------------------------------------------------------------------------------------------
def _reference_gram_stats(feature_map: Tensor, p: float) -> list[list[float]]:
    """OpenOOD: temp**p, reshape, full Gram matrix matmul, row sums, sign·|·|^(1/p), to Python lists."""
    temp = feature_map.detach() ** p
    temp = temp.reshape(temp.shape[0], temp.shape[1], -1)
    temp = torch.matmul(temp, temp.transpose(dim0=2, dim1=1)).sum(dim=2)
    temp = (temp.sign() * torch.abs(temp) ** (1 / p)).reshape(temp.shape[0], -1)
    return temp.tolist()


def reference_gram_setup(net: Any, batches: list, num_classes: int, powers: list) -> tuple[list, list]:
    """Flat per-(class, layer, power) lists of floats; scalar min and max over images and channels."""
    feature_class: list = []
    for data, labels in batches:
        x = data[2] if isinstance(data, list) else data
        _, feature_list = net(x, return_feature_list=True)
        if not feature_class:
            feature_class = [[[None for _ in powers] for _ in feature_list] for _ in range(num_classes)]
        for layer_idx, fmap in enumerate(feature_list):
            for pole_idx, p in enumerate(powers):
                for feature, label in zip(_reference_gram_stats(fmap, p), labels.tolist()):
                    if feature_class[label][layer_idx][pole_idx] is None:
                        feature_class[label][layer_idx][pole_idx] = list(feature)
                    else:
                        feature_class[label][layer_idx][pole_idx].extend(feature)
    mins = [[[min(f) for f in layer] for layer in cls] for cls in feature_class]
    maxs = [[[max(f) for f in layer] for layer in cls] for cls in feature_class]
    return mins, maxs


def reference_gram_score(net: Any, x: Tensor, mins: list, maxs: list, powers: list) -> tuple[list, list]:
    """Per sample: Python ``sum`` of r̃, deviations under the PREDICTED class, ε inside |·|, / 50."""
    logits, feature_list = net(x, return_feature_list=True)
    preds = torch.softmax(logits, dim=1).argmax(dim=1).tolist()
    dev = [0.0] * x.shape[0]
    for layer_idx, fmap in enumerate(feature_list):
        for pole_idx, p in enumerate(powers):
            stats = _reference_gram_stats(fmap, p)
            for idx in range(len(stats)):
                s = sum(stats[idx])
                lo, hi = mins[preds[idx]][layer_idx][pole_idx], maxs[preds[idx]][layer_idx][pole_idx]
                dev[idx] += max(lo - s, 0.0) / abs(lo + 10**-6)
                dev[idx] += max(s - hi, 0.0) / abs(hi + 10**-6)
    return preds, [d / 50 for d in dev]


class FakeGramNet:
    """A deterministic stand-in: the 'maps' are the input itself and two reductions of it, so the
    scale of a test image decides whether its deviation comes from the min or the max branch."""

    device = torch.device("cpu")
    num_classes = 3
    stochastic_space = None

    def __call__(self, x: Tensor, return_feature_list: bool = False, **ignored: Any) -> Any:
        logits = x.mean(dim=(2, 3))[:, : self.num_classes]
        if not return_feature_list:
            return logits
        return [logits, self.feature_list(x)]

    def feature_list(self, x: Tensor) -> list[Tensor]:
        return [x, x[:, :, ::2, ::2], x.mean(dim=(2, 3), keepdim=True)]


def test_gram_matches_reference_on_fake_net_both_branches() -> None:
    g = torch.Generator().manual_seed(0)
    train = [(1 + torch.rand(6, 3, 4, 4, generator=g), torch.arange(6) % 3) for _ in range(3)]
    base = 1 + torch.rand(4, 3, 4, 4, generator=g)
    test = torch.cat([base, 0.01 * base, 100 * base, 0.2 * base])
    net = FakeGramNet()
    powers = [1, 2, 3, 4, 5]
    det = Gram(powers=powers)
    det.setup(net, train)  # type: ignore[arg-type]
    mins, maxs = reference_gram_setup(net, train, 3, powers)
    torch.testing.assert_close(det.mins, torch.tensor(mins, dtype=torch.float64), rtol=1e-6, atol=0)
    torch.testing.assert_close(det.maxs, torch.tensor(maxs, dtype=torch.float64), rtol=1e-6, atol=0)
    pred, conf = det.postprocess(net, test)  # type: ignore[arg-type]
    ref_pred, ref_conf = reference_gram_score(net, test, mins, maxs, powers)
    assert pred.tolist() == ref_pred
    assert conf.dtype == torch.float64 and pred.dtype == torch.int64 and conf.shape == (16,)
    torch.testing.assert_close(conf, torch.tensor(ref_conf, dtype=torch.float64), rtol=1e-5, atol=1e-12)
    # both branches are exercised: with an infinite max only the min branch can contribute, and
    # it does for the shrunken images; the enlarged ones deviate more than the unscaled ones
    no_max = [[[math.inf] * len(powers) for _ in range(3)] for _ in range(3)]
    assert min(reference_gram_score(net, 0.01 * base, mins, no_max, powers)[1]) > 0
    assert conf[8:12].gt(conf[:4]).all()


@pytest.mark.parametrize("which", ["ssl", "h"])
def test_gram_matches_reference_on_resnet(which: str, net_ssl: OODNetwork, net_h: OODNetwork) -> None:
    net = {"ssl": net_ssl, "h": net_h}[which]
    batches = _train_batches()
    powers = [1, 2, 3, 4, 5]
    det = build_detector("gram")
    assert isinstance(det, Gram) and det.powers == powers
    det.setup(net, batches)
    mins, maxs = reference_gram_setup(net, batches, NUM_CLASSES, powers)
    assert det.mins is not None and det.mins.shape == (NUM_CLASSES, 5, 5)
    torch.testing.assert_close(det.mins, torch.tensor(mins, dtype=torch.float64), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(det.maxs, torch.tensor(maxs, dtype=torch.float64), rtol=1e-5, atol=1e-6)
    x = _test_views()[2]
    torch.manual_seed(11)
    pred, conf = det.postprocess(net, x)
    torch.manual_seed(11)
    ref_pred, ref_conf = reference_gram_score(net, x, mins, maxs, powers)
    assert pred.tolist() == ref_pred
    assert conf.dtype == torch.float64
    torch.testing.assert_close(conf, torch.tensor(ref_conf, dtype=torch.float64), rtol=1e-5, atol=1e-9)


def test_gram_three_view_data_uses_the_plain_view(net_ssl: OODNetwork) -> None:
    det = build_detector("gram")
    det.setup(net_ssl, _train_batches(2))
    views = _test_views()
    torch.testing.assert_close(det.postprocess(net_ssl, views), det.postprocess(net_ssl, views[2]))


def test_gram_hyperparam_selects_fitted_powers() -> None:
    g = torch.Generator().manual_seed(1)
    train = [(1 + torch.rand(6, 3, 4, 4, generator=g), torch.arange(6) % 3)]
    test = torch.cat([1 + torch.rand(3, 3, 4, 4, generator=g), 0.01 + torch.zeros(2, 3, 4, 4)])
    net = FakeGramNet()
    det = Gram(powers=[1, 2, 3], sweep={"powers_list": [[1, 2, 3]]})
    assert det.candidates() == [[[1, 2, 3]]]
    det.setup(net, train)  # type: ignore[arg-type]
    det.set_hyperparam([[2, 1]])
    assert det.get_hyperparam() == [[2, 1]]
    mins, maxs = reference_gram_setup(net, train, 3, [2, 1])
    _, conf = det.postprocess(net, test)  # type: ignore[arg-type]
    _, ref = reference_gram_score(net, test, mins, maxs, [2, 1])
    torch.testing.assert_close(conf, torch.tensor(ref, dtype=torch.float64), rtol=1e-5, atol=1e-12)
    with pytest.raises(ValueError, match="not fitted"):
        det.set_hyperparam([[4]])
    with pytest.raises(ValueError, match="positive"):
        Gram(powers=[0, 1])


def test_gram_epsilon_inside_the_absolute_value() -> None:
    """Q10 (e): the normaliser is |max + 1e-6|, not |max| + 1e-6 (visible when max ≈ −1e-6)."""
    g = torch.Generator().manual_seed(2)
    train = [(1 + torch.rand(6, 3, 4, 4, generator=g), torch.arange(6) % 3)]
    test = 1 + torch.rand(4, 3, 4, 4, generator=g)
    net = FakeGramNet()
    det = Gram(powers=[1, 2])
    det.setup(net, train)  # type: ignore[arg-type]
    assert det.mins is not None and det.maxs is not None
    det.mins = torch.full_like(det.mins, -1.0)
    det.maxs = torch.full_like(det.maxs, -5e-7)
    _, conf = det.postprocess(net, test)  # type: ignore[arg-type]
    _, ref = reference_gram_score(net, test, det.mins.tolist(), det.maxs.tolist(), [1, 2])
    torch.testing.assert_close(conf, torch.tensor(ref, dtype=torch.float64), rtol=1e-6, atol=0)


def test_gram_errors() -> None:
    net = FakeGramNet()
    det = Gram()
    with pytest.raises(RuntimeError, match="setup"):
        det.postprocess(net, torch.rand(2, 3, 4, 4))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"no training images of classes \[2\]"):
        det.setup(net, [(torch.rand(4, 3, 4, 4), torch.tensor([0, 1, 0, 1]))])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="labels"):
        det.setup(net, [(torch.rand(4, 3, 4, 4), torch.tensor([0, 1, 2, 3]))])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no training batches"):
        det.setup(net, [])  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# sigmamean
# ---------------------------------------------------------------------------------------------
def test_sigmamean_matches_reference(bayes_net: OODNetwork) -> None:
    views = _test_views()
    det = build_detector("sigmamean")
    assert isinstance(det, SigmaMean)
    torch.manual_seed(5)
    pred, conf = det.postprocess(bayes_net, views)
    torch.manual_seed(5)
    logits, (_, log_var) = bayes_net(views[2], return_dist=True)
    ref = [sum(math.exp(v / 2) for v in row) / len(row) for row in log_var.tolist()]
    assert pred.dtype == torch.int64 and conf.dtype == torch.float32 and conf.shape == (6,)
    assert pred.tolist() == logits.argmax(1).tolist()
    torch.testing.assert_close(conf, torch.tensor(ref, dtype=torch.float32), rtol=1e-5, atol=0)
    # only v3 matters (σ is deterministic): garbage in v1, v2 changes nothing
    garbage = [torch.full_like(views[0], float("nan")), torch.full_like(views[1], float("nan")), views[2]]
    torch.testing.assert_close(det.postprocess(bayes_net, garbage)[1], conf)


def test_sigmamean_needs_a_stochastic_model(net_ssl: OODNetwork) -> None:
    with pytest.raises(ValueError, match="stochastic model"):
        SigmaMean().postprocess(net_ssl, _test_views())


# ---------------------------------------------------------------------------------------------
# logpprior
# ---------------------------------------------------------------------------------------------
def _reference_log_p(prior: nn.Module, r: Tensor) -> list[float]:
    """Per sample: Σ_d of the prior's element-wise log density (per-dimension 1-D mixture for MoG)."""
    out = []
    for row in r.detach().double():
        if isinstance(prior, StandardPrior):
            out.append(float(log_standard_normal(row, reduction="sum", dim=0)))
        else:
            assert isinstance(prior, MoGPrior)
            means, log_vars = prior.means.detach().double(), prior.log_vars.detach().double()
            log_n = log_normal_diag(row[None, :], means, log_vars)  # [K, D]
            log_pi = torch.log_softmax(prior.w.detach().double().reshape(-1), 0)[:, None]
            out.append(float(torch.logsumexp(log_n + log_pi, dim=0).sum()))
    return out


def _reference_representation(net: OODNetwork, x: Tensor) -> tuple[Tensor, Tensor]:
    """Spec §11.8: Bayes-H → feats (h̄), Bayes-Z → embeddings (z̄)."""
    if net.stochastic_space == "H":
        logits, feats = net(x, return_feature=True)
        return logits, feats
    logits, _, emb = net(x, return_feature=True, return_embeddings=True)
    return logits, emb


@pytest.mark.parametrize("use_augumented", [True, False])
def test_logpprior_matches_reference(bayes_net: OODNetwork, use_augumented: bool) -> None:
    views = _test_views()
    det = LogPPrior(use_augumented=use_augumented)
    spy = Spy(bayes_net)
    torch.manual_seed(9)
    pred, conf = det.postprocess(spy, views)  # type: ignore[arg-type]
    # v3 first (logits and r(v3)), then v1 and v2: three calls, fresh MC noise each
    expected = [views[2], views[0], views[1]] if use_augumented else [views[2]]
    assert len(spy.inputs) == len(expected) and all(a is b for a, b in zip(spy.inputs, expected))
    torch.manual_seed(9)
    logits, r3 = _reference_representation(bayes_net, views[2])
    if use_augumented:
        _, r1 = _reference_representation(bayes_net, views[0])
        _, r2 = _reference_representation(bayes_net, views[1])
        p1, p2 = _reference_log_p(bayes_net.prior, r1), _reference_log_p(bayes_net.prior, r2)
        ref = [a + b for a, b in zip(p1, p2)]
    else:
        ref = _reference_log_p(bayes_net.prior, r3)
    assert pred.dtype == torch.int64 and conf.dtype == torch.float32 and conf.shape == (6,)
    assert pred.tolist() == logits.argmax(1).tolist()
    torch.testing.assert_close(conf.double(), torch.tensor(ref, dtype=torch.float64), rtol=1e-5, atol=1e-3)
    if isinstance(bayes_net.prior, StandardPrior) and use_augumented:
        # closed form of §11.8: −D·ln(2π) − ½(‖r(v1)‖² + ‖r(v2)‖²)
        d = r1.shape[1]
        closed = -d * math.log(2 * math.pi) - 0.5 * (r1.double().pow(2).sum(1) + r2.double().pow(2).sum(1))
        torch.testing.assert_close(conf.double(), closed, rtol=1e-5, atol=1e-3)


def test_logpprior_errors(net_ssl: OODNetwork, net_h: OODNetwork) -> None:
    with pytest.raises(ValueError, match="stochastic model"):
        LogPPrior().postprocess(net_ssl, _test_views())
    with pytest.raises(ValueError, match="three views"):
        LogPPrior(use_augumented=True).postprocess(net_h, _test_views()[2])
    # the plain-view variant accepts a single tensor
    pred, conf = LogPPrior(use_augumented=False).postprocess(net_h, _test_views()[2])
    assert pred.shape == conf.shape == (6,)


# ---------------------------------------------------------------------------------------------
# kldivsimk
# ---------------------------------------------------------------------------------------------
def reference_kth_kl(
    train_mu: Tensor, train_log_var: Tensor, mu: Tensor, log_var: Tensor, k: int, dtype: torch.dtype = torch.float64
) -> Tensor:
    """Per test sample: KL(q_i ‖ q_x) against every training Gaussian, NaN → 65504, full sort, index K."""
    train_q = Independent(Normal(train_mu.to(dtype), torch.exp(0.5 * train_log_var.to(dtype)), validate_args=False), 1)
    out = []
    for m, lv in zip(mu.to(dtype), log_var.to(dtype)):
        q = Independent(Normal(m, torch.exp(0.5 * lv), validate_args=False), 1)
        kl = kl_divergence(train_q, q)
        if dtype == torch.float64:  # what float32 overflow would have given (±∞ → float32 extremes)
            kl = kl.clamp(-F32_MAX, F32_MAX)
        kl = torch.nan_to_num(kl.float(), nan=torch.finfo(torch.float16).max)
        out.append(torch.sort(kl)[0][k])
    return torch.stack(out)


def _posteriors(n: int, d: int, seed: int) -> tuple[Tensor, Tensor]:
    """Realistic extremes: μ ∈ [−20, 20], ℓ ∈ [2 ln 0.01, 2 ln 5] (the model's clamps)."""
    g = torch.Generator().manual_seed(seed)
    mu = (torch.rand(n, d, generator=g) * 2 - 1) * 20 * (torch.rand(n, 1, generator=g) < 0.3) + torch.randn(
        n, d, generator=g
    )
    log_var = torch.empty(n, d).uniform_(-9.210340, 3.218876, generator=g)
    return mu.clamp(-20, 20), log_var


@pytest.mark.parametrize("k", [0, 1, 7, 36])
def test_kth_smallest_kl_matches_direct_formula(k: int) -> None:
    tm, tlv = _posteriors(37, 16, seed=0)
    m, lv = _posteriors(11, 16, seed=1)
    fast = kth_smallest_kl(tm, tlv, m, lv, k)
    assert fast.dtype == torch.float32 and fast.shape == (11,)
    torch.testing.assert_close(fast, reference_kth_kl(tm, tlv, m, lv, k), rtol=1e-6, atol=1e-6)
    # the fork's own float32 arithmetic agrees up to its rounding
    torch.testing.assert_close(fast, reference_kth_kl(tm, tlv, m, lv, k, torch.float32), rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("chunks", [(1, 1), (3, 2), (5, 11), (36, 4), (37, 20)])
def test_kth_smallest_kl_chunking_is_invisible(chunks: tuple[int, int]) -> None:
    tm, tlv = _posteriors(37, 16, seed=2)
    m, lv = _posteriors(11, 16, seed=3)
    for k in (0, 4, 36):
        whole = kth_smallest_kl(tm, tlv, m, lv, k, train_chunk_size=10_000, test_chunk_size=10_000)
        chunked = kth_smallest_kl(tm, tlv, m, lv, k, train_chunk_size=chunks[0], test_chunk_size=chunks[1])
        torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=0)


def test_kth_smallest_kl_k_semantics() -> None:
    tm, tlv = _posteriors(9, 4, seed=4)
    m, lv = _posteriors(3, 4, seed=5)
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


def _mild(n: int, d: int, seed: int) -> tuple[Tensor, Tensor]:
    """Posteriors whose KL values stay far below 65504."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.rand(n, d, generator=g) - 0.5


def test_kth_smallest_kl_nan_and_overflow() -> None:
    tm, tlv = _mild(5, 4, seed=6)
    m, lv = _mild(3, 4, seed=7)
    tm[2, 1] = float("nan")  # this training Gaussian has KL = NaN → 65504 against every test point
    m[1, 0] = float("nan")  # this test point has KL = NaN → 65504 against every training Gaussian
    finite = kth_smallest_kl(tm[[0, 1, 3, 4]], tlv[[0, 1, 3, 4]], m, lv, 3)  # largest of the finite four
    assert (finite[[0, 2]] < NAN_VALUE).all()
    out = kth_smallest_kl(tm, tlv, m, lv, 4, train_chunk_size=2, test_chunk_size=2)
    assert out[0] == NAN_VALUE and out[2] == NAN_VALUE and out[1] == NAN_VALUE
    out = kth_smallest_kl(tm, tlv, m, lv, 3, train_chunk_size=2, test_chunk_size=2)
    torch.testing.assert_close(out[[0, 2]], finite[[0, 2]])
    assert out[1] == NAN_VALUE
    torch.testing.assert_close(out, reference_kth_kl(tm, tlv, m, lv, 3), rtol=1e-6, atol=1e-6)
    # a divergence beyond the float32 range is +∞ in the fork's float32 code, and nan_to_num maps
    # +∞ to the float32 maximum
    tm2 = torch.full_like(tm, 1e30)
    out = kth_smallest_kl(tm2, tlv, m, lv, 0)
    assert out[0] == F32_MAX and out[2] == F32_MAX
    torch.testing.assert_close(out, reference_kth_kl(tm2, tlv, m, lv, 0, torch.float32))


def test_kldivsimk_detector_matches_reference(bayes_net: OODNetwork) -> None:
    batches = _train_batches()
    det = build_detector("kldivsimk")
    assert isinstance(det, KLDivSimK) and det.K == 50
    assert det.candidates() == [[10], [50], [200], [1000]]
    det.setup(bayes_net, batches)
    assert det.train_mu is not None and det.train_mu.shape[0] == 24
    with pytest.raises(ValueError, match="training posteriors"):
        det.postprocess(bayes_net, _test_views())  # K = 50 >= 24
    with pytest.raises(ValueError, match="training posteriors"):
        det.set_hyperparam([24])
    # the training posteriors are the deterministic (μ, ℓ) of the plain views
    mus, lvs = zip(*[bayes_net(data[2], return_dist=True)[1] for data, _ in batches])
    train_mu, train_lv = torch.cat(mus), torch.cat(lvs)
    torch.testing.assert_close(det.train_mu, train_mu)
    views = _test_views()
    for k in (0, 5, 23):
        det.set_hyperparam([k])
        assert det.get_hyperparam() == [k]
        torch.manual_seed(3)
        pred, conf = det.postprocess(bayes_net, views)
        torch.manual_seed(3)
        logits, (m, lv) = bayes_net(views[2], return_dist=True)
        assert pred.dtype == torch.int64 and conf.dtype == torch.float32 and conf.shape == (6,)
        assert pred.tolist() == logits.argmax(1).tolist()
        torch.testing.assert_close(conf, reference_kth_kl(train_mu, train_lv, m, lv, k), rtol=1e-6, atol=1e-5)
    chunked = KLDivSimK(K=5, train_chunk_size=5, test_chunk_size=4)
    chunked.setup(bayes_net, batches)
    det.set_hyperparam([5])
    torch.testing.assert_close(chunked.postprocess(bayes_net, views)[1], det.postprocess(bayes_net, views)[1])


def test_kldivsimk_errors(net_ssl: OODNetwork) -> None:
    with pytest.raises(RuntimeError, match="setup"):
        KLDivSimK(K=1).postprocess(net_ssl, _test_views())
    with pytest.raises(ValueError, match="stochastic model"):
        KLDivSimK(K=1).setup(net_ssl, _train_batches(1))
    with pytest.raises(ValueError, match="non-negative integer"):
        KLDivSimK(K=-1)
    with pytest.raises(ValueError, match="no training batches"):
        KLDivSimK(K=1).setup(net_ssl, [])


# ---------------------------------------------------------------------------------------------
# registry, configs and the sign switch
# ---------------------------------------------------------------------------------------------
def test_registry_and_configs() -> None:
    for name, cls in [("gram", Gram), ("sigmamean", SigmaMean), ("logpprior", LogPPrior), ("kldivsimk", KLDivSimK)]:
        assert DETECTORS[name] is cls and cls.name == name
        assert type(build_detector(name)) is cls
    assert (Gram.preprocessor, Gram.probabilistic, Gram.reference_sign_inverted) == ("default", False, True)
    for cls in (SigmaMean, LogPPrior, KLDivSimK):
        assert cls.preprocessor == "barlowtwins" and cls.probabilistic
    assert SigmaMean.reference_sign_inverted and KLDivSimK.reference_sign_inverted
    assert not LogPPrior.reference_sign_inverted
    logp = build_detector("logpprior")
    assert isinstance(logp, LogPPrior) and logp.use_augumented and logp.candidates() == []
    assert build_detector("sigmamean").candidates() == []
    gram = build_detector("gram")
    assert gram.candidates() == [[[1, 2, 3, 4, 5]]] and gram.get_hyperparam() == [[1, 2, 3, 4, 5]]


@pytest.mark.parametrize("name", ["gram", "sigmamean", "logpprior", "kldivsimk"])
def test_corrected_sign_negates_only_the_inverted_detectors(name: str, net_h: OODNetwork) -> None:
    batches = _train_batches(2)
    views = _test_views()
    confs = []
    for corrected in (False, True):
        det = build_detector(name, corrected_sign=corrected)
        torch.manual_seed(21)
        det.setup(net_h, batches)
        if name == "kldivsimk":
            det.set_hyperparam([3])
        torch.manual_seed(22)
        pred, conf = det.postprocess(net_h, views)
        assert pred.dtype == torch.int64 and pred.shape == (6,)
        confs.append(conf)
    expected = -confs[0] if name in ("gram", "sigmamean", "kldivsimk") else confs[0]
    torch.testing.assert_close(confs[1], expected)
