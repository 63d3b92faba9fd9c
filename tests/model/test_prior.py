"""Priors against the plain references of ``tests.reference.priors`` (T-Q11): float64 scalar loops and
the materialised per-sample form; and a contract test over every registered prior (``PRIORS``), built
from its composed config node."""

from __future__ import annotations

import pytest
import torch

from src.model.prior import PRIORS, MoGPrior, StandardPrior, build_prior
from src.utils.plain import to_plain
from tests.conftest import CONF, compose_config
from tests.reference.priors import mog_log_prob as tensor_mog_log_prob
from tests.reference.priors import mog_log_prob_scalar as loop_mog_log_prob
from tests.reference.priors import prior_log_prob
from tests.reference.priors import standard_log_prob_scalar as loop_standard_log_prob


def randomise_mog(prior: MoGPrior, seed: int, lv_range: tuple[float, float] = (-6.0, 3.0)) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        prior.means.copy_(torch.randn(prior.means.shape, generator=g) * 2)
        prior.log_vars.copy_(torch.empty(prior.log_vars.shape).uniform_(*lv_range, generator=g))
        prior.w.copy_(torch.randn(prior.w.shape, generator=g) * 1.5)


# ----------------------------------------------------------------------------- StandardPrior


@pytest.mark.parametrize(("m", "b", "d"), [(1, 3, 4), (4, 5, 3)])
def test_standard_prior_log_prob_matches_loop(m: int, b: int, d: int) -> None:
    torch.manual_seed(m * b * d)
    x = torch.randn(m, b, d, dtype=torch.float64) * 2
    prior = StandardPrior(latent_dim=d)
    out = prior.log_prob(x)
    assert out.shape == (b, d)
    torch.testing.assert_close(out, loop_standard_log_prob(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(prior.log_prob(x.float()).double(), loop_standard_log_prob(x), rtol=1e-5, atol=1e-5)


def test_standard_prior_gradient_and_no_parameters() -> None:
    prior = StandardPrior(latent_dim=3)
    assert list(prior.parameters()) == []
    torch.manual_seed(0)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    prior.log_prob(x).sum().backward()
    torch.testing.assert_close(x.grad, -x.detach() / 4)


def test_standard_prior_sample_shape() -> None:
    torch.manual_seed(0)
    s = StandardPrior(latent_dim=6).sample(20000)
    assert s.shape == (20000, 6)
    assert s.mean().abs().item() < 0.03 and abs(s.std().item() - 1) < 0.03


def test_mog_sample_uses_exp_half_log_var_as_std() -> None:
    """T-Q12 (corrected, optional): draws use std = exp(log_var / 2); w = [10, -10] picks component 0."""
    torch.manual_seed(0)
    prior = MoGPrior(latent_dim=3, num_components=2)
    with torch.no_grad():
        prior.means.copy_(torch.tensor([[1.0, -2.0, 0.5], [30.0, 30.0, 30.0]]))
        prior.log_vars.copy_(torch.tensor([[-2.0, 0.0, 1.5], [0.0, 0.0, 0.0]]))
        prior.w.copy_(torch.tensor([10.0, -10.0]).reshape(2, 1, 1))
    s = prior.sample(40000)
    assert s.shape == (40000, 3)
    std = torch.exp(0.5 * prior.log_vars[0].detach())
    assert ((s.mean(0) - prior.means[0].detach()).abs() < 5 * std / 200).all()
    assert ((s.std(0) / std - 1).abs() < 0.02).all()


# ----------------------------------------------------------------------------- MoGPrior values


@pytest.mark.parametrize(("m", "b", "d", "k"), [(1, 3, 4, 2), (3, 4, 5, 4), (5, 2, 3, 10)])
def test_mog_log_prob_matches_scalar_loop_float64(m: int, b: int, d: int, k: int) -> None:
    torch.manual_seed(10 * m + k)
    prior = MoGPrior(latent_dim=d, num_components=k)
    randomise_mog(prior, seed=m + b + d + k)
    prior.double()
    x = torch.randn(m, b, d, dtype=torch.float64) * 3
    expected = loop_mog_log_prob(x, prior.means, prior.log_vars, prior.w)
    out = prior.log_prob(x)
    assert out.shape == (b, d) and out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(
        tensor_mog_log_prob(x, prior.means, prior.log_vars, prior.w), expected, rtol=1e-10, atol=1e-10
    )


@pytest.mark.parametrize(("m", "b", "d", "k"), [(1, 3, 4, 3), (4, 6, 8, 10)])
def test_mog_log_prob_float32_fast_path(m: int, b: int, d: int, k: int) -> None:
    torch.manual_seed(m + d)
    prior = MoGPrior(latent_dim=d, num_components=k)
    randomise_mog(prior, seed=7 * m + k)
    x = torch.randn(m, b, d) * 3
    expected = loop_mog_log_prob(x, prior.means, prior.log_vars, prior.w)
    out = prior.log_prob(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-4)


def test_mog_log_prob_is_stable_for_tight_samples_far_from_the_means() -> None:
    """Samples with a large common offset and a tiny MC spread, against tight components (log_var -6).

    The fast path uses mean_m (x_m - mu)^2 = var_M(x) + (mean_M(x) - mu)^2; this stresses it in fp32.
    """
    m, b, d, k = 6, 4, 5, 3
    prior = MoGPrior(latent_dim=d, num_components=k)
    randomise_mog(prior, seed=3, lv_range=(-6.0, -5.0))
    g = torch.Generator().manual_seed(4)
    centre = 15.0 + torch.randn(b, d, generator=g)
    x = centre + 1e-3 * torch.randn(m, b, d, generator=g)
    with torch.no_grad():
        prior.means[0] = centre[0] + 1e-3  # one component sits right on top of sample row 0
    expected = loop_mog_log_prob(x.double(), prior.means, prior.log_vars, prior.w)
    torch.testing.assert_close(prior.log_prob(x).double(), expected, rtol=1e-5, atol=1e-3)
    assert torch.isfinite(prior.log_prob(x)).all()


def test_mog_with_one_component_and_one_sample_is_a_gaussian() -> None:
    torch.manual_seed(5)
    prior = MoGPrior(latent_dim=4, num_components=1).double()
    x = torch.randn(1, 3, 4, dtype=torch.float64)
    expected = torch.distributions.Normal(prior.means[0], torch.exp(0.5 * prior.log_vars[0])).log_prob(x[0])
    torch.testing.assert_close(prior.log_prob(x), expected.detach(), rtol=1e-10, atol=1e-10)


def test_mog_mc_sits_inside_the_logsumexp() -> None:
    """T-Q11: log p is not the MC mean of per-sample mixture densities (which would be a different number)."""
    torch.manual_seed(6)
    prior = MoGPrior(latent_dim=3, num_components=4).double()
    randomise_mog(prior, seed=6)
    x = torch.randn(5, 2, 3, dtype=torch.float64) * 2
    outside = torch.stack([prior.log_prob(x[i : i + 1]) for i in range(5)]).mean(0)
    inside = prior.log_prob(x)
    torch.testing.assert_close(inside, loop_mog_log_prob(x, prior.means, prior.log_vars, prior.w))
    # log-sum-exp is convex (Jensen): LSE_k(mean_m a_mk) <= mean_m LSE_k(a_mk), strictly for these samples
    assert (inside <= outside + 1e-9).all()
    assert not torch.allclose(inside, outside, rtol=1e-4)


# ----------------------------------------------------------------------------- MoGPrior gradients


@pytest.mark.parametrize("m", [1, 4])
def test_mog_gradients_match_materialised_reference(m: int) -> None:
    b, d, k = 3, 5, 4
    prior = MoGPrior(latent_dim=d, num_components=k)
    randomise_mog(prior, seed=20 + m)
    g = torch.Generator().manual_seed(21 + m)
    x64 = torch.randn(m, b, d, generator=g, dtype=torch.float64) * 2
    upstream = torch.randn(b, d, generator=g, dtype=torch.float64)
    params64 = {n: p.detach().double().clone().requires_grad_() for n, p in prior.named_parameters()}
    x_ref = x64.clone().requires_grad_()
    ref_out = tensor_mog_log_prob(x_ref, params64["means"], params64["log_vars"], params64["w"])
    ref_grads = torch.autograd.grad((ref_out * upstream).sum(), [x_ref, *params64.values()])

    for dtype, rtol, atol in [(torch.float64, 1e-9, 1e-10), (torch.float32, 1e-4, 1e-4)]:
        fast = MoGPrior(latent_dim=d, num_components=k)
        fast.load_state_dict(prior.state_dict())
        fast.to(dtype)
        x = x64.to(dtype).clone().requires_grad_()
        out = fast.log_prob(x)
        torch.testing.assert_close(out.double(), ref_out.detach(), rtol=rtol, atol=atol)
        grads = torch.autograd.grad((out * upstream.to(dtype)).sum(), [x, *fast.parameters()])
        names = ["x", *[n for n, _ in fast.named_parameters()]]
        assert names == ["x", *params64]
        for name, gf, gr in zip(names, grads, ref_grads):
            assert gf.shape == gr.shape, name
            scale = max(1.0, gr.abs().max().item())
            torch.testing.assert_close(gf.double(), gr, rtol=rtol, atol=atol * scale, msg=f"{dtype} {name}")


# ----------------------------------------------------------------------------- initialisation and shapes


def test_mog_initialisation() -> None:
    """means and log_vars are N(0, 1) draws (not zeros, T-Q11); w is zeros [K, 1, 1]."""
    torch.manual_seed(0)
    k, d = 10, 4096
    prior = MoGPrior(latent_dim=d, num_components=k)
    assert dict(prior.named_parameters()).keys() == {"means", "log_vars", "w"}
    assert set(prior.state_dict()) == {"means", "log_vars", "w"}
    assert prior.means.shape == (k, d) and prior.log_vars.shape == (k, d)
    assert prior.w.shape == (k, 1, 1)
    assert torch.equal(prior.w.detach(), torch.zeros(k, 1, 1))
    for p in (prior.means, prior.log_vars):
        assert p.requires_grad
        assert abs(p.mean().item()) < 0.02  # std of the mean of 40960 N(0,1) draws is 0.005
        assert abs(p.std().item() - 1.0) < 0.02
        # roughly Gaussian: ~68.3% within one std
        assert abs((p.abs() < 1).double().mean().item() - 0.6827) < 0.02
    assert not torch.equal(prior.means, prior.log_vars)
    # uniform mixing weights at init
    torch.testing.assert_close(torch.softmax(prior.w, 0).reshape(-1), torch.full((k,), 1 / k))


def test_mog_default_has_ten_components() -> None:
    assert MoGPrior(latent_dim=3).means.shape == (10, 3)


def test_mog_rejects_zero_components() -> None:
    with pytest.raises(ValueError):
        MoGPrior(latent_dim=3, num_components=0)


# ----------------------------------------------------------------------------- registry contract
KEYS = list(PRIORS)


def composed_prior(key: str, latent_dim: int) -> torch.nn.Module:
    """The ``model/prior=<key>`` node as the Bayes models build it (``latent_dim`` set by the model)."""
    node = to_plain(compose_config(f"model/prior={key}").model.prior)
    prior = build_prior(node, latent_dim)
    assert type(prior) is PRIORS[key]
    return prior


def test_every_prior_has_a_config_of_the_same_name() -> None:
    assert set(KEYS) <= {p.stem for p in (CONF / "model" / "prior").glob("*.yaml")}


@pytest.mark.parametrize("key", KEYS)
def test_log_prob_shape_finite_values_and_gradients(key: str) -> None:
    """log p̄ [B, D] from samples [M, B, D]; gradients reach the samples and every prior parameter."""
    m, b, d = 3, 4, 5
    prior = composed_prior(key, d)
    assert prior.latent_dim == d
    x = torch.randn(m, b, d, generator=torch.Generator().manual_seed(0)).requires_grad_()
    out = prior.log_prob(x)
    assert out.shape == (b, d) and out.dtype == x.dtype and torch.isfinite(out).all()
    leaves = [x, *prior.parameters()]
    grads = torch.autograd.grad(out.sum(), leaves)
    for name, g in zip(["x", *(n for n, _ in prior.named_parameters())], grads, strict=True):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name


@pytest.mark.parametrize("key", KEYS)
def test_log_prob_matches_the_plain_reference(key: str) -> None:
    prior = composed_prior(key, 6).double()
    x = torch.randn(3, 2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
    try:
        expected = prior_log_prob(key, prior, x)
    except KeyError:
        pytest.skip(f"no plain reference for {key!r} in tests/reference/priors.py")
    torch.testing.assert_close(prior.log_prob(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 5), (2, 3, 4, 4), (4,)])
def test_log_prob_rejects_bad_shapes(key: str, shape: tuple[int, ...]) -> None:
    prior = composed_prior(key, 4)
    with pytest.raises(ValueError):
        prior.log_prob(torch.randn(*shape))


@pytest.mark.parametrize("key", KEYS)
def test_state_dict_loads_weights_only(key: str, tmp_path) -> None:
    prior = composed_prior(key, 4)
    torch.save(prior.state_dict(), tmp_path / "prior.pt")
    other = composed_prior(key, 4)
    other.load_state_dict(torch.load(tmp_path / "prior.pt", weights_only=True))
    for k, v in prior.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k


def test_registry_none_is_standard() -> None:
    assert type(build_prior(None, latent_dim=4)) is StandardPrior


@pytest.mark.parametrize(
    "spec", [{"name": "vamp"}, {"_target_": "src.model.prior.GaussianPrior"}, {"_target_": "prior.MoGPrior"}]
)
def test_registry_unknown_prior_raises(spec: dict) -> None:
    with pytest.raises(ValueError, match="not a known prior"):
        build_prior(spec, latent_dim=4)
