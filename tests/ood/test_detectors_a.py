"""Tests of the msp, odin, mds, umds and edsimk detectors (spec: ood.md §10, §11.1–11.4, §11.6).

Every fast (batched) detector is compared with a plain per-sample reference written here from
the spec's formulas — the reference's own tools where it used them (sklearn
``EmpiricalCovariance`` + scipy ``pinvh`` for mds, scipy ``cdist`` + a full sort for edsimk) —
plus known-answer tests on synthetic data, chunking, the APS grid order, the registry build,
output dtypes/shapes, and a real tiny ``OODNetwork`` (ResNet-18 on 8×8 inputs).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import scipy.linalg
import scipy.spatial.distance
import sklearn.covariance
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from src.ood.detectors import DETECTORS, build_detector, detector_config
from src.ood.detectors import umds as umds_module
from src.ood.detectors.edsimk import EDSimK, kth_nearest_distance
from src.ood.detectors.mds import MDS, fit_mahalanobis
from src.ood.detectors.msp import MSP
from src.ood.detectors.odin import ODIN
from src.ood.detectors.umds import UMDS, assign_clusters, kmeans, split_empty_clusters
from tests.conftest import build_model

CIFAR_STD = (0.2470, 0.2435, 0.2616)
MINE = ("msp", "odin", "mds", "umds", "edsimk")


class FakeNet:
    """The ``OODNetwork`` call contract over a tiny model: tanh(flatten(x) @ W) → Linear predictor.

    ``identity=True`` makes the features the flattened input itself (for known-answer tests);
    ``noise > 0`` adds fresh Gaussian noise to the features on every call (a stochastic, Bayes-H-like net).
    Every input is recorded in ``calls``.
    """

    def __init__(
        self,
        in_shape: tuple[int, ...] = (3, 4, 4),
        feat_dim: int = 6,
        num_classes: int = 3,
        *,
        identity: bool = False,
        noise: float = 0.0,
        input_std: tuple[float, ...] | None = CIFAR_STD,
        dtype: torch.dtype = torch.float64,
        seed: int = 0,
        dead_channel: int | None = None,
    ) -> None:
        g = torch.Generator().manual_seed(seed)
        d_in = math.prod(in_shape)
        self.weight: Tensor | None = None
        if identity:
            feat_dim = d_in
        else:
            self.weight = torch.randn(d_in, feat_dim, generator=g, dtype=dtype) / math.sqrt(d_in)
            if dead_channel is not None:
                # the features ignore this input channel, so its input gradient is exactly 0
                self.weight.view(in_shape[0], -1, feat_dim)[dead_channel] = 0
        self.predictor = nn.Linear(feat_dim, num_classes).to(dtype)
        with torch.no_grad():
            self.predictor.weight.copy_(torch.randn(num_classes, feat_dim, generator=g, dtype=dtype))
            self.predictor.bias.copy_(torch.randn(num_classes, generator=g, dtype=dtype))
        self.noise = noise
        self.input_std = input_std
        self.dtype = dtype
        self.calls: list[Tensor] = []

    device = torch.device("cpu")

    @property
    def num_classes(self) -> int:
        return self.predictor.out_features

    @property
    def stochastic_space(self) -> str | None:
        return "H" if self.noise else None

    def __call__(
        self,
        x: Tensor,
        return_feature: bool = False,
        return_feature_list: bool = False,
        return_embeddings: bool = False,
        return_dist: bool = False,
        **ignored: Any,
    ) -> Tensor | list[Any]:
        self.calls.append(x.detach().clone())
        h = x.flatten(1).to(self.dtype)
        if self.weight is not None:
            h = torch.tanh(h @ self.weight)
        if self.noise:
            h = h + self.noise * torch.randn_like(h)
        logits = self.predictor(h)
        if not (return_feature or return_feature_list or return_embeddings or return_dist):
            return logits
        out: list[Any] = [logits]
        if return_feature:
            out.append(h)
        if return_feature_list:
            out.append([h])
        if return_embeddings:
            out.append(h)
        if return_dist:
            out.append(None)
        return out


def images(n: int, seed: int, shape: tuple[int, ...] = (3, 4, 4), dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def batches(x: Tensor, y: Tensor, size: int) -> list[tuple[Tensor, Tensor]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, x.shape[0], size)]


def features_of(net: FakeNet, x: Tensor) -> np.ndarray:
    """Per-sample features (reference side)."""
    return np.stack([net(x[i : i + 1], return_feature=True)[1][0].detach().numpy() for i in range(x.shape[0])])


# -- plain per-sample references (spec formulas) -----------------------------------------------------------------
def ref_msp(net: FakeNet, x: Tensor) -> tuple[np.ndarray, np.ndarray]:
    preds, confs = [], []
    for i in range(x.shape[0]):
        f = net(x[i : i + 1])[0].detach().numpy()
        p = np.exp(f - f.max()) / np.exp(f - f.max()).sum()
        preds.append(int(np.argmax(f)))
        confs.append(float(p.max()))
    return np.array(preds), np.array(confs)


def ref_odin(net: FakeNet, x: Tensor, temperature: float, noise: float) -> tuple[np.ndarray, np.ndarray, list[Tensor]]:
    """§11.2 one sample at a time, with its own backward; also returns each perturbed input."""
    preds, confs, perturbed = [], [], []
    for i in range(x.shape[0]):
        xi = x[i : i + 1].clone().requires_grad_(True)
        f = net(xi)
        y_hat = f.detach().argmax(1)
        F.cross_entropy(f / temperature, y_hat).backward()
        s = torch.where(xi.grad >= 0, 1.0, -1.0).to(x.dtype)
        for c in range(x.shape[1]):
            s[:, c] = s[:, c] / CIFAR_STD[c]
        xt = xi.detach() - noise * s
        perturbed.append(xt[0])
        ft = (net(xt) / temperature)[0].detach().numpy()
        p = np.exp(ft - ft.max()) / np.exp(ft - ft.max()).sum()
        preds.append(int(np.argmax(ft)))
        confs.append(float(p.max()))
    return np.array(preds), np.array(confs), perturbed


def ref_mahalanobis(train: np.ndarray, labels: np.ndarray, test: np.ndarray, groups: int) -> np.ndarray:
    """§11.3 as the reference did it: float32 class means, sklearn covariance, pinvh, per-sample loop."""
    train = train.astype(np.float32)
    means = [train[labels == c].mean(0) for c in range(groups)]
    centred = np.concatenate([train[labels == c] - means[c] for c in range(groups)])
    cov = sklearn.covariance.EmpiricalCovariance(assume_centered=False).fit(centred.astype(np.float32))
    precision = scipy.linalg.pinvh(cov.covariance_).astype(np.float32)
    conf = []
    for x in test.astype(np.float32):
        conf.append(max(float(-(x - m) @ precision @ (x - m)) for m in means))
    return np.array(conf)


def ref_edsimk(train: np.ndarray, test: np.ndarray, k: int) -> np.ndarray:
    """§11.6: cdist in float64, full ascending sort, 0-based index K, negated."""
    d = scipy.spatial.distance.cdist(test.astype(np.float64), train.astype(np.float64))
    return -np.sort(d, axis=1)[:, k]


def check_output(pred: Tensor, conf: Tensor, n: int, conf_dtype: torch.dtype) -> None:
    assert pred.dtype == torch.int64 and pred.shape == (n,)
    assert conf.dtype == conf_dtype and conf.shape == (n,)
    assert torch.isfinite(conf).all()


# -- registry -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MINE)
def test_build_from_registry(name: str) -> None:
    cfg = detector_config(name)
    det = build_detector(name)
    assert type(det) is DETECTORS[name] and det.name == name
    expected = {"msp": MSP, "odin": ODIN, "mds": MDS, "umds": UMDS, "edsimk": EDSimK}[name]
    assert type(det) is expected
    assert det.sweep == (cfg["sweep"] if cfg["aps_mode"] else {})
    assert det.get_hyperparam() == {"odin": [1000.0, 0.0014], "edsimk": [50]}.get(name, [])


def test_odin_candidate_order_and_set_hyperparam() -> None:
    det = build_detector("odin")
    expected = [[t, e] for e in (0.0014, 0.0028) for t in (1, 10, 100, 1000)]
    assert det.candidates() == expected
    assert det.candidates()[:5] == [[1, 0.0014], [10, 0.0014], [100, 0.0014], [1000, 0.0014], [1, 0.0028]]
    det.set_hyperparam([10, 0.0028])
    assert det.get_hyperparam() == [10.0, 0.0028] and det.temperature == 10.0 and det.noise == 0.0028


def test_edsimk_candidates_and_set_hyperparam() -> None:
    det = build_detector("edsimk")
    assert det.candidates() == [[1], [10], [50], [200], [1000]]
    det.set_hyperparam([10])
    assert det.get_hyperparam() == [10] and det.K == 10


# -- msp ----------------------------------------------------------------------------------------------------------
def test_msp_matches_reference() -> None:
    net, x = FakeNet(), images(20, 1)
    pred, conf = MSP().postprocess(net, x)
    ref_pred, ref_conf = ref_msp(net, x)
    np.testing.assert_array_equal(pred.numpy(), ref_pred)
    np.testing.assert_allclose(conf.numpy(), ref_conf, rtol=1e-12)
    check_output(pred, conf, 20, torch.float64)


def test_msp_three_view_batch_uses_plain_view() -> None:
    net, x = FakeNet(dtype=torch.float32), images(5, 2, dtype=torch.float32)
    pred, conf = MSP().postprocess(net, [x + 1, x - 1, x])
    ref_pred, ref_conf = MSP().postprocess(net, x)
    assert torch.equal(pred, ref_pred) and torch.equal(conf, ref_conf)
    check_output(pred, conf, 5, torch.float32)


# -- odin ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("temperature", "noise"), [(1.0, 0.0014), (1000.0, 0.0028), (10.0, 0.05)])
def test_odin_matches_reference(temperature: float, noise: float) -> None:
    net, x = FakeNet(), images(12, 3)
    det = ODIN(temperature=temperature, noise=noise)
    pred, conf = det.postprocess(net, x)
    perturbed_fast = net.calls[-1]
    ref_pred, ref_conf, ref_perturbed = ref_odin(net, x, temperature, noise)
    np.testing.assert_array_equal(pred.numpy(), ref_pred)
    np.testing.assert_allclose(conf.numpy(), ref_conf, rtol=1e-10)
    torch.testing.assert_close(perturbed_fast, torch.stack(ref_perturbed), rtol=0, atol=1e-15)


def test_odin_zero_gradient_counts_as_positive_and_params_untouched() -> None:
    net, x = FakeNet(dead_channel=1), images(4, 4)
    x_before = x.clone()
    ODIN(temperature=1.0, noise=0.01).postprocess(net, x)
    shift = x - net.calls[-1]
    # channel 1 has ∂L/∂x = 0 everywhere → s = +1 → x̃ = x − ε / std_1
    torch.testing.assert_close(shift[:, 1], torch.full_like(shift[:, 1], 0.01 / CIFAR_STD[1]))
    for c in (0, 2):
        torch.testing.assert_close(shift[:, c].abs(), torch.full_like(shift[:, c], 0.01 / CIFAR_STD[c]))
    assert all(p.grad is None for p in net.predictor.parameters())
    assert torch.equal(x, x_before) and not x.requires_grad


def test_odin_needs_input_std() -> None:
    net, x = FakeNet(input_std=None), images(2, 5)
    with pytest.raises(ValueError, match="input_std"):
        ODIN().postprocess(net, x)
    with pytest.raises(ValueError, match="input_std"):
        ODIN().setup(net, [])
    with pytest.raises(ValueError, match="channels"):
        ODIN().postprocess(FakeNet(input_std=(0.5, 0.5)), x)


def test_odin_float32_output() -> None:
    net, x = FakeNet(dtype=torch.float32), images(7, 6, dtype=torch.float32)
    pred, conf = ODIN().postprocess(net, x)
    check_output(pred, conf, 7, torch.float32)


# -- mds ----------------------------------------------------------------------------------------------------------
def test_mds_matches_sklearn_reference() -> None:
    net = FakeNet(feat_dim=5, num_classes=3)
    x_tr, y_tr = images(150, 7), torch.arange(150) % 3
    x_te = torch.cat([images(20, 8), 3 * images(5, 9)])
    det = MDS()
    det.setup(net, batches(x_tr, y_tr, 32))
    pred, conf = det.postprocess(net, x_te)
    check_output(pred, conf, 25, torch.float32)
    ref = ref_mahalanobis(features_of(net, x_tr), y_tr.numpy(), features_of(net, x_te), 3)
    np.testing.assert_allclose(conf.numpy(), ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(pred.numpy(), ref_msp(net, x_te)[0])


def test_fit_mahalanobis_is_pooled_ml_covariance() -> None:
    g = torch.Generator().manual_seed(10)
    feats, labels = torch.randn(60, 4, generator=g, dtype=torch.float64), torch.arange(60) % 2
    means, precision = fit_mahalanobis(feats, labels, 2)
    assert means.dtype == precision.dtype == torch.float32
    centred = (feats - feats.view(30, 2, 4).mean(0)[labels]).numpy()
    cov_ml = centred.T @ centred / 60  # 1/N, not 1/(N−1)
    np.testing.assert_allclose(precision.numpy(), np.linalg.inv(cov_ml), rtol=1e-5)


def test_fit_mahalanobis_errors() -> None:
    feats = torch.randn(10, 3)
    with pytest.raises(ValueError, match="no training feature"):
        fit_mahalanobis(feats, torch.zeros(10, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="lie in"):
        fit_mahalanobis(feats, torch.full((10,), 5), 2)


def blobs(seed: int = 0, per_blob: int = 60) -> tuple[Tensor, Tensor, Tensor]:
    """Three well-separated Gaussian blobs in 4-D: (points, blob ids, centres)."""
    centres = torch.tensor([[8.0, 0, 0, 0], [0, 8.0, 0, 0], [0, 0, 8.0, 0]], dtype=torch.float64)
    y = torch.arange(3).repeat_interleave(per_blob)
    g = torch.Generator().manual_seed(seed)
    return centres[y] + 0.5 * torch.randn(len(y), 4, generator=g, dtype=torch.float64), y, centres


@pytest.mark.parametrize("cls", [MDS, UMDS])
def test_mahalanobis_known_answer_on_blobs(cls: type[MDS]) -> None:
    net = FakeNet(in_shape=(4,), num_classes=3, identity=True)
    x, y, centres = blobs()
    det = cls()
    det.setup(net, batches(x, y, 50))
    far = torch.tensor([[40.0, 40, 40, 40], [-30.0, 0, 0, 30], [0, 0, 0, 25]], dtype=torch.float64)
    _, conf_centres = det.postprocess(net, centres)
    _, conf_far = det.postprocess(net, far)
    _, conf_train = det.postprocess(net, x)
    assert conf_centres.min() > conf_train.median() > conf_far.max()
    assert conf_centres.min() > -1.0  # the blob centres are (almost) the fitted means
    # at a fitted mean the score is max_c −0 = 0
    _, conf_means = det.postprocess(net, det.means.double())
    torch.testing.assert_close(conf_means, torch.zeros(3), atol=1e-4, rtol=0)


# -- umds ---------------------------------------------------------------------------------------------------------
def test_umds_recovers_clusters_and_matches_mds() -> None:
    net = FakeNet(in_shape=(4,), num_classes=3, identity=True)
    x, y, _ = blobs()
    det = UMDS()
    det.setup(net, batches(x, y[torch.randperm(len(y))], 50))  # labels scrambled: umds must not use them
    labels = det.cluster_labels
    assert labels is not None
    for j in range(3):
        assert len(set(y[labels == j].tolist())) == 1
    assert len(set(labels.tolist())) == 3
    # recovering the blobs makes umds the supervised mds (up to the cluster numbering)
    sup = MDS()
    sup.setup(net, batches(x, y, 50))
    x_te = 4 * torch.randn(30, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(det.postprocess(net, x_te)[1], sup.postprocess(net, x_te)[1], rtol=1e-4, atol=1e-4)


def test_umds_matches_reference_with_its_clusters() -> None:
    net = FakeNet(feat_dim=5, num_classes=4)
    x_tr, y_tr = images(200, 11), torch.zeros(200, dtype=torch.long)
    x_te = images(15, 12)
    det = UMDS(seed=7)
    det.setup(net, batches(x_tr, y_tr, 64))
    pred, conf = det.postprocess(net, x_te)
    check_output(pred, conf, 15, torch.float32)
    feats = features_of(net, x_tr)
    labels, centroids = det.cluster_labels.numpy(), det.centroids.numpy()
    # every training feature is assigned to its nearest centroid
    for i, f in enumerate(feats):
        assert labels[i] == int(np.argmin([np.sum((f - c) ** 2) for c in centroids]))
    # N ≤ 256·k: k-means ran on all points; after 100 Lloyd rounds each centroid is its cluster's mean
    for j, c in enumerate(centroids):
        np.testing.assert_allclose(c, feats[labels == j].mean(0), atol=1e-6)
    ref = ref_mahalanobis(feats, labels, features_of(net, x_te), 4)
    np.testing.assert_allclose(conf.numpy(), ref, rtol=1e-4, atol=1e-4)


def test_umds_subsample_and_iterations(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, int]] = []
    original = umds_module.lloyd

    def spy(points: Tensor, centroids: Tensor, niter: int) -> Tensor:
        seen.append((points.shape[0], niter))
        return original(points, centroids, niter)

    monkeypatch.setattr(umds_module, "lloyd", spy)
    net = FakeNet(in_shape=(3,), num_classes=2, identity=True)
    x = torch.randn(700, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    UMDS().setup(net, batches(x, torch.zeros(700, dtype=torch.long), 100))
    UMDS().setup(net, batches(x[:300], torch.zeros(300, dtype=torch.long), 100))
    assert seen == [(512, 100), (300, 100)]  # min(N, 256·k) points, exactly 100 rounds


def test_umds_is_reproducible_with_its_seed() -> None:
    net = FakeNet(feat_dim=5, num_classes=4, noise=0.0)
    x, y = images(120, 13), torch.zeros(120, dtype=torch.long)
    a, b, c = UMDS(), UMDS(), UMDS(seed=None)
    for det in (a, b, c):
        det.setup(net, batches(x, y, 40))
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.precision, b.precision)
    assert c.centroids is not None and torch.isfinite(c.centroids).all()


def test_split_empty_clusters() -> None:
    centroids = torch.tensor([[1.0, 2.0, 3.0], [9.0, 9.0, 9.0], [4.0, 5.0, 6.0]], dtype=torch.float64)
    counts = torch.tensor([6.0, 0.0, 2.0], dtype=torch.float64)
    split_empty_clusters(centroids, counts)
    eps, s = 1 / 1024, torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(centroids[1], torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64) * (1 + eps * s))
    torch.testing.assert_close(centroids[0], torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64) * (1 - eps * s))
    assert counts.tolist() == [3.0, 3.0, 2.0]


def test_kmeans_survives_empty_clusters(monkeypatch: pytest.MonkeyPatch) -> None:
    # many exact duplicates: two initial centroids often coincide, and the second one (ties go to the
    # lower index) loses all its points
    calls = []
    original = umds_module.split_empty_clusters
    monkeypatch.setattr(umds_module, "split_empty_clusters", lambda c, n: calls.append(1) or original(c, n))
    x = torch.tensor([[0.0, 1.0]] * 6 + [[10.0, 1.0], [20.0, 1.0]], dtype=torch.float64)
    for seed in range(10):
        centroids = kmeans(x, 3, generator=torch.Generator().manual_seed(seed))
        assert torch.isfinite(centroids).all()
        assert assign_clusters(x, centroids).shape == (8,)
    assert calls, "no seed produced an empty cluster; the test data no longer exercises the split"


def test_kmeans_needs_k_points() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        kmeans(torch.randn(2, 4), 3)


# -- edsimk -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [0, 1, 7, 59])
def test_edsimk_matches_cdist_reference(k: int) -> None:
    net = FakeNet(feat_dim=5)
    x_tr, y_tr, x_te = images(60, 14), torch.zeros(60, dtype=torch.long), images(25, 15)
    det = EDSimK(K=k, query_chunk=4, train_chunk=7)
    det.setup(net, batches(x_tr, y_tr, 16))
    pred, conf = det.postprocess(net, x_te)
    check_output(pred, conf, 25, torch.float64)
    ref = ref_edsimk(features_of(net, x_tr), features_of(net, x_te), k)
    np.testing.assert_allclose(conf.numpy(), ref, rtol=1e-12, atol=1e-12)


def test_edsimk_k_is_a_zero_based_index() -> None:
    net = FakeNet(in_shape=(1,), identity=True)
    train = torch.tensor([[0.0], [1.0], [3.0], [6.0]], dtype=torch.float64)
    det = EDSimK(K=0)
    det.setup(net, batches(train, torch.zeros(4, dtype=torch.long), 4))
    test = torch.tensor([[0.1], [6.0]], dtype=torch.float64)
    expected = {0: [0.1, 0.0], 1: [0.9, 3.0], 2: [2.9, 5.0], 3: [5.9, 6.0]}
    for k, dist in expected.items():
        det.set_hyperparam([k])
        torch.testing.assert_close(det.postprocess(net, test)[1], -torch.tensor(dist, dtype=torch.float64))
    with pytest.raises(ValueError, match="K = 4"):  # refused once the training set is known
        det.set_hyperparam([4])
    det.K = 4  # and at scoring time, whatever set it
    with pytest.raises(ValueError, match="K = 4"):
        det.postprocess(net, test)


def test_edsimk_duplicate_gives_exact_zero() -> None:
    net = FakeNet(in_shape=(8,), identity=True)
    train = 100 + torch.randn(30, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    det = EDSimK(K=0)
    det.setup(net, batches(train, torch.zeros(30, dtype=torch.long), 30))
    assert torch.equal(det.postprocess(net, train)[1], torch.zeros(30, dtype=torch.float64))


@pytest.mark.parametrize("k", [0, 3, 12, 39])
def test_kth_nearest_chunked_equals_unchunked(k: int) -> None:
    g = torch.Generator().manual_seed(4)
    keys, queries = torch.randn(40, 6, generator=g), torch.randn(23, 6, generator=g)
    whole = kth_nearest_distance(queries, keys, k, query_chunk=1000, key_chunk=1000)
    for qc, kc in [(1, 1), (3, 5), (7, 40), (23, 2)]:
        assert torch.equal(kth_nearest_distance(queries, keys, k, query_chunk=qc, key_chunk=kc), whole)
    assert whole.dtype == torch.float64
    ref = -ref_edsimk(keys.numpy(), queries.numpy(), k)
    np.testing.assert_allclose(whole.numpy(), ref, rtol=1e-12)


def test_kth_nearest_errors() -> None:
    keys = torch.randn(5, 2)
    with pytest.raises(ValueError, match="K = 5"):
        kth_nearest_distance(keys, keys, 5)
    with pytest.raises(ValueError, match="K = -1"):
        kth_nearest_distance(keys, keys, -1)
    with pytest.raises(ValueError, match="chunk"):
        kth_nearest_distance(keys, keys, 0, query_chunk=0)


@pytest.mark.parametrize("cls", [MDS, UMDS, EDSimK])
def test_score_before_setup_is_an_error(cls: type) -> None:
    with pytest.raises(RuntimeError, match="setup"):
        cls().postprocess(FakeNet(), images(2, 0))


# -- a real tiny OODNetwork ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=[("ssl", "barlow_twins"), ("ssl_bayes_h", "mc_barlow_twins")])
def real_net(request: pytest.FixtureRequest) -> Any:
    from src.ood.wrapper import OODNetwork

    torch.manual_seed(0)
    model = build_model(*request.param)
    return OODNetwork(model, nn.Linear(512, 4), input_std=CIFAR_STD).eval()


def test_real_network_all_detectors(real_net: Any) -> None:
    g = torch.Generator().manual_seed(0)
    x_tr, y_tr = torch.randn(24, 3, 8, 8, generator=g), torch.arange(24) % 4
    x_te = torch.randn(6, 3, 8, 8, generator=g)
    conf_dtypes = {"msp": torch.float32, "odin": torch.float32, "mds": torch.float32, "umds": torch.float32}
    modules = [*real_net.model.modules(), real_net.predictor]
    for name in MINE:
        det = build_detector(name)
        if name == "edsimk":
            det.set_hyperparam([1])
        det.setup(real_net, batches(x_tr, y_tr, 12))
        assert not any(m.training for m in modules), f"{name} setup switched a module to train mode"
        pred, conf = det.postprocess(real_net, x_te)
        check_output(pred, conf, 6, conf_dtypes.get(name, torch.float64))
        assert pred.max() < 4
    assert all(p.grad is None for p in [*real_net.model.parameters(), *real_net.predictor.parameters()])
