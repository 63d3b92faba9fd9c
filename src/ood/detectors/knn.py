"""``knn``: deep nearest neighbours (Sun, Ming, Zhu & Li, "Out-of-distribution detection with deep
nearest neighbors", ICML 2022).

The fit stores the L2-normalised penultimate features of all N ID training images,
``z_i = x_i / ‖x_i‖`` [N, D]. A test feature ``x`` [D] with ``z = x / ‖x‖`` scores

    r_(1) ≤ r_(2) ≤ … ≤ r_(N)    the distances ‖z − z_i‖ sorted ascending
    conf(x) = −r_(K)            (K is 1-based: K = 1 → the nearest neighbour)
    pred(x) = argmax_c f_c(x)

(closer to the training set = more in-distribution). OpenOOD v1.5's ``knn`` postprocessor: default
``K = 50``, APS over ``K_list: [50, 100, 200, 500, 1000]`` (``conf/ood/knn.yaml``).

**K above the number of training features.** K is capped at N: with fewer than K training features the
farthest one, r_(N), is used (``min(K, N)``; OpenOOD's faiss search has no K-th neighbour there and pads
with a sentinel distance, the same for every sample). Every K ≥ N then scores the same, and the
search keeps the first of equal AUROCs (the smallest such K). The recorded hyper-parameter is the
configured K, the record's ``detector_info.K_used`` the rank used; the fit logs a warning when a K of
the detector (or of its grid) exceeds N. Only small training splits are concerned (unit tests; the
demo's ~860 training digits for K = 1000).

Against OpenOOD's code: its faiss ``IndexFlatL2`` returns *squared* distances, so its score is −r_(K)²;
r ↦ r² is increasing on r ≥ 0, so the ranking, and with it every metric (AUROC, FPR@95, AUPR) and the
search's choice, is the same. Its normaliser ``x / ‖x‖ + 1e-10`` adds 1e-10 to every component (an
operator-precedence slip); here ``x / max(‖x‖, 1e-12)`` (``torch.nn.functional.normalize``; a zero
feature stays zero), in float64.

Computation: the search of :mod:`~src.ood.detectors.edsimk` (``kth_nearest_distance`` /
``kth_nearest_distances``, with the 0-based index K − 1): squared distances in float64 in blocks of test
× training rows, a running ``topk`` of the K smallest per test row, no N × M matrix, and the selected
neighbour's distance recomputed directly as ‖z − z_i‖. :meth:`KNN.score_candidates` scores every K of
the grid from one scan that keeps the max(K) nearest, sliced per K (identical to one scan per K).

Features: ``feats`` (the backbone representation: e = E(x) for ssl and Bayes-Z; for Bayes-H the MC
mean h̄ of the S samples, O-Q12), at fit and score time; ``logits`` for ``pred``.

**MC form** (``mc: true``, off by default): for Bayes-H the score is averaged over the S
samples of the backbone representation, ``conf(x) = (1/S) Σ_s −r_(K)(h_s)`` with each ``h_s`` [D]
L2-normalised and searched against the same fit (the normalised training h̄); it reads ``samples``
[S, B, D] for Bayes-H runs only (:meth:`KNN.reads_for`) and costs S scans of the training set per
batch. For ssl and Bayes-Z the backbone representation e is deterministic, so the MC average is the
score itself and the option changes nothing there.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from src.ood.detectors import register
from src.ood.detectors.base import Detector, mc_flag
from src.ood.detectors.edsimk import kth_nearest_distance, kth_nearest_distances
from src.ood.features import Features
from src.ood.wrapper import OODNetwork

log = logging.getLogger(__name__)


def l2_normalised(x: Tensor) -> Tensor:
    """Rows of ``x`` [N, D] divided by their L2 norm (at least 1e-12), in float64."""
    return F.normalize(x.to(torch.float64), p=2.0, dim=1, eps=1e-12)


def mean_of(dists: list[Tensor]) -> Tensor:
    """The mean of per-sample distances [B] (the one tensor itself when there is one: no rounding)."""
    if len(dists) == 1:
        return dists[0]
    return torch.stack(dists).mean(0)


@register
class KNN(Detector):
    """−‖z − z_(K)‖ on L2-normalised ``feats``, ``z_(K)`` the K-th nearest normalised training feature; APS over ``K``.

    Args:
        K: 1-based neighbour rank (OpenOOD's default 50).
        mc: Bayes-H only: average the score over the S samples h_s instead of scoring h̄
            (see the module docstring).
        query_chunk: test rows per distance block.
        train_chunk: training rows per distance block (memory O(query_chunk · max(train_chunk, K))).
        sweep: APS grid ``{"K_list": [...]}``.
        corrected_sign: unused (the sign is already "closer = more ID").

    Raises:
        ValueError: ``K`` not a positive integer, or a chunk size below 1.
    """

    name = "knn"
    needs_fit = True
    reads = frozenset({"logits", "feats"})
    fit_reads = frozenset({"feats"})

    def __init__(
        self,
        K: int = 50,
        mc: bool = False,
        query_chunk: int = 1024,
        train_chunk: int = 8192,
        sweep: dict[str, list[Any]] | None = None,
        corrected_sign: bool = False,
    ) -> None:
        super().__init__(sweep=sweep, corrected_sign=corrected_sign)
        self.query_chunk = int(query_chunk)
        self.train_chunk = int(train_chunk)
        if self.query_chunk < 1 or self.train_chunk < 1:
            raise ValueError(f"knn: chunk sizes must be positive, got {query_chunk}, {train_chunk}")
        self.train_feats: Tensor | None = None
        self.train_sq_norms: Tensor | None = None
        self.K = self._checked(K)
        self.mc = mc_flag(mc, "knn")

    def reads_for(self, net: OODNetwork) -> frozenset[str]:
        """``reads``, plus ``samples`` for Bayes-H with ``mc``."""
        if self.mc and net.stochastic_space == "H":
            return self.reads | {"samples"}
        return self.reads

    @staticmethod
    def _checked(k: Any) -> int:
        value = int(k)
        if value < 1 or value != float(k):
            raise ValueError(f"knn: K must be a positive integer, got {k!r}")
        return value

    def fit(self, train: Features, labels: Tensor) -> None:
        """Store the L2-normalised training ``feats`` [N, D] (float64, on their device) and their squared norms.

        Raises:
            ValueError: no training feature.
        """
        feats = train.get("feats", self.name)
        if feats.shape[0] == 0:
            raise ValueError("knn: the training split has no features to search")
        self.train_feats = l2_normalised(feats)
        self.train_sq_norms = (self.train_feats * self.train_feats).sum(1)
        n, largest = feats.shape[0], max([self.K, *(int(k) for k in self.sweep.get("K_list", []))])
        if largest > n:
            log.warning("knn: K up to %d but only %d training features: K is capped at %d", largest, n, n)

    def effective_k(self, k: int) -> int:
        """``min(K, N)``, the rank actually used (N = the number of training features)."""
        assert self.train_feats is not None
        return min(k, self.train_feats.shape[0])

    def is_fitted(self) -> bool:
        return self.train_feats is not None

    def record_info(self) -> dict[str, Any]:
        """The rank used (``K_used = min(K, N)``, below K only on a training split smaller than K) and N,
        after the fit."""
        if self.train_feats is None:
            return {}
        return {"K_used": self.effective_k(self.K), "train_features": int(self.train_feats.shape[0])}

    def set_hyperparam(self, values: list[Any]) -> None:
        """``values = [K]``.

        Raises:
            ValueError: K not a positive integer.
        """
        self.K = self._checked(values[0])

    def get_hyperparam(self) -> list[Any]:
        return [self.K]

    def _queries(self, features: Features) -> list[Tensor]:
        """The normalised query features [B, D]: one (``feats``), or one per MC sample for Bayes-H with
        ``mc``."""
        assert self.train_feats is not None
        device = self.train_feats.device
        if self.mc and features.space == "H":
            return [l2_normalised(h.to(device)) for h in features.get("samples", self.name)]
        return [l2_normalised(features.get("feats", self.name).to(device))]

    def score(self, features: Features) -> tuple[Tensor, Tensor]:
        """Score one batch.

        Args:
            features: reads ``logits`` [B, C] and ``feats`` [B, D].

        Returns:
            ``pred`` int64 [B] (argmax of the logits) and ``conf`` float64 [B] (on the fit's device).

        Raises:
            NotFittedError: before ``fit``.
        """
        self.check_fitted()
        assert self.train_feats is not None
        dists = [
            kth_nearest_distance(
                z,
                self.train_feats,
                self.effective_k(self.K) - 1,
                query_chunk=self.query_chunk,
                key_chunk=self.train_chunk,
                key_sq_norms=self.train_sq_norms,
            )
            for z in self._queries(features)
        ]
        return features.logits.argmax(dim=1), -mean_of(dists)

    def score_candidates(self, features: Features, candidates: list[list[Any]]) -> list[tuple[Tensor, Tensor]]:
        """Every candidate ``[K]`` of a search from one scan of the training set that keeps the max(K) nearest
        (:func:`~src.ood.detectors.edsimk.kth_nearest_distances`); each equals ``set_hyperparam`` then ``score``."""
        self.check_fitted()
        assert self.train_feats is not None
        ranks = [self.effective_k(self._checked(c[0])) - 1 for c in candidates]
        per_query = [
            kth_nearest_distances(
                z,
                self.train_feats,
                ranks,
                query_chunk=self.query_chunk,
                key_chunk=self.train_chunk,
                key_sq_norms=self.train_sq_norms,
            )
            for z in self._queries(features)
        ]
        pred = features.logits.argmax(dim=1)
        return [(pred, -mean_of([d[i] for d in per_query])) for i in range(len(candidates))]
