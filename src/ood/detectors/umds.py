"""``umds``: unsupervised Mahalanobis, k-means pseudo-classes instead of labels (O-Q20).

Identical to ``mds`` (same ``fit_mahalanobis`` / ``mahalanobis_score``, same ``feats``) except that
the groups are the ``k = C`` clusters (C = the number of classes, the logits' width) of a k-means on
the ID training features.

The k-means is the reference's, faiss ``Kmeans(d, k, niter=100, seed=1234)``, when ``faiss`` is
importable (``pip install faiss-cpu``, the ``faiss`` extra of the project); faiss trains on the
features in an order drawn from the detector's generator (the reference's input order came from the
unseeded NumPy RNG). Without faiss, or with ``kmeans: torch`` in the config, the project's own k-means
runs, re-implemented after faiss' algorithm:

1. randomly permute the N training features, then subsample ``n = min(N, 256·k)`` of them
   uniformly without replacement (faiss' ``max_points_per_centroid = 256``);
2. initialise the centroids with k distinct random points of the subsample;
3. exactly 100 Lloyd rounds on the subsample: assign each point to its nearest centroid (L2),
   then move each centroid to the mean of its points; a centroid left with no point is
   re-seeded by splitting the largest cluster (faiss ``split_clusters``: copy its centroid and
   perturb the two copies by the factors ``1 ± 1/1024``, alternating per dimension; faiss picks
   the cluster to split at random with probability ∝ size, we take the largest, deterministically);
4. assign all N training features to their nearest centroid.

Randomness comes from a local ``torch.Generator`` seeded with ``seed`` (default 1234), so the
clustering is reproducible; the reference's permutation used the unseeded numpy RNG. The two
implementations draw differently, so their clusters (and scores) differ slightly for one seed; which one
ran is in the run's OOD record (``detector_info.kmeans``: ``"faiss"`` or ``"torch"``, with the faiss
version). ``pred`` is the argmax of the logits (unrelated to the clusters).
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from src.ood.detectors import register
from src.ood.detectors.mds import MDS, fit_mahalanobis, log_training_accuracy
from src.ood.features import Features

log = logging.getLogger(__name__)

#: faiss' default cap on training points per centroid (the subsample has at most 256·k points)
MAX_POINTS_PER_CENTROID = 256
#: faiss Kmeans(niter=100) as called by the reference
NITER = 100
#: faiss' relative perturbation when it splits a cluster to re-seed an empty one
SPLIT_EPS = 1.0 / 1024.0
#: rows per block when assigning many points, to bound the float64 copy
_ASSIGN_CHUNK = 65536


def assign_clusters(points: Tensor, centroids: Tensor) -> Tensor:
    """Index of the nearest centroid (squared L2, float64; ties to the lower index).

    ``a_i = argmin_c ‖x_i‖² − 2 x_i·μ_c + ‖μ_c‖²`` (the ‖x_i‖² term is constant per row and dropped).

    Args:
        points: ``x`` [N, D].
        centroids: ``μ`` [k, D].

    Returns:
        int64 [N] on the points' device.
    """
    c = centroids.to(device=points.device, dtype=torch.float64)
    c_sq = (c * c).sum(1)
    out = []
    for start in range(0, points.shape[0], _ASSIGN_CHUNK):
        x = points[start : start + _ASSIGN_CHUNK].to(torch.float64)
        out.append((c_sq.unsqueeze(0) - 2 * x @ c.T).argmin(dim=1))
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=points.device)


def split_empty_clusters(centroids: Tensor, counts: Tensor) -> None:
    """Re-seed every empty cluster by splitting the currently largest one, in place.

    For an empty cluster ``i`` and the largest ``j``: ``μ_i = μ_j ⊙ (1 + ε s)``, ``μ_j ← μ_j ⊙ (1 − ε s)``
    with ``s = (+1, −1, +1, …)`` over dimensions and ``ε = 1/1024``; the count of ``j`` is shared
    between both halves (faiss ``split_clusters``, except that faiss picks ``j`` at random ∝ size).

    Args:
        centroids: ``μ`` [k, D], modified in place.
        counts: points per cluster [k] (float), modified in place.
    """
    sign = torch.ones(centroids.shape[1], dtype=centroids.dtype, device=centroids.device)
    sign[1::2] = -1
    for i in torch.nonzero(counts == 0).flatten().tolist():
        j = int(counts.argmax())
        centroids[i] = centroids[j] * (1 + SPLIT_EPS * sign)
        centroids[j] = centroids[j] * (1 - SPLIT_EPS * sign)
        counts[i] = counts[j] / 2
        counts[j] -= counts[i]


def lloyd(points: Tensor, centroids: Tensor, niter: int) -> Tensor:
    """``niter`` Lloyd rounds (assign, then mean update, then re-seed empty clusters).

    Args:
        points: ``x`` [n, D] (float64).
        centroids: initial ``μ`` [k, D] (float64).
        niter: number of rounds (no early stop, as faiss ≤ 1.8).

    Returns:
        the final centroids [k, D] float64.
    """
    c = centroids.clone()
    k = c.shape[0]
    for _ in range(niter):
        labels = assign_clusters(points, c)
        counts = torch.bincount(labels, minlength=k).to(points.dtype)
        sums = torch.zeros_like(c).index_add_(0, labels, points)
        c = sums / counts.clamp_min(1).unsqueeze(1)
        if (counts == 0).any():
            split_empty_clusters(c, counts)
    return c


def kmeans(
    features: Tensor,
    k: int,
    niter: int = NITER,
    max_points_per_centroid: int = MAX_POINTS_PER_CENTROID,
    generator: torch.Generator | None = None,
) -> Tensor:
    """k-means centroids after faiss ``Kmeans(d, k, niter)`` (see the module docstring).

    Args:
        features: ``x`` [N, D].
        k: number of clusters.
        niter: Lloyd rounds.
        max_points_per_centroid: the subsample has ``min(N, max_points_per_centroid·k)`` points.
        generator: CPU generator for the permutation, the subsample and the initialisation.

    Returns:
        centroids float64 [k, D] on the features' device.

    Raises:
        ValueError: fewer points than clusters.
    """
    n = features.shape[0]
    if n < k:
        raise ValueError(f"k-means with k={k} needs at least {k} training features, got {n}")
    permuted = torch.randperm(n, generator=generator)
    n_sub = min(n, max_points_per_centroid * k)
    subsample = permuted[torch.randperm(n, generator=generator)[:n_sub]]
    init = subsample[torch.randperm(n_sub, generator=generator)[:k]]
    points = features[subsample.to(features.device)].to(torch.float64)
    return lloyd(points, features[init.to(features.device)].to(torch.float64), niter)


#: the values of umds's ``kmeans`` argument: faiss when importable, faiss (required), the project's k-means
KMEANS_BACKENDS = ("auto", "faiss", "torch")


def import_faiss() -> ModuleType | None:
    """The ``faiss`` module, or None when it is not installed."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def faiss_kmeans(
    faiss: ModuleType, features: Tensor, k: int, niter: int, seed: int, generator: torch.Generator | None = None
) -> Tensor:
    """Centroids of faiss ``Kmeans(d, k, niter=niter, seed=seed)`` trained on the features in a random order.

    faiss subsamples ``max_points_per_centroid·k`` (256·k) points itself, initialises with random points and
    runs ``niter`` Lloyd rounds (the algorithm ``kmeans`` re-implements).

    Args:
        faiss: the faiss module.
        features: ``x`` [N, D].
        k: number of clusters.
        niter: Lloyd rounds.
        seed: faiss' seed.
        generator: CPU generator of the input order.

    Returns:
        centroids float64 [k, D] on the features' device.

    Raises:
        ValueError: fewer points than clusters.
    """
    n, d = features.shape
    if n < k:
        raise ValueError(f"k-means with k={k} needs at least {k} training features, got {n}")
    order = torch.randperm(n, generator=generator)
    points = features.detach()[order.to(features.device)].to(device="cpu", dtype=torch.float32).contiguous()
    km = faiss.Kmeans(d, k, niter=niter, seed=seed, verbose=False)
    km.train(points.numpy())
    return torch.as_tensor(km.centroids, dtype=torch.float64).reshape(k, d).to(features.device)


