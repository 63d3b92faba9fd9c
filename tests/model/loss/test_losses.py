"""Barlow Twins and VICReg (and their MC versions) against the plain references of ``tests.reference.losses``.

The references are written from the formulas, one pair of views at a time in float64: Barlow Twins
with the unbiased std, no epsilon and the cross-correlation divided by the *configured* batch size
(T-Q9); VICReg centred first, variance eps 1e-6 on the unbiased variance, MSE on the centred views,
covariance divided by the configured ``batch_size - 1``, off-diagonal squares divided by ``z_dim`` and
the two views' covariance terms summed (T-Q10); the MC losses as a loop over the M sample pairs. The
fast path is evaluated in fp32 (T-Q30), so comparisons use float32 tolerances.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from src.model.loss.barlow_twins import BarlowTwinsLoss, MCBarlowTwinsLoss, barlow_twins_terms
from src.model.loss.vicreg import MCVICRegLoss, VICRegLoss
from tests.model.devices import DEVICES, fp32_on
from tests.reference.losses import BARLOW_TWINS_TERMS, VICREG_TERMS, mc
from tests.reference.losses import barlow_twins as ref_barlow_twins
from tests.reference.losses import vicreg as ref_vicreg

BT_KEYS = set(BARLOW_TWINS_TERMS)
VICREG_KEYS = set(VICREG_TERMS)

RTOL = 2e-5
ATOL = 1e-6
GRAD_RTOL = 1e-4
GRAD_ATOL = 1e-5


def ref_mc(ref: Callable[..., dict[str, Tensor]], z1: Tensor, z2: Tensor, *args: float) -> dict[str, Tensor]:
    return mc(ref, z1, z2, *args)


# ----------------------------------------------------------------------------- helpers


def make_views(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Correlated views with per-feature scales spread around 1 (so VICReg's hinge is active and inactive)."""
    g = torch.Generator().manual_seed(seed)
    d = shape[-1]
    scale = torch.linspace(0.3, 2.5, d, dtype=torch.float64)
    base = torch.randn(*shape, generator=g, dtype=torch.float64)
    z1 = (base + 0.5 * torch.randn(*shape, generator=g, dtype=torch.float64)) * scale + 0.7
    z2 = (base + 0.5 * torch.randn(*shape, generator=g, dtype=torch.float64)) * scale.flip(0) - 0.3
    return z1.to(dtype), z2.to(dtype)


def assert_matches_reference(
    fast: Callable[[Tensor, Tensor], dict[str, Tensor]],
    ref: Callable[[Tensor, Tensor], dict[str, Tensor]],
    z1: Tensor,
    z2: Tensor,
    keys: set[str],
) -> None:
    """Every key: forward value and gradients w.r.t. both views, fast path vs float64 reference."""
    z1f, z2f = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    z1r, z2r = z1.double().clone().requires_grad_(), z2.double().clone().requires_grad_()
    out = fast(z1f, z2f)
    expected = ref(z1r, z2r)
    assert set(out) == keys
    for key in sorted(keys):
        assert out[key].shape == ()
        torch.testing.assert_close(out[key].double(), expected[key].detach(), rtol=RTOL, atol=ATOL, msg=key)
        g_fast = torch.autograd.grad(out[key], (z1f, z2f), retain_graph=True)
        g_ref = torch.autograd.grad(expected[key], (z1r, z2r), retain_graph=True)
        for gf, gr in zip(g_fast, g_ref):
            assert gf.dtype == z1.dtype
            scale = max(1.0, gr.abs().max().item())
            torch.testing.assert_close(gf.double(), gr, rtol=GRAD_RTOL, atol=GRAD_ATOL * scale, msg=key)


# ----------------------------------------------------------------------------- Barlow Twins


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    ("n", "d", "batch_size", "lambda_coeff"), [(12, 8, 12, 5e-3), (7, 5, 7, 0.3), (10, 6, 32, 0.1)]
)
def test_barlow_twins_matches_loop_reference(dtype, n, d, batch_size, lambda_coeff) -> None:
    z1, z2 = make_views(n, d, seed=n * d, dtype=dtype)
    loss = BarlowTwinsLoss(batch_size=batch_size, lambda_coeff=lambda_coeff)
    assert_matches_reference(loss, lambda a, b: ref_barlow_twins(a, b, batch_size, lambda_coeff), z1, z2, BT_KEYS)


