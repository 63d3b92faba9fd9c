"""Gaussian head, reparameterised sampling and the KL-style term against the plain references of
``tests.reference`` (the clamp formula, per-sample loops of the log densities)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor

from src.model.prior import MoGPrior, StandardPrior
from src.model.stochastic import (
    MAX_LOG_VAR,
    MAX_MU,
    MAX_SIGMA,
    MIN_LOG_VAR,
    MIN_MU,
    MIN_SIGMA,
    GaussianHead,
    kl_term,
    sample,
)
from tests.reference import priors as ref
from tests.reference.ssl_step import LOG_VAR_BOUNDS, MU_BOUNDS


def loop_kl(samples: Tensor, mu: Tensor, log_var: Tensor, prior: torch.nn.Module) -> float:
    """KL^ in float64, the prior's log density from the scalar oracle (T-Q11)."""
    s = samples.double()
    if isinstance(prior, StandardPrior):
        log_p = ref.standard_log_prob_scalar(s)
    else:
        log_p = ref.mog_log_prob_scalar(s, prior.means, prior.log_vars, prior.w)
    return float(ref.kl_term(s, mu.double(), log_var.double(), log_p))


def tensor_kl(samples: Tensor, mu: Tensor, log_var: Tensor, prior_params: dict[str, Tensor] | None) -> Tensor:
    """The same term from the per-sample tensor references (differentiable, for gradients)."""
    if prior_params is None:
        log_p = ref.standard_log_prob(samples)
    else:
        log_p = ref.prior_log_prob("mog", SimpleNamespace(**prior_params), samples)
    return ref.kl_term(samples, mu, log_var, log_p)


# ----------------------------------------------------------------------------- constants and clamps


def test_clamp_constants() -> None:
    assert (MIN_MU, MAX_MU) == (-20.0, 20.0) == MU_BOUNDS
    assert (MIN_LOG_VAR, MAX_LOG_VAR) == LOG_VAR_BOUNDS
    assert (MIN_SIGMA, MAX_SIGMA) == (0.01, 5.0)
    assert MIN_LOG_VAR == pytest.approx(-9.210340371976182, abs=1e-14)
    assert MAX_LOG_VAR == pytest.approx(3.2188758248682006, abs=1e-14)
    assert math.exp(MIN_LOG_VAR / 2) == pytest.approx(0.01) and math.exp(MAX_LOG_VAR / 2) == pytest.approx(5.0)


def test_gaussian_head_layers() -> None:
    head = GaussianHead(7, 5)
    for fc in (head.fc_mu, head.fc_log_var):
        assert isinstance(fc, torch.nn.Linear)
        assert fc.in_features == 7 and fc.out_features == 5 and fc.bias is not None
    assert set(head.state_dict()) == {"fc_mu.weight", "fc_mu.bias", "fc_log_var.weight", "fc_log_var.bias"}


