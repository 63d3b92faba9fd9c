"""``kldivsimk``: (K+1)-th smallest KL divergence to the training posteriors (spec: ood.md §11.9, §14, Q8, Q9, Q22).

Setup stores the posteriors ``q_i = N(μ_i, diag(σ_i²))``, ``σ_i² = exp(ℓ_i)``, of the plain views v3
of all ID training images. A test image (v3) with posterior ``q_x = N(m, diag(s²))`` scores

    KL_i = KL(q_i ‖ q_x) = ½ Σ_d [ σ_{i,d}²/s_d² + (μ_{i,d} − m_d)²/s_d² − 1 − ln(σ_{i,d}²/s_d²) ]
    conf = the element at 0-based index K of sort_ascending(KL_1 … KL_N)      (the (K+1)-th smallest)

(training posterior FIRST; NaN → 65504, the float16 maximum; ±∞ → the float32 extremes, as
``torch.nan_to_num`` does in the reference's float32 code), NOT negated: a larger divergence
counts as *more* in-distribution (Q8). ``pred`` = argmax of the v3 logits.

Vectorised with two GEMMs per (training chunk, test chunk): with ``w = 1/s²`` and the per-training
constant ``a_i = Σ_d ln σ_{i,d}²``,

    2·KL_{x,i} = w_x·(σ_i² + μ_i²) − 2 (m_x ⊙ w_x)·μ_i + Σ_d m_d² w_d + Σ_d ln s_d² − D − a_i

in float64 (σ can be 0.01, so w reaches 10⁴ while |μ| ≤ 20: float32 would cancel catastrophically).
Memory stays bounded: test rows are processed in chunks, and for each a running set of the K+1
smallest values is merged with every training chunk by ``topk``; no N_train × N_test matrix exists.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from src.ood.detectors import register
from src.ood.detectors.base import Batch, Data, Detector, plain_view
from src.ood.detectors.sigmamean import posterior
from src.ood.wrapper import OODNetwork

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
    uses_augmented_views = False  # v3 only (Quirk Q31)
    reference_sign_inverted = True

    def __init__(
        self,
        K: int = 50,
        train_chunk_size: int = 8192,
        test_chunk_size: int = 1024,
        sweep: dict[str, list[Any]] | None = None,
        corrected_sign: bool = False,
    ) -> None:
        super().__init__(sweep=sweep, corrected_sign=corrected_sign)
        #: training posteriors [N, D] (μ_i, ℓ_i) of the plain views; None before setup
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

    @torch.no_grad()
    def setup(self, net: OODNetwork, train_batches: Iterable[Batch]) -> None:
        """Collect the posteriors (μ_i, ℓ_i) [N, D] of the training plain views v3 (on ``net.device``).

        Raises:
            ValueError: a model without a stochastic space, or no training data.
        """
        mus, log_vars = [], []
        for data, _ in train_batches:
            _, mu, log_var = posterior(net, plain_view(data).to(net.device), self.name)
            mus.append(mu)
            log_vars.append(log_var)
        if not mus:
            raise ValueError("kldivsimk: setup received no training batches")
        self.train_mu = torch.cat(mus)
        self.train_log_var = torch.cat(log_vars)
        # the float64 training side is the same for every scored batch: computed once
        self._train_terms = training_terms(self.train_mu, self.train_log_var, self.train_mu.device)

    def set_hyperparam(self, values: list[Any]) -> None:
        """``values = [K]`` (sweep key ``K_list``).

        Raises:
            ValueError: K negative, or (after setup) K >= the number of training posteriors.
        """
        self.K = self._check_k(values[0])

    def get_hyperparam(self) -> list[Any]:
        return [self.K]

    @torch.no_grad()
    def score(self, net: OODNetwork, data: Data) -> tuple[Tensor, Tensor]:
        """Score one batch.

        Args:
            net: a Bayes-H or Bayes-Z network; one call on v3 with ``return_dist=True``.
            data: the three views ``[v1, v2, v3]``, each [B, 3, H, W] (only v3 is used), or v3 itself.

        Returns:
            ``pred`` int64 [B] and ``conf`` float32 [B], the (K+1)-th smallest KL.

        Raises:
            RuntimeError: before ``setup``.
            ValueError: K >= the number of training posteriors, or a model without a stochastic space.
        """
        if self.train_mu is None or self.train_log_var is None:
            raise RuntimeError("kldivsimk: call setup(net, train_batches) before scoring")
        logits, mu, log_var = posterior(net, plain_view(data).to(net.device), self.name)
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
        return logits.argmax(dim=1).long(), conf