def test_barlow_twins_uses_configured_batch_size_not_n() -> None:
    """C is divided by the constant from the config; with batch_size = 2N every C_ij halves."""
    n, d = 9, 6
    z1, z2 = make_views(n, d, seed=5)
    at_n = BarlowTwinsLoss(batch_size=n, lambda_coeff=0.2)(z1, z2)
    at_2n = BarlowTwinsLoss(batch_size=2 * n, lambda_coeff=0.2)(z1, z2)
    # off_diag scales by 1/4 exactly (C -> C/2)
    torch.testing.assert_close(at_2n["off_diag_loss"], at_n["off_diag_loss"] / 4, rtol=1e-5, atol=1e-7)
    expected = ref_barlow_twins(z1, z2, 2 * n, 0.2)
    for key in BT_KEYS:
        torch.testing.assert_close(at_2n[key].double(), expected[key], rtol=RTOL, atol=ATOL)
    assert not torch.allclose(at_2n["on_diag_loss"], at_n["on_diag_loss"])


def test_barlow_twins_default_lambda_is_5e_3() -> None:
    z1, z2 = make_views(8, 4, seed=11)
    out = BarlowTwinsLoss(batch_size=8)(z1, z2)
    torch.testing.assert_close(out["weighted_off_diag_loss"], 5e-3 * out["off_diag_loss"])
    torch.testing.assert_close(
        out["cl_loss"].double(), ref_barlow_twins(z1, z2, 8, 5e-3)["cl_loss"], rtol=RTOL, atol=ATOL
    )


@pytest.mark.parametrize(("n", "d"), [(6, 3), (10, 7), (16, 12)])
def test_barlow_twins_identical_views_floor(n: int, d: int) -> None:
    """T-Q9: unbiased std with /N gives C_ii = (N-1)/N, so on_diag = D/N^2 for identical views."""
    z, _ = make_views(n, d, seed=n + d)
    out = BarlowTwinsLoss(batch_size=n, lambda_coeff=5e-3)(z, z.clone())
    assert out["on_diag_loss"].item() == pytest.approx(d / n**2, rel=1e-4)


def test_barlow_twins_identical_views_floor_paper_numbers() -> None:
    """The paper's setting: D=1024, N=256 gives on_diag = 1024/256^2 = 0.015625."""
    torch.manual_seed(0)
    z = torch.randn(256, 1024)
    out = BarlowTwinsLoss(batch_size=256, lambda_coeff=5e-3)(z, z.clone())
    assert out["on_diag_loss"].item() == pytest.approx(0.015625, rel=1e-3)


def test_barlow_twins_is_symmetric_in_its_views() -> None:
    z1, z2 = make_views(10, 6, seed=21)
    loss = BarlowTwinsLoss(batch_size=10, lambda_coeff=0.05)
    ab, ba = loss(z1, z2), loss(z2, z1)
    for key in BT_KEYS:
        torch.testing.assert_close(ab[key], ba[key], rtol=1e-5, atol=1e-7)


def test_barlow_twins_invariant_to_per_feature_positive_affine_maps() -> None:
    n, d = 12, 6
    z1, z2 = make_views(n, d, seed=33)
    g = torch.Generator().manual_seed(34)
    a1 = torch.empty(d, dtype=torch.float64).uniform_(0.2, 5.0, generator=g)
    a2 = torch.empty(d, dtype=torch.float64).uniform_(0.2, 5.0, generator=g)
    b1 = torch.randn(d, generator=g, dtype=torch.float64) * 3
    b2 = torch.randn(d, generator=g, dtype=torch.float64) * 3
    loss = BarlowTwinsLoss(batch_size=n, lambda_coeff=0.05)
    plain, mapped = loss(z1, z2), loss(z1 * a1 + b1, z2 * a2 + b2)
    for key in BT_KEYS:
        torch.testing.assert_close(mapped[key], plain[key], rtol=1e-4, atol=1e-6)
    # a negative scale flips the sign of the feature's correlations: the loss is *not* invariant to it
    flipped = loss(z1 * -a1 + b1, z2 * a2 + b2)
    assert not torch.allclose(flipped["on_diag_loss"], plain["on_diag_loss"], rtol=1e-3)


