"""umds: the k-means after faiss (subsample, 100 Lloyd rounds, empty-cluster splitting, seeded),
and the Mahalanobis score on its clusters against the per-sample reference."""

from __future__ import annotations

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
    det = UMDS()
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
    det = UMDS(seed=7)
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
    UMDS().fit(as_features(x, 2), torch.zeros(700, dtype=torch.long))
    UMDS().fit(as_features(x[:300], 2), torch.zeros(300, dtype=torch.long))
    assert seen == [(512, 100), (300, 100)]  # min(N, 256·k) points, exactly 100 rounds


def test_umds_is_reproducible_with_its_seed() -> None:
    x = torch.tanh(torch.randn(120, 5, generator=torch.Generator().manual_seed(13)))
    a, b, c = UMDS(), UMDS(), UMDS(seed=None)
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
