"""Gaussian log-density helpers against a scalar transcription of the formula and torch.distributions."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal

from src.utils.distribution import LOG_2PI, log_normal_diag, log_standard_normal


def scalar_log_normal(x: float, mu: float, log_var: float) -> float:
    """log N(x; mu, e^log_var) = -1/2 [ln 2pi + log_var + e^-log_var (x - mu)^2], one scalar at a time."""
    return -0.5 * (math.log(2.0 * math.pi) + log_var + math.exp(-log_var) * (x - mu) ** 2)


def scalar_log_standard_normal(x: float) -> float:
    return -0.5 * math.log(2.0 * math.pi) - 0.5 * x * x


def loop_elementwise(fn, *tensors: torch.Tensor) -> torch.Tensor:
    """Apply a scalar function element by element over broadcast float64 tensors."""
    tensors = torch.broadcast_tensors(*[t.double() for t in tensors])
    flat = [t.reshape(-1).tolist() for t in tensors]
    out = [fn(*vals) for vals in zip(*flat)]
    return torch.tensor(out, dtype=torch.float64).reshape(tensors[0].shape)


def loop_reduce(values: torch.Tensor, reduction: str | None, dim: int | None) -> torch.Tensor:
    """Mean or sum over `dim` with an explicit Python loop over that axis."""
    if reduction is None:
        return values
    if dim is None:
        total = math.fsum(values.reshape(-1).tolist())
        return torch.tensor(total / values.numel() if reduction == "avg" else total, dtype=torch.float64)
    dim = dim % values.dim()
    moved = values.movedim(dim, -1)
    flat = moved.reshape(-1, moved.shape[-1]).tolist()
    out = [math.fsum(row) / (len(row) if reduction == "avg" else 1) for row in flat]
    return torch.tensor(out, dtype=torch.float64).reshape(moved.shape[:-1])


@pytest.fixture
def gaussian_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, dtype=torch.float64) * 2
    mu = torch.randn(3, 4, 5, dtype=torch.float64)
    log_var = torch.empty(3, 4, 5, dtype=torch.float64).uniform_(-6, 3)
    return x, mu, log_var


def test_log_2pi_constant() -> None:
    assert LOG_2PI == pytest.approx(1.8378770664093453, abs=1e-15)


def test_log_normal_diag_elementwise_matches_scalar_loop(gaussian_inputs) -> None:
    x, mu, log_var = gaussian_inputs
    expected = loop_elementwise(scalar_log_normal, x, mu, log_var)
    actual = log_normal_diag(x, mu, log_var)
    assert actual.shape == x.shape and actual.dtype == torch.float64
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    # reduction=None is the explicit spelling of "no reduction", whatever dim says
    torch.testing.assert_close(log_normal_diag(x, mu, log_var, reduction=None, dim=1), expected, rtol=1e-12, atol=1e-12)


def test_log_normal_diag_matches_torch_normal(gaussian_inputs) -> None:
    x, mu, log_var = gaussian_inputs
    expected = Normal(mu, torch.exp(0.5 * log_var)).log_prob(x)
    torch.testing.assert_close(log_normal_diag(x, mu, log_var), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("reduction", ["avg", "sum"])
@pytest.mark.parametrize("dim", [0, 1, 2, -1, None])
def test_log_normal_diag_reductions(gaussian_inputs, reduction: str, dim: int | None) -> None:
    x, mu, log_var = gaussian_inputs
    expected = loop_reduce(loop_elementwise(scalar_log_normal, x, mu, log_var), reduction, dim)
    actual = log_normal_diag(x, mu, log_var, reduction=reduction, dim=dim)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_log_normal_diag_broadcasts_samples_against_parameters() -> None:
    """Samples [M, B, D] against parameters [B, D], averaged over M (the KL-term usage)."""
    torch.manual_seed(1)
    m, b, d = 4, 3, 5
    s = torch.randn(m, b, d, dtype=torch.float64)
    mu = torch.randn(b, d, dtype=torch.float64)
    log_var = torch.empty(b, d, dtype=torch.float64).uniform_(-3, 2)
    expected = torch.empty(b, d, dtype=torch.float64)
    for bi in range(b):
        for di in range(d):
            vals = [
                scalar_log_normal(s[mi, bi, di].item(), mu[bi, di].item(), log_var[bi, di].item()) for mi in range(m)
            ]
            expected[bi, di] = math.fsum(vals) / m
    torch.testing.assert_close(
        log_normal_diag(s, mu, log_var, reduction="avg", dim=0), expected, rtol=1e-12, atol=1e-12
    )


def test_log_normal_diag_gradients_match_analytic(gaussian_inputs) -> None:
    x, mu, log_var = (t.clone().requires_grad_() for t in gaussian_inputs)
    log_normal_diag(x, mu, log_var, reduction="sum").backward()
    prec = torch.exp(-log_var.detach())
    diff = (x - mu).detach()
    torch.testing.assert_close(x.grad, -prec * diff)
    torch.testing.assert_close(mu.grad, prec * diff)
    torch.testing.assert_close(log_var.grad, -0.5 * (1 - prec * diff**2))


def test_log_normal_diag_float32_tolerance(gaussian_inputs) -> None:
    x, mu, log_var = gaussian_inputs
    expected = loop_elementwise(scalar_log_normal, x, mu, log_var)
    actual = log_normal_diag(x.float(), mu.float(), log_var.float())
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual.double(), expected, rtol=1e-5, atol=1e-5)


def test_log_standard_normal_matches_scalar_loop_and_torch() -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 3, 4, dtype=torch.float64) * 3
    expected = loop_elementwise(scalar_log_standard_normal, x)
    torch.testing.assert_close(log_standard_normal(x), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(log_standard_normal(x), Normal(0.0, 1.0).log_prob(x), rtol=1e-10, atol=1e-10)
    zeros = torch.zeros_like(x)
    torch.testing.assert_close(log_standard_normal(x), log_normal_diag(x, zeros, zeros), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(log_standard_normal(x.float()).double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reduction", ["avg", "sum"])
@pytest.mark.parametrize("dim", [0, 1, -1, None])
def test_log_standard_normal_reductions(reduction: str, dim: int | None) -> None:
    torch.manual_seed(3)
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    expected = loop_reduce(loop_elementwise(scalar_log_standard_normal, x), reduction, dim)
    actual = log_standard_normal(x, reduction=reduction, dim=dim)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_log_standard_normal_gradient() -> None:
    x = torch.linspace(-3, 3, 13, dtype=torch.float64, requires_grad=True)
    log_standard_normal(x, reduction="sum").backward()
    torch.testing.assert_close(x.grad, -x.detach())


@pytest.mark.parametrize("reduction", ["mean", "Mean", "AVG", "none", "", "max", "prod"])
def test_unknown_reduction_raises(reduction: str) -> None:
    """T-Q21: only "avg"/"sum"/None are reductions; anything else (including "mean") is an error."""
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError):
        log_normal_diag(x, x, x, reduction=reduction, dim=0)
    with pytest.raises(ValueError):
        log_standard_normal(x, reduction=reduction, dim=0)
