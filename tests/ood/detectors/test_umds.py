"""umds: the k-means after faiss (subsample, 100 Lloyd rounds, empty-cluster splitting, seeded),
the Mahalanobis score on its clusters against the per-sample reference, and the choice between
faiss's k-means (when installed) and the project's, recorded for the run's OOD record."""

from __future__ import annotations

import sys
import types
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch import Tensor

from src.ood.detectors import umds as umds_module
from src.ood.detectors.mds import MDS
from src.ood.detectors.umds import UMDS, assign_clusters, kmeans, split_empty_clusters
from src.ood.features import Features
from tests.ood.fakes import features
from tests.reference import detectors as ref


def as_features(x: Tensor, classes: int) -> Features:
    return features(torch.zeros(x.shape[0], classes, dtype=x.dtype), feats=x)


def blobs(seed: int = 0, per_blob: int = 60) -> tuple[Tensor, Tensor]:
    centres = torch.tensor([[8.0, 0, 0, 0], [0, 8.0, 0, 0], [0, 0, 8.0, 0]], dtype=torch.float64)
    y = torch.arange(3).repeat_interleave(per_blob)
    g = torch.Generator().manual_seed(seed)
    return centres[y] + 0.5 * torch.randn(len(y), 4, generator=g, dtype=torch.float64), y


def test_umds_recovers_clusters_and_matches_mds() -> None:
    x, y = blobs()
    det = UMDS(kmeans="torch")
    det.fit(as_features(x, 3), y[torch.randperm(len(y))])  # labels scrambled: umds must not use them
    labels = det.cluster_labels
    assert labels is not None
    for j in range(3):
        assert len(set(y[labels == j].tolist())) == 1
    assert len(set(labels.tolist())) == 3
    # recovering the blobs makes umds the supervised mds (up to the cluster numbering)
    sup = MDS()
    sup.fit(as_features(x, 3), y)
    x_te = as_features(4 * torch.randn(30, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64), 3)
    torch.testing.assert_close(det.postprocess(x_te)[1], sup.postprocess(x_te)[1], rtol=1e-4, atol=1e-4)


def test_umds_matches_reference_with_its_clusters() -> None:
    g = torch.Generator().manual_seed(11)
    feats, test = torch.tanh(torch.randn(200, 5, generator=g)), torch.tanh(torch.randn(15, 5, generator=g))
    det = UMDS(seed=7, kmeans="torch")
    det.fit(as_features(feats, 4), torch.zeros(200, dtype=torch.long))
    pred, conf = det.postprocess(as_features(test, 4))
    assert pred.dtype == torch.int64 and conf.dtype == torch.float32 and conf.shape == (15,)
    assert det.cluster_labels is not None and det.centroids is not None
    labels, centroids = det.cluster_labels.numpy(), det.centroids.numpy()
    for i, f in enumerate(feats.double().numpy()):  # every training feature sits at its nearest centroid
        assert labels[i] == int(np.argmin([np.sum((f - c) ** 2) for c in centroids]))
    # N <= 256·k: k-means ran on all points; after 100 Lloyd rounds each centroid is its cluster's mean
    for j, c in enumerate(centroids):
        np.testing.assert_allclose(c, feats.double().numpy()[labels == j].mean(0), atol=1e-6)
    means, precision = ref.mahalanobis_fit(feats, torch.from_numpy(labels), 4)
    np.testing.assert_allclose(conf.numpy(), ref.mahalanobis_scores(test, means, precision), rtol=1e-4, atol=1e-4)