def test_gaussian_head_clamps_values_and_gradients() -> None:
    """Outputs beyond the bounds are clipped and get zero gradient; the rest pass through."""
    torch.manual_seed(0)
    b, i_dim, o_dim = 16, 3, 6
    head = GaussianHead(i_dim, o_dim).double()
    with torch.no_grad():
        head.fc_mu.weight.copy_(torch.randn(o_dim, i_dim) * 15)
        head.fc_mu.bias.copy_(torch.randn(o_dim) * 10)
        head.fc_log_var.weight.copy_(torch.randn(o_dim, i_dim) * 6)
        head.fc_log_var.bias.copy_(torch.randn(o_dim) * 3 - 2)
    u = torch.randn(b, i_dim, dtype=torch.float64, requires_grad=True)
    g_mu = torch.randn(b, o_dim, dtype=torch.float64)
    g_lv = torch.randn(b, o_dim, dtype=torch.float64)

    mu, log_var = head(u)
    assert mu.shape == log_var.shape == (b, o_dim)
    (mu * g_mu + log_var * g_lv).sum().backward()

    # reference, element by element
    w_mu, b_mu = head.fc_mu.weight.detach().tolist(), head.fc_mu.bias.detach().tolist()
    w_lv, b_lv = head.fc_log_var.weight.detach().tolist(), head.fc_log_var.bias.detach().tolist()
    us = u.detach().tolist()
    mask_mu = torch.zeros(b, o_dim, dtype=torch.float64)
    mask_lv = torch.zeros(b, o_dim, dtype=torch.float64)
    clipped = {"mu": [0, 0], "lv": [0, 0]}
    for bi in range(b):
        for o in range(o_dim):
            pre_mu = math.fsum(w_mu[o][i] * us[bi][i] for i in range(i_dim)) + b_mu[o]
            pre_lv = math.fsum(w_lv[o][i] * us[bi][i] for i in range(i_dim)) + b_lv[o]
            assert mu[bi, o].item() == pytest.approx(min(max(pre_mu, -20.0), 20.0), abs=1e-10)
            assert log_var[bi, o].item() == pytest.approx(min(max(pre_lv, MIN_LOG_VAR), MAX_LOG_VAR), abs=1e-10)
            mask_mu[bi, o] = float(-20.0 < pre_mu < 20.0)
            mask_lv[bi, o] = float(MIN_LOG_VAR < pre_lv < MAX_LOG_VAR)
            clipped["mu"][pre_mu > 0] += pre_mu < -20 or pre_mu > 20
            clipped["lv"][pre_lv > 0] += pre_lv < MIN_LOG_VAR or pre_lv > MAX_LOG_VAR
    # the data must clip on both sides of both bounds and leave some entries inside
    assert min(clipped["mu"] + clipped["lv"]) > 0
    assert 0 < mask_mu.sum() < b * o_dim and 0 < mask_lv.sum() < b * o_dim

    gm, gl = g_mu * mask_mu, g_lv * mask_lv
    torch.testing.assert_close(head.fc_mu.bias.grad, gm.sum(0))
    torch.testing.assert_close(head.fc_log_var.bias.grad, gl.sum(0))
    torch.testing.assert_close(head.fc_mu.weight.grad, gm.T @ u.detach())
    torch.testing.assert_close(head.fc_log_var.weight.grad, gl.T @ u.detach())
    torch.testing.assert_close(u.grad, gm @ head.fc_mu.weight.detach() + gl @ head.fc_log_var.weight.detach())


# ----------------------------------------------------------------------------- sampling


def test_sample_shape_and_moments() -> None:
    torch.manual_seed(0)
    b, d, m = 3, 4, 40000
    mu = torch.randn(b, d) * 5
    log_var = torch.empty(b, d).uniform_(MIN_LOG_VAR, MAX_LOG_VAR)
    s = sample(mu, log_var, m)
    assert s.shape == (m, b, d) and s.dtype == torch.float32
    sigma = torch.exp(0.5 * log_var)
    # 5 standard errors
    assert ((s.mean(0) - mu).abs() <= 5 * sigma / math.sqrt(m)).all()
    assert ((s.std(0) / sigma - 1).abs() <= 5 / math.sqrt(2 * m)).all()
    # every slice is an independent draw
    assert not torch.equal(s[0], s[1])


def test_sample_single_draw_shape() -> None:
    assert sample(torch.zeros(2, 3), torch.zeros(2, 3), 1).shape == (1, 2, 3)


def test_sample_reparameterisation_gradients() -> None:
    """s = mu + exp(l/2) eps: ds/dmu = 1 and ds/dl = (s - mu)/2 for every draw."""
    torch.manual_seed(1)
    b, d, m = 4, 5, 6
    mu = (torch.randn(b, d) * 2).requires_grad_()
    log_var = torch.empty(b, d).uniform_(-4, 2).requires_grad_()
    s = sample(mu, log_var, m)
    upstream = torch.randn(m, b, d)
    (s * upstream).sum().backward()
    torch.testing.assert_close(mu.grad, upstream.sum(0))
    torch.testing.assert_close(log_var.grad, (upstream * 0.5 * (s.detach() - mu.detach())).sum(0), rtol=1e-5, atol=1e-6)


def test_sample_is_fp32_for_half_parameters() -> None:
    """T-Q30: the samples are fp32 even when mu comes out of an fp16 layer (the reference drew eps in fp16)."""
    torch.manual_seed(2)
    s = sample(torch.randn(2, 3).half(), torch.zeros(2, 3), 4)
    assert s.dtype == torch.float32


# ----------------------------------------------------------------------------- KL term