def test_barlow_twins_zero_variance_feature_gives_nan() -> None:
    """No epsilon in the standardisation (T-Q9): a dead feature yields NaN, not a finite value."""
    z1, z2 = make_views(8, 4, seed=3)
    z1[:, 2] = 1.5
    out = BarlowTwinsLoss(batch_size=8, lambda_coeff=5e-3)(z1, z2)
    assert torch.isnan(out["cl_loss"])


def test_barlow_twins_terms_batched_over_leading_dims() -> None:
    z1, z2 = make_views(3, 2, 9, 5, seed=8)
    out = barlow_twins_terms(z1, z2, batch_size=9, lambda_coeff=0.1)
    for key in BT_KEYS:
        assert out[key].shape == (3, 2)
        for i in range(3):
            for j in range(2):
                expected = ref_barlow_twins(z1[i, j], z2[i, j], 9, 0.1)[key]
                torch.testing.assert_close(out[key][i, j], expected, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- VICReg


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    ("n", "d", "batch_size", "z_dim", "coeffs"),
    [
        (12, 8, 12, 8, (25.0, 25.0, 1.0)),
        (7, 5, 7, 5, (3.0, 0.5, 7.0)),
        (10, 6, 40, 1024, (25.0, 25.0, 1.0)),  # configured batch_size and z_dim differ from the tensors
    ],
)
def test_vicreg_matches_loop_reference(dtype, n, d, batch_size, z_dim, coeffs) -> None:
    z1, z2 = make_views(n, d, seed=n + 100 * d, dtype=dtype)
    var_c, inv_c, cov_c = coeffs
    loss = VICRegLoss(
        batch_size=batch_size, z_dim=z_dim, variance_coeff=var_c, invariance_coeff=inv_c, covariance_coeff=cov_c
    )

    def ref(a: Tensor, b: Tensor) -> dict[str, Tensor]:
        return ref_vicreg(a, b, batch_size, z_dim, var_c, inv_c, cov_c)

    assert_matches_reference(loss, ref, z1, z2, VICREG_KEYS)


def test_vicreg_hinge_active_in_test_data() -> None:
    """Guard for the test above: the data exercises both sides of relu(1 - std)."""
    z1, _ = make_views(12, 8, seed=812)
    std = z1.std(0)
    assert (std < 1).any() and (std > 1).any()


def test_vicreg_uses_configured_constants() -> None:
    n, d = 9, 5
    z1, z2 = make_views(n, d, seed=77)
    base = VICRegLoss(batch_size=n, z_dim=d)(z1, z2)
    other = VICRegLoss(batch_size=2 * n + 1, z_dim=4 * d)(z1, z2)
    # cov ~ 1/(batch_size - 1)^2 / z_dim: (n - 1)^2 / (2n)^2 / 4
    ratio = (n - 1) ** 2 / (2 * n) ** 2 / 4
    torch.testing.assert_close(other["cov_loss"], base["cov_loss"] * ratio, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(other["var_loss"], base["var_loss"])
    torch.testing.assert_close(other["inv_loss"], base["inv_loss"])
    expected = ref_vicreg(z1, z2, 2 * n + 1, 4 * d)
    for key in VICREG_KEYS:
        torch.testing.assert_close(other[key].double(), expected[key], rtol=RTOL, atol=ATOL)


def test_vicreg_invariance_is_on_centred_views() -> None:
    """T-Q10: views that differ by a per-feature shift have zero invariance loss."""
    z1, _ = make_views(8, 4, seed=4)
    shift = torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=torch.float64)
    out = VICRegLoss(batch_size=8, z_dim=4)(z1, z1 + shift)
    assert out["inv_loss"].item() == pytest.approx(0.0, abs=1e-10)


def test_vicreg_zero_variance_feature_uses_epsilon() -> None:
    """eps = 1e-6: a constant feature contributes relu(1 - sqrt(1e-6)) = 0.999 to its view's mean."""
    n, d = 8, 4
    z1, z2 = make_views(n, d, seed=9)
    z1 = z1 * 5  # every other feature has std > 1
    z2 = z2 * 5
    z1[:, 1] = 2.0
    out = VICRegLoss(batch_size=n, z_dim=d)(z1, z2)
    assert torch.isfinite(out["cl_loss"])
    assert out["var_loss"].item() == pytest.approx(0.999 / d / 2, rel=1e-5)
    expected = ref_vicreg(z1, z2, n, d)
    for key in VICREG_KEYS:
        torch.testing.assert_close(out[key].double(), expected[key], rtol=RTOL, atol=ATOL)