@register
class UMDS(MDS):
    """Mahalanobis with a pooled covariance over ``k = C`` k-means clusters (C = the number of classes).

    Args:
        seed: seed of the clustering (the generator, and faiss' seed); None draws a fresh seed (unreproducible,
            as the reference).
        kmeans: ``"auto"`` (faiss when installed, else the project's k-means), ``"faiss"`` (faiss required) or
            ``"torch"`` (the project's k-means).
        sweep: unused (no APS).
        corrected_sign: unused (the sign is not inverted).

    Raises:
        ValueError: an unknown ``kmeans``.
    """

    name = "umds"

    def __init__(
        self,
        seed: int | None = 1234,
        kmeans: str = "auto",
        sweep: dict[str, list[Any]] | None = None,
        corrected_sign: bool = False,
    ) -> None:
        super().__init__(sweep=sweep, corrected_sign=corrected_sign)
        if kmeans not in KMEANS_BACKENDS:
            raise ValueError(
                f"umds: args.kmeans={kmeans!r} is not one of {', '.join(KMEANS_BACKENDS)} "
                "(set args.kmeans in conf/ood/umds.yaml)"
            )
        self.seed = seed
        self.kmeans = kmeans
        self.centroids: Tensor | None = None
        self.cluster_labels: Tensor | None = None
        #: the k-means that ran in the last ``fit``: {"kmeans": "faiss" | "torch", "faiss_version": ...}
        self.kmeans_info: dict[str, Any] = {}

    def record_info(self) -> dict[str, Any]:
        return dict(self.kmeans_info)

    def cluster(self, feats: Tensor, k: int, generator: torch.Generator) -> Tensor:
        """The k-means centroids [k, D] (float64) of ``feats`` with the configured implementation; records it.

        Raises:
            ImportError: ``kmeans="faiss"`` without faiss installed.
        """
        faiss = None if self.kmeans == "torch" else import_faiss()
        if faiss is None and self.kmeans == "faiss":
            raise ImportError(
                "umds: args.kmeans='faiss' but faiss is not installed; pip install faiss-cpu "
                "(or set args.kmeans to 'auto' or 'torch' in conf/ood/umds.yaml)"
            )
        if faiss is None:
            self.kmeans_info = {"kmeans": "torch"}
            return kmeans(feats, k, generator=generator)
        # faiss' seed: the configured one, or a draw of the (then fresh) generator
        seed = self.seed if self.seed is not None else int(torch.randint(2**31 - 1, (), generator=generator))
        self.kmeans_info = {"kmeans": "faiss", "faiss_version": str(getattr(faiss, "__version__", "unknown"))}
        log.info("umds: faiss %s k-means (k=%d, niter=%d)", self.kmeans_info["faiss_version"], k, NITER)
        return faiss_kmeans(faiss, feats, k, NITER, seed, generator)

    def fit(self, train: Features, labels: Tensor) -> None:
        """Cluster the training ``feats`` [N, D] into ``k = C`` (the logits' width) groups, then fit the
        cluster means and the pooled precision; the true ``labels`` only feed the logged sanity check."""
        log_training_accuracy(self.name, train, labels)
        feats = train.get("feats", self.name)
        generator = torch.Generator()
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
        k = train.logits.shape[1]
        self.centroids = self.cluster(feats, k, generator)
        clusters = assign_clusters(feats, self.centroids)
        counts = torch.bincount(clusters, minlength=k)
        if (counts == 0).any():
            # only possible if the final assignment empties a cluster: the reference's mean would be NaN
            # and turn every score into NaN; keeping the non-empty clusters is the only usable choice
            keep = torch.nonzero(counts > 0).flatten()
            log.warning("umds: %d of %d k-means clusters are empty; scoring with the others", k - keep.numel(), k)
            remap = torch.full((k,), -1, dtype=torch.long, device=clusters.device)
            remap[keep] = torch.arange(keep.numel(), device=clusters.device)
            clusters, k = remap[clusters], keep.numel()
        self.cluster_labels = clusters
        self.means, self.precision = fit_mahalanobis(feats, clusters, k)
