"""``edsimk``: negative distance to the (K+1)-th nearest training feature (O-Q9).

The fit stores the ``feats`` of all N ID training images. For a test feature ``x``:

    d_(0) ≤ d_(1) ≤ … ≤ d_(N−1)   the Euclidean distances ‖x − x_i‖ sorted ascending
    conf(x) = −d_(K)              (K is a 0-based index: K = 0 → nearest, K = 1 → second nearest)
    pred(x) = argmax_k f_k(x)

in float64 (the reference used scipy ``cdist`` on CPU and a full sort). Here the squared distances
``‖x‖² + ‖x_i‖² − 2 x·x_i`` are computed on the network's device in blocks of test × training
rows, keeping a running set of the K+1 smallest per test row (``topk`` per block, then ``topk``
of the union), so no N × M matrix is ever formed; the returned distance to the selected (K+1)-th
neighbour is then recomputed directly as ‖x − x_i‖, which removes the expansion's cancellation
error (cdist precision; e.g. exactly 0 for a duplicate).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from src.ood.detectors import register
from src.ood.detectors.base import Detector
from src.ood.detectors.mds import log_training_accuracy
from src.ood.features import Features


def kth_nearest_distance(
    queries: Tensor,
    keys: Tensor,
    k_index: int,
    query_chunk: int = 1024,
    key_chunk: int = 8192,
    key_sq_norms: Tensor | None = None,
) -> Tensor:
    """Distance from each query to its ``(k_index+1)``-th nearest key, in float64.

    Memory is O(query_chunk · max(key_chunk, k_index+1)); the result equals sorting each row of
    ``cdist(queries, keys)`` and taking column ``k_index``.

    Args:
        queries: ``x`` [M, D].
        keys: ``x_i`` [N, D] (on the queries' device).
        k_index: 0-based rank ``K`` of the neighbour.
        query_chunk: query rows per block.
        key_chunk: key rows per block.
        key_sq_norms: precomputed ``‖x_i‖²`` [N] float64 (computed here if None).

    Returns:
        float64 [M] distances.

    Raises:
        ValueError: ``k_index`` is negative or not smaller than N, or a chunk size is not positive.
    """
    # one rank is the several-rank scan with K + 1 neighbours kept: the same blocks and merges
    return kth_nearest_distances(queries, keys, [k_index], query_chunk, key_chunk, key_sq_norms)[0]


def kth_nearest_distances(
    queries: Tensor,
    keys: Tensor,
    k_indices: list[int],
    query_chunk: int = 1024,
    key_chunk: int = 8192,
    key_sq_norms: Tensor | None = None,
) -> list[Tensor]:
    """:func:`kth_nearest_distance` for several ranks at once: the max(K)+1 nearest keys are found in
    one scan (the same blocks, squared distances and running ``topk`` merges), then sliced per K: the
    K+1 smallest are the first K+1 of the sorted max(K)+1 smallest, and the selected neighbour is their
    ``argmax`` as in the one-K scan; its distance is recomputed directly. One float64 [M] per K.

    Raises:
        ValueError: as :func:`kth_nearest_distance`, for the largest K.
    """
    n = keys.shape[0]
    if not k_indices:
        return []
    top = max(k_indices)
    if min(k_indices) < 0:
        raise ValueError(f"K = {min(k_indices)} is negative: K is a 0-based rank")
    if top >= n:
        raise ValueError(f"K = {top} needs at least K + 1 = {top + 1} training features, got {n}")
    if query_chunk < 1 or key_chunk < 1:
        raise ValueError(f"chunk sizes must be positive, got query_chunk={query_chunk}, key_chunk={key_chunk}")
    keep = top + 1
    keys = keys.to(torch.float64)
    if key_sq_norms is None:
        key_sq_norms = (keys * keys).sum(1)
    outs = [torch.empty(queries.shape[0], dtype=torch.float64, device=queries.device) for _ in k_indices]
    for q_start in range(0, queries.shape[0], query_chunk):
        q = queries[q_start : q_start + query_chunk].to(torch.float64)
        q_sq = (q * q).sum(1, keepdim=True)
        best_d: Tensor | None = None
        best_i: Tensor | None = None
        for k_start in range(0, n, key_chunk):
            block = keys[k_start : k_start + key_chunk]
            d2 = q_sq + key_sq_norms[k_start : k_start + key_chunk].unsqueeze(0) - 2 * q @ block.T
            d, i = d2.topk(min(keep, d2.shape[1]), dim=1, largest=False)
            i += k_start
            if best_d is not None and best_i is not None:
                d, i = torch.cat([best_d, d], 1), torch.cat([best_i, i], 1)
                d, pos = d.topk(min(keep, d.shape[1]), dim=1, largest=False)
                i = i.gather(1, pos)
            best_d, best_i = d, i
        assert best_d is not None and best_i is not None
        for out, k in zip(outs, k_indices):
            col = best_d[:, : k + 1].argmax(dim=1, keepdim=True)
            kth = best_i.gather(1, col).squeeze(1)
            out[q_start : q_start + q.shape[0]] = (q - keys[kth]).norm(dim=1)
    return outs


@register
class EDSimK(Detector):
    """−‖x − x_(K)‖ with ``x_(K)`` the (K+1)-th nearest training feature; APS over ``K``.

    Args:
        K: 0-based neighbour rank (reference default 50: the 51st nearest).
        query_chunk: test rows per distance block.
        train_chunk: training rows per distance block.
        sweep: APS grid ``{"K_list": [...]}``.
        corrected_sign: unused (the sign is already "closer = more ID").
    """

    name = "edsimk"
    needs_fit = True
    reads = frozenset({"logits", "feats"})
    fit_reads = frozenset({"logits", "feats"})  # the logits feed the logged training accuracy

    def __init__(
        self,
        K: int = 50,
        query_chunk: int = 1024,
        train_chunk: int = 8192,
        sweep: dict[str, list[Any]] | None = None,
        corrected_sign: bool = False,
    ) -> None:
        super().__init__(sweep=sweep, corrected_sign=corrected_sign)
        self.K = int(K)
        self.query_chunk = int(query_chunk)
        self.train_chunk = int(train_chunk)
        self.train_feats: Tensor | None = None
        self.train_sq_norms: Tensor | None = None

    def fit(self, train: Features, labels: Tensor) -> None:
        """Store all training ``feats`` [N, D] (float64, on their device) and their squared norms."""
        log_training_accuracy(self.name, train, labels)
        self.train_feats = train.get("feats", self.name).to(torch.float64)
        self.train_sq_norms = (self.train_feats * self.train_feats).sum(1)

    def is_fitted(self) -> bool:
        return self.train_feats is not None

    def set_hyperparam(self, values: list[Any]) -> None:
        """``values = [K]``.

        Raises:
            ValueError: K negative, or (after the fit) K >= the number of training features.
        """
        k = int(values[0])
        n = None if self.train_feats is None else self.train_feats.shape[0]
        if k < 0 or (n is not None and k >= n):
            raise ValueError(f"K = {k} needs 0 <= K < the number of training features ({n})")
        self.K = k

    def get_hyperparam(self) -> list[Any]:
        return [self.K]

    def score(self, features: Features) -> tuple[Tensor, Tensor]:
        """Score one batch.

        Args:
            features: reads ``logits`` [B, C] and ``feats`` [B, D].

        Returns:
            ``pred`` int64 [B] (argmax of the logits) and ``conf`` float64 [B].

        Raises:
            NotFittedError: before ``fit``.
            ValueError: ``K`` is not smaller than the number of training features.
        """
        self.check_fitted()
        assert self.train_feats is not None
        dist = kth_nearest_distance(
            features.get("feats", self.name).to(self.train_feats.device),
            self.train_feats,
            self.K,
            query_chunk=self.query_chunk,
            key_chunk=self.train_chunk,
            key_sq_norms=self.train_sq_norms,
        )
        return features.logits.argmax(dim=1), -dist

    def score_candidates(self, features: Features, candidates: list[list[Any]]) -> list[tuple[Tensor, Tensor]]:
        """Every candidate ``[K]`` of a search from one scan of the training set (:func:`kth_nearest_distances`)."""
        self.check_fitted()
        assert self.train_feats is not None
        dists = kth_nearest_distances(
            features.get("feats", self.name).to(self.train_feats.device),
            self.train_feats,
            [int(c[0]) for c in candidates],
            query_chunk=self.query_chunk,
            key_chunk=self.train_chunk,
            key_sq_norms=self.train_sq_norms,
        )
        pred = features.logits.argmax(dim=1)
        return [(pred, -d) for d in dists]