def test_umds_subsample_and_iterations(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, int]] = []
    original = umds_module.lloyd

    def spy(points: Tensor, centroids: Tensor, niter: int) -> Tensor:
        seen.append((points.shape[0], niter))
        return original(points, centroids, niter)

    monkeypatch.setattr(umds_module, "lloyd", spy)
    x = torch.randn(700, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    UMDS(kmeans="torch").fit(as_features(x, 2), torch.zeros(700, dtype=torch.long))
    UMDS(kmeans="torch").fit(as_features(x[:300], 2), torch.zeros(300, dtype=torch.long))
    assert seen == [(512, 100), (300, 100)]  # min(N, 256·k) points, exactly 100 rounds


def test_umds_is_reproducible_with_its_seed() -> None:
    x = torch.tanh(torch.randn(120, 5, generator=torch.Generator().manual_seed(13)))
    a, b, c = UMDS(kmeans="torch"), UMDS(kmeans="torch"), UMDS(seed=None, kmeans="torch")
    for det in (a, b, c):
        det.fit(as_features(x, 4), torch.zeros(120, dtype=torch.long))
    assert a.centroids is not None and b.centroids is not None and a.precision is not None
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


# ------------------------------------------------------------------------------ faiss or not


class FakeKmeans:
    """Stands in for ``faiss.Kmeans``: records its arguments and the training data, returns fixed centroids."""

    calls: ClassVar[list[dict[str, Any]]] = []
    centroids_out = np.array([[8.0, 0, 0, 0], [0, 8.0, 0, 0], [0, 0, 8.0, 0]], dtype=np.float32) + 0.25

    def __init__(self, d: int, k: int, **kwargs: Any) -> None:
        self.d, self.k, self.kwargs = d, k, kwargs
        self.centroids: np.ndarray | None = None

    def train(self, x: np.ndarray) -> None:
        FakeKmeans.calls.append({"d": self.d, "k": self.k, **self.kwargs, "x": x.copy()})
        self.centroids = self.centroids_out[: self.k].copy()


@pytest.fixture
def fake_faiss(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    module = types.ModuleType("faiss")
    module.Kmeans = FakeKmeans  # type: ignore[attr-defined]
    module.__version__ = "0.0-fake"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "faiss", module)
    monkeypatch.setattr(FakeKmeans, "calls", [])
    return FakeKmeans.calls


@pytest.fixture
def no_faiss(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError


def test_umds_uses_faiss_kmeans_when_installed(fake_faiss: list[dict[str, Any]]) -> None:
    x, y = blobs()
    det = UMDS(seed=5)
    det.fit(as_features(x, 3), y)
    # faiss was called as the reference does: Kmeans(d, k, niter=100) with the detector's seed, all points
    (call,) = fake_faiss
    assert (call["d"], call["k"], call["niter"], call["seed"], call["verbose"]) == (4, 3, 100, 5, False)
    assert call["x"].dtype == np.float32 and call["x"].flags["C_CONTIGUOUS"] and call["x"].shape == (180, 4)
    # ... on the features in a permuted order (the same multiset of rows)
    np.testing.assert_allclose(np.sort(call["x"], axis=0), np.sort(x.numpy().astype(np.float32), axis=0))
    assert not np.allclose(call["x"], x.numpy().astype(np.float32))
    # its centroids are umds's centres: the clusters are the nearest fake centroids
    assert det.centroids is not None and det.cluster_labels is not None
    assert det.centroids.dtype == torch.float64
    torch.testing.assert_close(det.centroids, torch.from_numpy(FakeKmeans.centroids_out).double())
    assert torch.equal(det.cluster_labels, assign_clusters(x, torch.from_numpy(FakeKmeans.centroids_out).double()))
    assert det.record_info() == {"kmeans": "faiss", "faiss_version": "0.0-fake"}
    # the pseudo-classes are the blobs, so the pooled fit is the supervised mds fit
    sup = MDS()
    sup.fit(as_features(x, 3), y)
    assert det.precision is not None and sup.precision is not None
    torch.testing.assert_close(det.precision, sup.precision)


def test_umds_kmeans_torch_ignores_an_installed_faiss(fake_faiss: list[dict[str, Any]]) -> None:
    x, y = blobs()
    det = UMDS(kmeans="torch")
    det.fit(as_features(x, 3), y)
    assert fake_faiss == [] and det.record_info() == {"kmeans": "torch"}
    expected = kmeans(x, 3, generator=torch.Generator().manual_seed(1234))
    assert det.centroids is not None and torch.equal(det.centroids, expected)


def test_umds_falls_back_without_faiss(no_faiss: None) -> None:
    assert umds_module.import_faiss() is None
    x, y = blobs()
    det = UMDS()
    assert det.record_info() == {}  # nothing ran yet
    det.fit(as_features(x, 3), y)
    assert det.record_info() == {"kmeans": "torch"}
    assert det.centroids is not None
    assert torch.equal(det.centroids, kmeans(x, 3, generator=torch.Generator().manual_seed(1234)))
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        UMDS(kmeans="faiss").fit(as_features(x, 3), y)


def test_umds_rejects_an_unknown_kmeans() -> None:
    with pytest.raises(ValueError, match=r"args.kmeans='sklearn'.*auto, faiss, torch"):
        UMDS(kmeans="sklearn")


def test_umds_with_the_real_faiss() -> None:
    faiss = pytest.importorskip("faiss")
    x, y = blobs(per_blob=100)
    det, again = UMDS(), UMDS()
    for d in (det, again):
        d.fit(as_features(x, 3), y)
    assert det.record_info() == {"kmeans": "faiss", "faiss_version": faiss.__version__}
    # the centres are faiss's: Kmeans(d, k, niter=100, seed=1234) on the features in the generator's order
    order = torch.randperm(300, generator=torch.Generator().manual_seed(1234))
    km = faiss.Kmeans(4, 3, niter=100, seed=1234, verbose=False)
    km.train(x[order].float().numpy())
    assert det.centroids is not None and again.centroids is not None
    torch.testing.assert_close(det.centroids, torch.from_numpy(km.centroids).double())
    assert torch.equal(det.centroids, again.centroids)  # seeded: reproducible
    # 300 points <= 256·k: faiss ran Lloyd on all of them, so each centre is the mean of its cluster
    labels = det.cluster_labels
    assert labels is not None
    for j in range(3):
        torch.testing.assert_close(det.centroids[j], x[labels == j].mean(0), atol=1e-5, rtol=0)
