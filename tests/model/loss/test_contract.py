"""Contract of every registered contrastive loss (``LOSSES``), built from its composed config node.

For each registry key the ``model/loss=<key>`` config is composed (shrunk: batch 8, z_dim 6) and built
through the registry, as the models build it. Checked: the returned dict of named terms (``cl_loss``
among them), scalar and finite terms, gradients reaching both views, the plain reference of
``tests.reference.losses`` (values and gradients), MC losses on [M, B, D] reducing to their plain loss
for M = 1 and being the mean of per-sample plain losses, and the refusal of a batch of one sample.
A new loss is tested by registering it and adding its config file under the same name.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from src.model.loss import LOSSES, build_loss
from src.utils.plain import to_plain
from tests.conftest import CONF, compose_config
from tests.reference.losses import REFERENCES, reference_loss

KEYS = list(LOSSES)
B, D, M = 8, 6, 3


def composed_node(key: str) -> dict:
    cfg = compose_config(f"model/loss={key}", f"dataset.batch_size={B}", f"model.backbone.z_dim={D}")
    return to_plain(cfg.model.loss)


def build(key: str) -> nn.Module:
    loss = build_loss(composed_node(key))
    assert type(loss) is LOSSES[key]
    return loss


def views(key: str, seed: int = 0, m: int = M, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Two correlated views, [B, D] for a plain loss and [m, B, D] for an MC loss."""
    g = torch.Generator().manual_seed(seed)
    shape = (m, B, D) if LOSSES[key].mc else (B, D)
    base = torch.randn(shape, generator=g, dtype=torch.float64)
    z1 = base + 0.5 * torch.randn(shape, generator=g, dtype=torch.float64)
    z2 = base + 0.5 * torch.randn(shape, generator=g, dtype=torch.float64)
    return z1.to(dtype), z2.to(dtype)


def plain_counterpart(cls: type[nn.Module]) -> str | None:
    """The registered plain loss an MC loss averages (its nearest registered base class), if any."""
    for base in cls.__mro__[1:]:
        for key, registered in LOSSES.items():
            if registered is base and not getattr(base, "mc", False):
                return key
    return None


def test_every_loss_has_a_config_of_the_same_name() -> None:
    configs = {p.stem for p in (CONF / "model" / "loss").glob("*.yaml")}
    assert set(KEYS) <= configs


@pytest.mark.parametrize("key", KEYS)
def test_named_scalar_finite_terms_and_gradients_to_both_views(key: str) -> None:
    loss = build(key)
    z1, z2 = (z.requires_grad_() for z in views(key))
    out = loss(z1, z2)
    assert isinstance(out, dict) and "cl_loss" in out
    assert all(k.endswith("loss") for k in out), "the SSL modules log every term whose name ends in 'loss'"
    for name, value in out.items():
        assert value.shape == () and torch.isfinite(value), name
    g1, g2 = torch.autograd.grad(out["cl_loss"], (z1, z2))
    assert g1.abs().sum() > 0 and g2.abs().sum() > 0


@pytest.mark.parametrize("key", KEYS)
def test_matches_the_plain_reference(key: str) -> None:
    if key not in REFERENCES:
        pytest.skip(f"no plain reference for {key!r} in tests/reference/losses.py")
    loss = build(key)
    z1, z2 = views(key, seed=1, dtype=torch.float64)
    a1, a2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    r1, r2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    out, expected = loss(a1, a2), reference_loss(key, loss, r1, r2)
    assert set(out) == set(expected)
    for name in expected:
        torch.testing.assert_close(out[name], expected[name], rtol=1e-10, atol=1e-12, msg=name)
        got = torch.autograd.grad(out[name], (a1, a2), retain_graph=True)
        want = torch.autograd.grad(expected[name], (r1, r2), retain_graph=True)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-12, msg=name)


@pytest.mark.parametrize("key", [k for k in KEYS if LOSSES[k].mc])
def test_mc_loss_is_the_mean_of_its_plain_loss_and_reduces_to_it_for_one_sample(key: str) -> None:
    plain_key = plain_counterpart(LOSSES[key])
    if plain_key is None:
        pytest.skip(f"{key!r} has no registered plain counterpart to reduce to")
    node = composed_node(key)
    mc_loss = build_loss(node)
    plain = build_loss({**node, "_target_": None, "type": plain_key})
    z1, z2 = views(key, seed=2)
    one = mc_loss(z1[:1], z2[:1])
    single = plain(z1[0], z2[0])
    assert set(one) == set(single)
    for name in single:
        torch.testing.assert_close(one[name], single[name], rtol=1e-6, atol=1e-7, msg=name)
    full = mc_loss(z1, z2)
    for name in single:
        mean = torch.stack([plain(z1[m], z2[m])[name] for m in range(M)]).mean()
        torch.testing.assert_close(full[name], mean, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("key", KEYS)
def test_refuses_a_batch_of_one(key: str) -> None:
    loss = build(key)
    z1, z2 = views(key)
    with pytest.raises(ValueError, match="batch of 1 sample"):
        loss(z1[..., :1, :], z2[..., :1, :])


@pytest.mark.parametrize("key", KEYS)
def test_refuses_the_other_layout(key: str) -> None:
    """Plain losses take [B, D], MC losses [M, B, D]; the other layout is an error, not a silent loop."""
    loss = build(key)
    z1, z2 = views(key)
    other = (z1[0], z2[0]) if LOSSES[key].mc else (z1[None], z2[None])
    with pytest.raises(ValueError, match="expects two"):
        loss(*other)


@pytest.mark.parametrize(
    "target",
    ["src.model.loss.barlow_twins.BarlowTwins", "lightly.loss.BarlowTwinsLoss", "src.model.loss.vicreg.VicRegLoss"],
)
def test_unknown_target_raises(target: str) -> None:
    with pytest.raises(ValueError, match="not a known loss"):
        build_loss({"_target_": target, "batch_size": 8, "lambda_coeff": 5e-3})


def test_missing_target_and_type_raise() -> None:
    with pytest.raises(ValueError):
        build_loss({"batch_size": 8})
    with pytest.raises(ValueError, match="not a known loss"):
        build_loss({"type": "simclr", "batch_size": 8})
