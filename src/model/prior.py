"""Priors over the stochastic embedding (``PRIORS``, by ``model.prior.name``; T-Q11, T-Q12).

Both priors take MC samples ``x`` of shape [M, B, D] and return log p̄ of shape [B, D],
the MC dimension already averaged (that is how the reference's KL-style term uses them).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from src.utils.distribution import LOG_2PI, log_standard_normal
from src.utils.registry import Registry

#: the priors, by ``model.prior.name`` (configs use ``_target_``); ``latent_dim`` is set by the model
PRIORS: Registry[type[nn.Module]] = Registry("prior", config_key="model.prior")


def _check_samples(x: Tensor, latent_dim: int, name: str) -> None:
    if x.dim() != 3 or x.shape[-1] != latent_dim:
        raise ValueError(f"{name}.log_prob expects samples [mc_samples, batch, {latent_dim}], got {tuple(x.shape)}")


@PRIORS.register("standard")
class StandardPrior(nn.Module):
    """N(0, I). ``log_prob(x)[b, d] = (1/M) sum_m log N(x[m, b, d]; 0, 1)``."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = int(latent_dim)

    def log_prob(self, x: Tensor) -> Tensor:
        _check_samples(x, self.latent_dim, type(self).__name__)
        return log_standard_normal(x, reduction="avg", dim=0)

    def sample(self, n: int, device: torch.device | str | None = None) -> Tensor:
        """``n`` standard-normal draws [n, D] on ``device`` (unused in training)."""
        return torch.randn(n, self.latent_dim, device=device)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}"


@PRIORS.register("mog")
class MoGPrior(nn.Module):
    """The reference's per-dimension mixture of K Gaussians with the MC mean inside the log-sum-exp.

        log p(x)_{b,d} = log sum_k pi_k exp( (1/M) sum_m log N(x_{m,b,d}; means_{k,d}, exp(log_vars_{k,d})) )

    with pi = softmax(w) over K. This is not a joint mixture density (T-Q11); it is
    reproduced exactly, including the N(0, 1) initialisation of *both* ``means`` and
    ``log_vars`` and zero-initialised ``w`` of shape [K, 1, 1].

    The MC average is computed without materialising [M, K, B, D]: for each component,
    (1/M) sum_m (x_m - mu_k)^2 = var_M(x) + (mean_M(x) - mu_k)^2 (biased variance), which
    is exact and numerically stable, so memory is [K, B, D].
    """

    def __init__(self, latent_dim: int, num_components: int = 10) -> None:
        super().__init__()
        if int(num_components) < 1:
            raise ValueError(f"MoGPrior: num_components must be >= 1, got {num_components}")
        self.latent_dim = int(latent_dim)
        self.num_components = int(num_components)
        self.means = nn.Parameter(torch.randn(self.num_components, self.latent_dim))
        self.log_vars = nn.Parameter(torch.randn(self.num_components, self.latent_dim))
        self.w = nn.Parameter(torch.zeros(self.num_components, 1, 1))

    def log_prob(self, x: Tensor) -> Tensor:
        _check_samples(x, self.latent_dim, type(self).__name__)
        x_mean = x.mean(0)  # [B, D]
        x_var = (x - x_mean).pow(2).mean(0)  # [B, D], biased over M
        means = self.means.unsqueeze(1)  # [K, 1, D]
        log_vars = self.log_vars.unsqueeze(1)
        sq = x_var + (x_mean - means).pow(2)  # [K, B, D]
        avg_log_n = -0.5 * (LOG_2PI + log_vars + torch.exp(-log_vars) * sq)
        log_pi = torch.log_softmax(self.w, dim=0)  # [K, 1, 1]
        return torch.logsumexp(avg_log_n + log_pi, dim=0)

    def sample(self, n: int) -> Tensor:
        """Draws from the mixture with std = exp(log_var / 2) (corrected; T-Q12)."""
        pi = torch.softmax(self.w.view(-1), 0)
        k = torch.multinomial(pi, n, replacement=True)
        eps = torch.randn(n, self.latent_dim, device=self.means.device)
        return self.means[k] + torch.exp(0.5 * self.log_vars[k]) * eps

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, num_components={self.num_components}"


def build_prior(spec: dict[str, Any] | None, latent_dim: int) -> nn.Module:
    """Build a prior from plain values (the composed ``model.prior`` node as a dict).

    ``latent_dim`` is always set by the model (L for Bayes-H, Z for Bayes-Z), as the
    reference overrides it at build time. ``None`` means the standard prior.
    """
    return PRIORS.build(dict(spec or {"name": "standard"}), latent_dim=latent_dim)