def _mog(d: int, k: int, seed: int) -> MoGPrior:
    prior = MoGPrior(latent_dim=d, num_components=k)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        prior.means.copy_(torch.randn(k, d, generator=g) * 2)
        prior.log_vars.copy_(torch.empty(k, d).uniform_(-6, 3, generator=g))
        prior.w.copy_(torch.randn(k, 1, 1, generator=g))
    return prior


@pytest.mark.parametrize("prior_name", ["standard", "mog"])
@pytest.mark.parametrize(("m", "b", "d"), [(1, 3, 4), (4, 5, 3)])
def test_kl_term_matches_loop_reference(prior_name: str, m: int, b: int, d: int) -> None:
    g = torch.Generator().manual_seed(m * 100 + b * 10 + d)
    prior = StandardPrior(latent_dim=d) if prior_name == "standard" else _mog(d, 4, seed=m + d)
    mu = torch.randn(b, d, generator=g) * 2
    log_var = torch.empty(b, d).uniform_(-5, 3, generator=g)
    samples = mu + torch.exp(0.5 * log_var) * torch.randn(m, b, d, generator=g)

    out = kl_term(samples, mu, log_var, prior)
    assert out.shape == ()
    expected = loop_kl(samples, mu, log_var, prior)
    assert out.item() == pytest.approx(expected, rel=1e-5, abs=1e-4)


@pytest.mark.parametrize("prior_name", ["standard", "mog"])
def test_kl_term_gradients_match_reference(prior_name: str) -> None:
    m, b, d = 3, 4, 5
    g = torch.Generator().manual_seed(42)
    prior = StandardPrior(latent_dim=d) if prior_name == "standard" else _mog(d, 3, seed=43)
    mu = torch.randn(b, d, generator=g)
    log_var = torch.empty(b, d).uniform_(-4, 2, generator=g)
    samples = mu + torch.exp(0.5 * log_var) * torch.randn(m, b, d, generator=g)

    leaves = [samples.clone().requires_grad_(), mu.clone().requires_grad_(), log_var.clone().requires_grad_()]
    params = list(prior.parameters())
    out = kl_term(*leaves, prior)
    fast_grads = torch.autograd.grad(out, leaves + params)

    ref_leaves = [t.double().clone().requires_grad_() for t in (samples, mu, log_var)]
    ref_params = {n: p.detach().double().clone().requires_grad_() for n, p in prior.named_parameters()}
    ref = tensor_kl(*ref_leaves, ref_params if ref_params else None)
    assert out.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-4)
    assert ref.item() == pytest.approx(loop_kl(samples, mu, log_var, prior), rel=1e-10)
    ref_grads = torch.autograd.grad(ref, ref_leaves + list(ref_params.values()))
    names = ["samples", "mu", "log_var", *ref_params]
    assert len(fast_grads) == len(ref_grads) == len(names)
    for name, gf, gr in zip(names, fast_grads, ref_grads):
        scale = max(1.0, gr.abs().max().item())
        torch.testing.assert_close(gf.double(), gr, rtol=1e-4, atol=1e-5 * scale, msg=name)


def test_kl_term_with_standard_prior_estimates_the_closed_form_kl() -> None:
    """Standard prior: unbiased MC estimate of KL(N(mu, s^2) || N(0, 1)) summed over dims, batch-averaged."""
    torch.manual_seed(7)
    b, d, m = 4, 3, 50000
    mu = torch.randn(b, d)
    log_var = torch.empty(b, d).uniform_(-2, 1.5)
    samples = sample(mu, log_var, m)
    estimate = kl_term(samples, mu, log_var, StandardPrior(latent_dim=d)).item()
    closed = (0.5 * (torch.exp(log_var) + mu**2 - 1 - log_var)).sum(-1).mean().item()
    assert estimate == pytest.approx(closed, rel=0.03, abs=0.02)


def test_kl_term_is_zero_when_q_equals_the_standard_prior() -> None:
    """With mu = 0 and log_var = 0 the two log densities cancel sample by sample."""
    torch.manual_seed(8)
    samples = torch.randn(5, 3, 4)
    zeros = torch.zeros(3, 4)
    assert kl_term(samples, zeros, zeros, StandardPrior(latent_dim=4)).item() == pytest.approx(0.0, abs=1e-6)
