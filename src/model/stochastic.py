"""The Gaussian head shared by Bayes-H and Bayes-Z, MC sampling and the KL-style term.

The two Bayesian models differ only in where this head sits: on the encoder output (Bayes-H) or
on the projector output (Bayes-Z).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Normal

from src.utils.distribution import log_normal_diag
from src.utils.precision import at_least_fp32, autocast_off

MIN_MU: float = -20.0
MAX_MU: float = 20.0
MIN_SIGMA: float = 0.01
MAX_SIGMA: float = 5.0
MIN_LOG_VAR: float = 2 * math.log(MIN_SIGMA)  # -9.210340371976182
MAX_LOG_VAR: float = 2 * math.log(MAX_SIGMA)  # 3.2188758248682006


class GaussianHead(nn.Module):
    """Diagonal Gaussian q(· | u) = N(mu, diag(sigma^2)) from a pre-activation u [B, in].

        mu      = clamp(fc_mu(u), -20, 20)
        log_var = clamp(fc_log_var(u), 2 ln 0.01, 2 ln 5)      # sigma in [0.01, 5]

    Clamped entries get zero gradient (torch.clamp), as in the reference.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc_mu = nn.Linear(in_dim, out_dim)
        self.fc_log_var = nn.Linear(in_dim, out_dim)

    def forward(self, u: Tensor) -> tuple[Tensor, Tensor]:
        mu = torch.clamp(self.fc_mu(u), MIN_MU, MAX_MU)
        log_var = torch.clamp(self.fc_log_var(u), MIN_LOG_VAR, MAX_LOG_VAR)
        return mu, log_var


def sample(mu: Tensor, log_var: Tensor, mc_samples: int) -> Tensor:
    """Reparameterised draws mu + sigma * eps, shape [M, B, D] (the sample dimension first).

    Computed in fp32 even under fp16 autocast (the reference drew eps in fp16 and promoted
    the samples to fp32; T-Q30).
    """
    mu = at_least_fp32(mu)
    std = torch.exp(0.5 * at_least_fp32(log_var))
    eps = torch.randn((mc_samples, *mu.shape), device=mu.device, dtype=mu.dtype)
    return mu + std * eps


def distribution(mu: Tensor, log_var: Tensor) -> Normal:
    """q as a torch Normal, without argument validation (validation would sync the host)."""
    return Normal(at_least_fp32(mu), torch.exp(0.5 * at_least_fp32(log_var)), validate_args=False)


def kl_term(samples: Tensor, mu: Tensor, log_var: Tensor, prior: nn.Module) -> Tensor:
    """The reference's KL-style regulariser for one view, a scalar.

        log q̄_{b,d} = (1/M) sum_m log N(s_{m,b,d}; mu_{b,d}, exp(log_var_{b,d}))
        log p̄_{b,d} = prior.log_prob(s)_{b,d}
        KL̂ = (1/B) sum_b sum_d (log q̄_{b,d} - log p̄_{b,d})

    ``samples`` [M, B, D] are the ones fed to the contrastive loss (no extra draw).
    """
    with autocast_off(samples):
        samples = at_least_fp32(samples)
        log_q = log_normal_diag(samples, at_least_fp32(mu), at_least_fp32(log_var), reduction="avg", dim=0)
        log_p = prior.log_prob(samples)
        return (log_q - log_p).sum(-1).mean()


def moment_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """(mean of all entries, per-row unbiased std across features averaged over rows)."""
    return x.mean(), x.std(dim=-1).mean()
