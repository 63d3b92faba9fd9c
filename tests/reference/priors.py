"""The priors' log densities and the KL-style regulariser, written from the formulas (T-Q11, T-Q12).

Every function takes MC samples ``x`` [M, B, D] and averages over the M samples with a Python loop.
The MoG log density is the reference's per-dimension mixture with the MC mean *inside* the
log-sum-exp, evaluated here the straightforward way (materialising every component for every sample);
``*_scalar`` variants are float64 ``math.fsum`` oracles for numerical-stability tests.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)


def log_normal(x: Tensor, mu: Tensor, log_var: Tensor) -> Tensor:
    """Element-wise log N(x; mu, exp(log_var)) = -1/2 (ln 2 pi + log_var + exp(-log_var) (x - mu)^2)."""
    return -0.5 * (LOG_2PI + log_var + torch.exp(-log_var) * (x - mu) ** 2)


def standard_log_prob(x: Tensor) -> Tensor:
    """log p̄[b, d] = (1/M) sum_m log N(x[m, b, d]; 0, 1), shape [B, D]."""
    m = x.shape[0]
    return sum(-0.5 * LOG_2PI - 0.5 * x[i] ** 2 for i in range(m)) / m


def mog_log_prob(x: Tensor, means: Tensor, log_vars: Tensor, w: Tensor) -> Tensor:
    """log p̄[b, d] = log sum_k softmax(w)_k exp( (1/M) sum_m log N(x[m, b, d]; means[k, d], exp(log_vars[k, d])) ).

    Step by step as the reference: per sample the [K, B, D] component densities, stacked to
    [M, K, B, D], averaged over M, plus log pi, log-sum-exp over K.
    """
    per_sample = [log_normal(x[i][None], means[:, None, :], log_vars[:, None, :]) for i in range(x.shape[0])]
    avg = torch.stack(per_sample).mean(0)  # [K, B, D]
    log_pi = torch.log_softmax(w.reshape(-1), dim=0)[:, None, None]
    return torch.logsumexp(avg + log_pi, dim=0)


def _scalar_log_normal(x: float, mu: float, log_var: float) -> float:
    return -0.5 * (LOG_2PI + log_var + math.exp(-log_var) * (x - mu) ** 2)


def standard_log_prob_scalar(x: Tensor) -> Tensor:
    """:func:`standard_log_prob`, one float64 scalar at a time."""
    m, b, d = x.shape
    xs = x.double().tolist()
    rows = [
        [math.fsum(-0.5 * LOG_2PI - 0.5 * xs[i][bi][di] ** 2 for i in range(m)) / m for di in range(d)]
        for bi in range(b)
    ]
    return torch.tensor(rows, dtype=torch.float64)


def mog_log_prob_scalar(x: Tensor, means: Tensor, log_vars: Tensor, w: Tensor) -> Tensor:
    """:func:`mog_log_prob`, one float64 scalar at a time with a stable log-sum-exp."""
    m, b, d = x.shape
    k = means.shape[0]
    xs, mus, lvs = x.double().tolist(), means.double().tolist(), log_vars.double().tolist()
    ws = w.double().reshape(-1).tolist()
    w_max = max(ws)
    log_norm = w_max + math.log(math.fsum(math.exp(wi - w_max) for wi in ws))
    rows = []
    for bi in range(b):
        row = []
        for di in range(d):
            terms = []
            for ki in range(k):
                avg = math.fsum(_scalar_log_normal(xs[i][bi][di], mus[ki][di], lvs[ki][di]) for i in range(m)) / m
                terms.append(ws[ki] - log_norm + avg)
            t_max = max(terms)
            row.append(t_max + math.log(math.fsum(math.exp(t - t_max) for t in terms)))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


def prior_log_prob(key: str, prior: Any, x: Tensor) -> Tensor:
    """The reference log p̄ [B, D] of registered prior ``key`` (its parameters taken from ``prior``).

    Raises:
        KeyError: no reference is written for ``key`` (add one here).
    """
    if key == "standard":
        return standard_log_prob(x)
    if key == "mog":
        return mog_log_prob(x, prior.means, prior.log_vars, prior.w)
    raise KeyError(key)


def kl_term(samples: Tensor, mu: Tensor, log_var: Tensor, log_prior: Tensor) -> Tensor:
    """The KL-style term of one view, a scalar:

        log q̄[b, d] = (1/M) sum_m log N(s[m, b, d]; mu[b, d], exp(log_var[b, d]))
        KL̂ = (1/B) sum_b sum_d (log q̄[b, d] - log p̄[b, d])

    ``log_prior`` is log p̄ [B, D] of the same samples (see :func:`prior_log_prob`).
    """
    m = samples.shape[0]
    log_q = sum(log_normal(samples[i], mu, log_var) for i in range(m)) / m
    return (log_q - log_prior).sum(-1).mean()