def test_vicreg_is_symmetric_in_its_views() -> None:
    z1, z2 = make_views(10, 6, seed=22)
    loss = VICRegLoss(batch_size=10, z_dim=6)
    ab, ba = loss(z1, z2), loss(z2, z1)
    for key in VICREG_KEYS:
        torch.testing.assert_close(ab[key], ba[key], rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- MC versions


def _bt_pair(batch_size: int, lambda_coeff: float):
    return (
        MCBarlowTwinsLoss(batch_size=batch_size, lambda_coeff=lambda_coeff),
        BarlowTwinsLoss(batch_size=batch_size, lambda_coeff=lambda_coeff),
        lambda a, b: ref_mc(ref_barlow_twins, a, b, batch_size, lambda_coeff),
        BT_KEYS,
    )


def _vicreg_pair(batch_size: int, z_dim: int):
    coeffs = (4.0, 2.0, 3.0)
    kwargs = dict(variance_coeff=coeffs[0], invariance_coeff=coeffs[1], covariance_coeff=coeffs[2])
    return (
        MCVICRegLoss(batch_size=batch_size, z_dim=z_dim, **kwargs),
        VICRegLoss(batch_size=batch_size, z_dim=z_dim, **kwargs),
        lambda a, b: ref_mc(ref_vicreg, a, b, batch_size, z_dim, *coeffs),
        VICREG_KEYS,
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("family", ["barlow_twins", "vicreg"])
@pytest.mark.parametrize(("m", "n", "d", "batch_size"), [(3, 10, 6, 10), (5, 7, 4, 16), (1, 9, 5, 9)])
def test_mc_loss_matches_per_sample_loop(family, m, n, d, batch_size, dtype, device) -> None:
    with fp32_on(device) as dev:
        z1, z2 = (z.to(dev) for z in make_views(m, n, d, seed=m * 1000 + n * d, dtype=dtype))
        mc_loss, _, ref, keys = (
            _bt_pair(batch_size, 0.05) if family == "barlow_twins" else _vicreg_pair(batch_size, d + 3)
        )
        assert_matches_reference(mc_loss, ref, z1, z2, keys)


@pytest.mark.parametrize("family", ["barlow_twins", "vicreg"])
def test_mc_loss_with_one_sample_equals_single_loss(family) -> None:
    z1, z2 = make_views(11, 6, seed=99, dtype=torch.float32)
    mc_loss, single, _, keys = _bt_pair(11, 5e-3) if family == "barlow_twins" else _vicreg_pair(11, 6)
    mc_out, single_out = mc_loss(z1[None], z2[None]), single(z1, z2)
    assert set(mc_out) == set(single_out) == keys
    for key in keys:
        torch.testing.assert_close(mc_out[key], single_out[key], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("family", ["barlow_twins", "vicreg"])
def test_mc_loss_pairs_samples_in_lock_step(family) -> None:
    """The MC loss equals the mean of single losses on (z1[m], z2[m]), not on a pooled batch."""
    m, n, d = 4, 8, 5
    z1, z2 = make_views(m, n, d, seed=123, dtype=torch.float32)
    mc_loss, single, _, keys = _bt_pair(n, 0.1) if family == "barlow_twins" else _vicreg_pair(n, d)
    out = mc_loss(z1, z2)
    for key in keys:
        expected = torch.stack([single(z1[i], z2[i])[key] for i in range(m)]).mean()
        torch.testing.assert_close(out[key], expected, rtol=1e-5, atol=1e-6)
    # pairing with a rolled sample order changes the value (the pairing is by index)
    rolled = mc_loss(z1, z2.roll(1, 0))
    assert not torch.allclose(rolled["cl_loss"], out["cl_loss"], rtol=1e-4)


# ----------------------------------------------------------------------------- error paths


@pytest.mark.parametrize("cls", [BarlowTwinsLoss, MCBarlowTwinsLoss, VICRegLoss, MCVICRegLoss])
@pytest.mark.parametrize("batch_size", [1, 0, -3])
def test_too_small_configured_batch_size_raises(cls, batch_size: int) -> None:
    kwargs = {"z_dim": 4} if issubclass(cls, VICRegLoss) else {}
    with pytest.raises(ValueError):
        cls(batch_size=batch_size, **kwargs)


@pytest.mark.parametrize("cls", [VICRegLoss, MCVICRegLoss])
@pytest.mark.parametrize("z_dim", [0, -1])
def test_vicreg_non_positive_z_dim_raises(cls, z_dim: int) -> None:
    with pytest.raises(ValueError):
        cls(batch_size=8, z_dim=z_dim)


@pytest.mark.parametrize("cls", [BarlowTwinsLoss, VICRegLoss])
def test_single_sample_batch_raises(cls) -> None:
    loss = cls(batch_size=8, z_dim=4) if cls is VICRegLoss else cls(batch_size=8)
    z = torch.randn(1, 4)
    with pytest.raises(ValueError):
        loss(z, z.clone())


@pytest.mark.parametrize("cls", [MCBarlowTwinsLoss, MCVICRegLoss])
def test_single_sample_batch_raises_mc(cls) -> None:
    loss = cls(batch_size=8, z_dim=4) if cls is MCVICRegLoss else cls(batch_size=8)
    z = torch.randn(3, 1, 4)
    with pytest.raises(ValueError):
        loss(z, z.clone())


@pytest.mark.parametrize("cls", [MCBarlowTwinsLoss, MCVICRegLoss])
def test_mc_loss_rejects_2d_input(cls) -> None:
    loss = cls(batch_size=8, z_dim=4) if cls is MCVICRegLoss else cls(batch_size=8)
    z1, z2 = make_views(8, 4, seed=1)
    with pytest.raises(ValueError):
        loss(z1, z2)


@pytest.mark.parametrize("cls", [BarlowTwinsLoss, VICRegLoss])
def test_single_loss_rejects_3d_input(cls) -> None:
    loss = cls(batch_size=8, z_dim=4) if cls is VICRegLoss else cls(batch_size=8)
    z1, z2 = make_views(2, 8, 4, seed=1)
    with pytest.raises(ValueError):
        loss(z1, z2)


@pytest.mark.parametrize(
    ("cls", "shape1", "shape2"),
    [
        (BarlowTwinsLoss, (8, 4), (8, 5)),
        (BarlowTwinsLoss, (8, 4), (9, 4)),
        (VICRegLoss, (8, 4), (8, 5)),
        (VICRegLoss, (8, 4), (7, 4)),
        (MCBarlowTwinsLoss, (2, 8, 4), (3, 8, 4)),
        (MCBarlowTwinsLoss, (2, 8, 4), (2, 8, 3)),
        (MCVICRegLoss, (2, 8, 4), (2, 6, 4)),
        (MCVICRegLoss, (2, 8, 4), (8, 4)),
    ],
)
def test_mismatched_shapes_raise(cls, shape1, shape2) -> None:
    loss = cls(batch_size=8, z_dim=4) if issubclass(cls, VICRegLoss) else cls(batch_size=8)
    with pytest.raises(ValueError):
        loss(torch.randn(*shape1), torch.randn(*shape2))


# ----------------------------------------------------------------------------- off-diagonal sum without copies


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(5, 5), (3, 7, 7), (2, 3, 64, 64)])
def test_off_diagonal_square_sum_is_bit_identical_to_the_copy(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """The strided view gives exactly the values (and gradients) of squaring and summing the flattened copy."""
    from src.model.loss._common import off_diagonal, off_diagonal_square_sum

    torch.manual_seed(0)
    c = torch.randn(*shape, dtype=dtype, requires_grad=True)
    fast = off_diagonal_square_sum(c)
    copy = off_diagonal(c).pow(2).sum(-1)
    assert fast.shape == shape[:-2]
    assert torch.equal(fast, copy)
    d = shape[-1]
    mask = ~torch.eye(d, dtype=torch.bool)
    assert torch.allclose(fast, (c.detach() * mask).pow(2).sum((-2, -1)))
    (g_fast,) = torch.autograd.grad(fast.sum(), c)
    (g_copy,) = torch.autograd.grad(copy.sum(), c)
    assert torch.equal(g_fast, g_copy)
    assert torch.equal(g_fast, 2 * c.detach() * mask)
