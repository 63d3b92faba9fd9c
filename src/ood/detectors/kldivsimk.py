"""``kldivsimk``: (K+1)-th smallest KL divergence to the training posteriors (O-Q8, O-Q9, O-Q22).

The fit stores the posteriors ``q_i = N(μ_i, diag(σ_i²))``, ``σ_i² = exp(ℓ_i)``, of the plain views v3
of all ID training images. A test image (v3) with posterior ``q_x = N(m, diag(s²))`` scores

    KL_i = KL(q_i ‖ q_x) = ½ Σ_d [ σ_{i,d}²/s_d² + (μ_{i,d} − m_d)²/s_d² − 1 − ln(σ_{i,d}²/s_d²) ]
    conf = the element at 0-based index K of sort_ascending(KL_1 … KL_N)      (the (K+1)-th smallest)

(training posterior FIRST; NaN → 65504, the float16 maximum; ±∞ → the float32 extremes, as
``torch.nan_to_num`` does in the reference's float32 code), NOT negated: a larger divergence
counts as *more* in-distribution (O-Q8). ``pred`` = argmax of the v3 logits.

Vectorised with two GEMMs per (training chunk, test chunk): with ``w = 1/s²`` and the per-training
constant ``a_i = Σ_d ln σ_{i,d}²``,

    2·KL_{x,i} = w_x·(σ_i² + μ_i²) − 2 (m_x ⊙ w_x)·μ_i + Σ_d m_d² w_d + Σ_d ln s_d² − D − a_i

in float64 (σ can be 0.01, so w reaches 10⁴ while |μ| ≤ 20: float32 would cancel catastrophically).
Memory stays bounded: test rows are processed in chunks, and for each a running set of the K+1
smallest values is merged with every training chunk by ``topk``; no N_train × N_test matrix exists.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from src.ood.detectors import register
from src.ood.detectors.base import Detector
from src.ood.features import Features

#: the reference's NaN replacement, torch.finfo(torch.float16).max
NAN_VALUE: float = 65504.0
_F32 = torch.finfo(torch.float32)


def kth_smallest_kl(
    train_mu: Tensor,
    train_log_var: Tensor,
    mu: Tensor,
    log_var: Tensor,
    k: int,
    train_chunk_size: int = 8192,
    test_chunk_size: int = 1024,
    train_terms: tuple[Tensor, Tensor, Tensor] | None = None,
) -> Tensor:
    """The value at 0-based index ``k`` of the ascending ``KL(q_i ‖ q_x)`` over i, per test row.

    Args:
        train_mu, train_log_var: training posteriors [N, D] (log-variances ℓ_i).
        mu, log_var: test posteriors [B, D].
        k: 0-based index into the ascending order; ``0 <= k < N``.
        train_chunk_size, test_chunk_size: rows per chunk (memory ~ test_chunk × (train_chunk + k + 1)).
        train_terms: :func:`training_terms` of the training posteriors on ``mu``'s device, when the
            caller scores many batches against the same training set (computed here otherwise).

    Returns:
        [B] float32 on the device of ``mu`` (float64 arithmetic, NaN → 65504, ±∞ → float32 extremes).

    Raises:
        ValueError: ``k`` out of range, mismatched shapes, or non-positive chunk sizes.
    """
    n, d = train_mu.shape
    if train_log_var.shape != (n, d) or mu.dim() != 2 or mu.shape[1] != d or log_var.shape != mu.shape:
        raise ValueError(
            f"kldivsimk: posterior shapes do not match: train {tuple(train_mu.shape)}/{tuple(train_log_var.shape)}, "
            f"test {tuple(mu.shape)}/{tuple(log_var.shape)}"
        )
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < n:
        raise ValueError(f"kldivsimk: K={k!r} must be an integer in [0, {n}) (the number of training posteriors)")
    if train_chunk_size < 1 or test_chunk_size < 1:
        raise ValueError("kldivsimk: chunk sizes must be >= 1")
    device = mu.device
    out = torch.empty(mu.shape[0], dtype=torch.float32, device=device)
    if train_terms is None:
        train_terms = training_terms(train_mu, train_log_var, device)
    train_m, train_s2m2, train_a = train_terms
    for t0 in range(0, mu.shape[0], test_chunk_size):
        m = mu[t0 : t0 + test_chunk_size].double()  # [b, D]
        lv = log_var[t0 : t0 + test_chunk_size].double()
        w = torch.exp(-lv)  # 1/s²
        mw = m * w
        const = (m * mw).sum(dim=1) + lv.sum(dim=1) - d  # [b]
        best: Tensor | None = None  # [b, <= k+1] running smallest values
        for i0 in range(0, n, train_chunk_size):
            tm = train_m[i0 : i0 + train_chunk_size]  # [c, D]
            two_kl = w @ train_s2m2[i0 : i0 + train_chunk_size].T - 2.0 * (mw @ tm.T)  # [b, c]
            kl = 0.5 * (two_kl + const[:, None] - train_a[None, i0 : i0 + train_chunk_size])
            kl = _reference_replacements(kl)
            pool = kl if best is None else torch.cat([best, kl], dim=1)
            best = torch.topk(pool, min(k + 1, pool.shape[1]), dim=1, largest=False, sorted=False).values
        assert best is not None
        out[t0 : t0 + test_chunk_size] = best.amax(dim=1).float()
    return out


def kth_smallest_kls(
    train_mu: Tensor,
    train_log_var: Tensor,
    mu: Tensor,
    log_var: Tensor,
    ks: list[int],
    train_chunk_size: int = 8192,
    test_chunk_size: int = 1024,
    train_terms: tuple[Tensor, Tensor, Tensor] | None = None,
) -> list[Tensor]:
    """:func:`kth_smallest_kl` for several indices at once: one scan keeping the max(K)+1 smallest values
    (the same chunks and arithmetic), then the (K+1)-th smallest sliced per K (a selection: the same
    values as the one-K scan). One float32 [B] per K.

    Raises:
        ValueError: as :func:`kth_smallest_kl`, for the largest K.
    """
    if not ks:
        return []
    top = max(ks)
    if any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in ks):
        raise ValueError(f"kldivsimk: every K must be a non-negative integer, got {ks!r}")
    n, d = train_mu.shape
    if train_log_var.shape != (n, d) or mu.dim() != 2 or mu.shape[1] != d or log_var.shape != mu.shape:
        raise ValueError(
            f"kldivsimk: posterior shapes do not match: train {tuple(train_mu.shape)}/{tuple(train_log_var.shape)}, "
            f"test {tuple(mu.shape)}/{tuple(log_var.shape)}"
        )
    if not top < n:
        raise ValueError(f"kldivsimk: K={top!r} must be an integer in [0, {n}) (the number of training posteriors)")
    if train_chunk_size < 1 or test_chunk_size < 1:
        raise ValueError("kldivsimk: chunk sizes must be >= 1")
    device = mu.device
    outs = [torch.empty(mu.shape[0], dtype=torch.float32, device=device) for _ in ks]
    if train_terms is None:
        train_terms = training_terms(train_mu, train_log_var, device)
    train_m, train_s2m2, train_a = train_terms
    for t0 in range(0, mu.shape[0], test_chunk_size):
        m = mu[t0 : t0 + test_chunk_size].double()
        lv = log_var[t0 : t0 + test_chunk_size].double()
        w = torch.exp(-lv)
        mw = m * w
        const = (m * mw).sum(dim=1) + lv.sum(dim=1) - d
        best: Tensor | None = None  # [b, <= max K + 1] running smallest values, ascending
        for i0 in range(0, n, train_chunk_size):
            tm = train_m[i0 : i0 + train_chunk_size]
            two_kl = w @ train_s2m2[i0 : i0 + train_chunk_size].T - 2.0 * (mw @ tm.T)
            kl = 0.5 * (two_kl + const[:, None] - train_a[None, i0 : i0 + train_chunk_size])
            kl = _reference_replacements(kl)
            pool = kl if best is None else torch.cat([best, kl], dim=1)
            best = torch.topk(pool, min(top + 1, pool.shape[1]), dim=1, largest=False, sorted=True).values
        assert best is not None
        for out, k in zip(outs, ks):
            out[t0 : t0 + test_chunk_size] = best[:, k].float()
    return outs


def training_terms(train_mu: Tensor, train_log_var: Tensor, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """The training side of the KL expansion in float64 on ``device``: ``μ_i`` [N, D],
    ``σ_i² + μ_i²`` [N, D] and ``a_i = Σ_d ln σ_{i,d}²`` [N]; shared by every test batch."""
    m = train_mu.to(device, torch.float64)
    lv = train_log_var.to(device, torch.float64)
    return m, torch.exp(lv) + m * m, lv.sum(dim=1)


def _reference_replacements(kl: Tensor) -> Tensor:
    """What ``nan_to_num(kl_float32, nan=65504)`` gives in the reference: values beyond the float32
    range (∞ in float32) become the float32 extremes, NaN becomes the float16 maximum."""
    kl = torch.nan_to_num(kl, nan=NAN_VALUE, posinf=_F32.max, neginf=_F32.min)
    return kl.clamp(min=_F32.min, max=_F32.max)


@register
class KLDivSimK(Detector):
    """(K+1)-th smallest KL(train posterior ‖ test posterior); reference sign (larger = more ID).

    Args:
        K: 0-based index into the ascending KL values (default 50: the 51st smallest).
        train_chunk_size, test_chunk_size: chunking of the KL matrix (memory only; same result).
        sweep: APS grid ``{"K_list": [...]}``.
        corrected_sign: negate ``conf`` (larger divergence = more OOD).
    """

    name = "kldivsimk"
    preprocessor = "barlowtwins"
    probabilistic = True
    reference_sign_inverted = True
    needs_fit = True
    # the plain view v3 only: the reference computed v1/v2 and discarded them (O-Q31)
    reads = frozenset({"logits", "mu", "log_var"})
    fit_reads = frozenset({"mu", "log_var"})

    def __init__(
        self,
        K: int = 50,
        train_chunk_size: int = 8192,
        test_chunk_size: int = 1024,
        sweep: dict[str, list[Any]] | None = None,
        corrected_sign: bool = False,
    ) -> None:
        super().__init__(sweep=sweep, corrected_sign=corrected_sign)
        #: training posteriors [N, D] (μ_i, ℓ_i) of the plain views; None before the fit
        self.train_mu: Tensor | None = None
        self.train_log_var: Tensor | None = None
        self._train_terms: tuple[Tensor, Tensor, Tensor] | None = None
        self.K = self._check_k(K)
        if int(train_chunk_size) < 1 or int(test_chunk_size) < 1:
            raise ValueError("kldivsimk: chunk sizes must be >= 1")
        self.train_chunk_size = int(train_chunk_size)
        self.test_chunk_size = int(test_chunk_size)

    def _check_k(self, k: Any) -> int:
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"kldivsimk: K must be a non-negative integer, got {k!r}")
        n = None if self.train_mu is None else self.train_mu.shape[0]
        if n is not None and k >= n:
            raise ValueError(f"kldivsimk: K={k} is a 0-based index, so it needs more than the {n} training posteriors")
        return k

    def fit(self, train: Features, labels: Tensor) -> None:
        """Keep the posteriors (μ_i, ℓ_i) [N, D] of the training plain views v3.

        Raises:
            MissingFeatureError: a model without a stochastic space (a ValueError).
            ValueError: no training data.
        """
        mu, log_var = train.get("mu", self.name), train.get("log_var", self.name)
        if mu.shape[0] == 0:
            raise ValueError("kldivsimk: the fit received no training posteriors")
        self.train_mu, self.train_log_var = mu, log_var
        # the float64 training side is the same for every scored batch: computed once
        self._train_terms = training_terms(self.train_mu, self.train_log_var, self.train_mu.device)

    def is_fitted(self) -> bool:
        return self.train_mu is not None and self.train_log_var is not None

    def set_hyperparam(self, values: list[Any]) -> None:
        """``values = [K]`` (sweep key ``K_list``).

        Raises:
            ValueError: K negative, or (after the fit) K >= the number of training posteriors.
        """
        self.K = self._check_k(values[0])

    def get_hyperparam(self) -> list[Any]:
        return [self.K]

    def score(self, features: Features) -> tuple[Tensor, Tensor]:
        """Score one batch.

        Args:
            features: reads ``logits`` [B, C] and the posterior ``mu``, ``log_var`` [B, D] of the plain view v3.

        Returns:
            ``pred`` int64 [B] and ``conf`` float32 [B], the (K+1)-th smallest KL.

        Raises:
            NotFittedError: before ``fit``.
            ValueError: K >= the number of training posteriors, or a model without a stochastic space.
        """
        self.check_fitted()
        assert self.train_mu is not None and self.train_log_var is not None
        mu, log_var = features.get("mu", self.name), features.get("log_var", self.name)
        conf = kth_smallest_kl(
            self.train_mu,
            self.train_log_var,
            mu,
            log_var,
            self.K,
            train_chunk_size=self.train_chunk_size,
            test_chunk_size=self.test_chunk_size,
            train_terms=self._train_terms if self._train_terms and self._train_terms[0].device == mu.device else None,
        )
        return features.logits.argmax(dim=1).long(), conf

    def score_candidates(self, features: Features, candidates: list[list[Any]]) -> list[tuple[Tensor, Tensor]]:
        """Every candidate ``[K]`` of a search from one scan of the training posteriors (:func:`kth_smallest_kls`)."""
        self.check_fitted()
        assert self.train_mu is not None and self.train_log_var is not None
        mu, log_var = features.get("mu", self.name), features.get("log_var", self.name)
        confs = kth_smallest_kls(
            self.train_mu,
            self.train_log_var,
            mu,
            log_var,
            [int(c[0]) for c in candidates],
            train_chunk_size=self.train_chunk_size,
            test_chunk_size=self.test_chunk_size,
            train_terms=self._train_terms if self._train_terms and self._train_terms[0].device == mu.device else None,
        )
        pred = features.logits.argmax(dim=1).long()
        return [(pred, c) for c in confs]
