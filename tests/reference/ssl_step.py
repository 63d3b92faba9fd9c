"""One SSL training step computed the reference's way, on a project model's own layers and weights.

The encoder runs once per view; the Gaussian head is the clamp formula; the M reparameterised draws
come from ``torch.randn`` in the same order as the project draws them (so a seeded run sees the same
noise); Bayes-H's projector is mapped over the M sample slices one at a time (per-slice BatchNorm
statistics, M running-statistics updates per view); the MC loss is a loop over the M sample pairs
(:mod:`tests.reference.losses`) and the KL-style term a loop over the samples
(:mod:`tests.reference.priors`). Used by the tests of the three models and by ``benchmarks/train_step.py``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from src.model.loss import LOSSES
from src.model.prior import PRIORS
from tests.reference.losses import reference_loss
from tests.reference.priors import kl_term, prior_log_prob

MU_BOUNDS = (-20.0, 20.0)
LOG_VAR_BOUNDS = (2 * math.log(0.01), 2 * math.log(5.0))  # sigma in [0.01, 5]


def registry_key(registry: Any, obj: nn.Module) -> str:
    """The name under which ``type(obj)`` is registered."""
    return next(k for k, cls in registry.items() if cls is type(obj))


def gaussian(fc_mu: nn.Module, fc_log_var: nn.Module, u: Tensor, mc_samples: int) -> tuple[Tensor, Tensor, Tensor]:
    """(samples [M, B, D], mu, log_var): clamped head outputs and mu + exp(log_var / 2) eps, eps ~ N(0, I).

    The noise is drawn in fp32 (as the project does; the reference drew it in mu's dtype, T-Q30).
    """
    mu = torch.clamp(fc_mu(u), *MU_BOUNDS).float()
    log_var = torch.clamp(fc_log_var(u), *LOG_VAR_BOUNDS).float()
    eps = torch.randn(mc_samples, *mu.shape, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * log_var) * eps, mu, log_var


def project_per_slice(projector: nn.Module, h: Tensor) -> Tensor:
    """The projector applied to each MC slice h[m] [B, L] in turn, stacked to [M, B, Z]."""
    return torch.stack([projector(h[m]) for m in range(h.shape[0])])


def loss_terms(model: Any, z1: Tensor, z2: Tensor) -> dict[str, Tensor]:
    """The model's configured contrastive loss, the reference's way, in fp32 with autocast off (T-Q30)."""
    with torch.autocast(device_type=z1.device.type, enabled=False):
        return reference_loss(registry_key(LOSSES, model.cl_loss), model.cl_loss, z1.float(), z2.float())


def reference_step(model: Any, batch: Any) -> dict[str, Tensor]:
    """The step's loss terms (``loss``, the contrastive terms and, for Bayes models, the KL terms).

    ``model`` is an SSL model of the project (any of ``SSL_MODELS``); its layers and weights are used,
    its batched code paths are not.
    """
    (x1, x2, _), _ = batch
    projector = model.projection_head.layers  # the plain nn.Sequential, applied to [B, D] only
    space = model.stochastic_space
    if space is None:
        out = loss_terms(model, projector(model.encoder(x1)), projector(model.encoder(x2)))
        out["loss"] = out["cl_loss"]
        return out
    m = int(model.hparams["mc_samples"])
    views = []
    for x in (x1, x2):
        u = model.encoder(x)
        if space == "Z":
            u = projector(u)
        views.append(gaussian(model.fc_mu, model.fc_log_var, u, m))
    if space == "H":
        z1, z2 = (project_per_slice(projector, s) for s, _, _ in views)
    else:
        z1, z2 = views[0][0], views[1][0]
    out = loss_terms(model, z1, z2)
    prior_key = registry_key(PRIORS, model.prior)
    with torch.autocast(device_type=x1.device.type, enabled=False):
        kls = [kl_term(s, mu, lv, prior_log_prob(prior_key, model.prior, s)) for s, mu, lv in views]
    out["kl_prior_loss"] = 0.5 * (kls[0] + kls[1])
    out["weighted_kl_prior_loss"] = float(model.hparams["beta_scale"]) * out["kl_prior_loss"]
    out["loss"] = out["cl_loss"] + out["weighted_kl_prior_loss"]
    return out
