"""The network's features per model variant (the table in src/ood/features.py), computed with the
model's own calls; only requested fields are computed; the hooks (logits with gradients, the five
GRAM maps); the run-name rule."""

from __future__ import annotations

import pytest
import torch

from src.ood.features import FIELDS
from src.ood.wrapper import OODNetwork, model_name_from_run
from tests.ood.fakes import images, tiny_network

ALL = set(FIELDS)


@pytest.fixture(scope="module")
def nets() -> dict[str, OODNetwork]:
    return {name: tiny_network(name, seed=i) for i, name in enumerate(("ssl", "ssl_bayes_h", "ssl_bayes_z"))}


@torch.no_grad()
def test_ssl_features(nets: dict[str, OODNetwork]) -> None:
    net, x = nets["ssl"], images(5, 1)
    f = net.features(x, ALL)
    e = net.model.encoder(x)
    assert f.space is None
    assert torch.equal(f.feats, e) and torch.equal(f.logits, net.predictor(e))
    assert torch.equal(f.embeddings, net.model.projection_head(e))
    assert f.mu is None and f.log_var is None and f.sample_mean is None and f.samples is None
    assert net.features(x).feats is None  # unrequested: not kept


@torch.no_grad()
def test_bayes_h_features(nets: dict[str, OODNetwork]) -> None:
    net, x = nets["ssl_bayes_h"], images(5, 2)
    torch.manual_seed(3)
    f = net.features(x, ALL)
    torch.manual_seed(3)
    out = net.model(x)  # one draw of S samples h_s of the representation
    s = net.model.mc_samples
    assert f.space == "H" and f.samples is not None and f.samples.shape == (s, 5, 512)
    assert torch.equal(f.samples, out.samples) and torch.equal(f.feats, out.samples.mean(0))
    assert torch.equal(f.sample_mean, f.feats)  # h̄
    assert torch.equal(f.logits, net.predictor(out.samples).mean(0))  # MC mean of the logits
    torch.testing.assert_close(f.logits, net.predictor(f.feats))  # = P(h̄) up to rounding (O-Q13)
    assert torch.equal(f.embeddings, net.model.projection_head(out.samples).mean(0))
    assert torch.equal(f.mu, out.mu) and torch.equal(f.log_var, out.log_var)
    g = net.features(x, ALL)  # a fresh draw: stochastic feats, deterministic posterior
    assert not torch.equal(g.feats, f.feats) and torch.equal(g.mu, f.mu) and torch.equal(g.log_var, f.log_var)


@torch.no_grad()
def test_bayes_z_features(nets: dict[str, OODNetwork]) -> None:
    net, x = nets["ssl_bayes_z"], images(5, 4)
    torch.manual_seed(5)
    f = net.features(x, ALL)
    e = net.model.encoder(x)
    torch.manual_seed(5)
    z = net.model.project(e)
    assert f.space == "Z"
    assert torch.equal(f.feats, e) and torch.equal(f.logits, net.predictor(e))  # deterministic
    assert torch.equal(f.embeddings, z.repr) and torch.equal(f.sample_mean, z.repr)  # z̄
    assert torch.equal(f.samples, z.samples) and f.samples.shape == (net.model.mc_samples, 5, 32)
    assert torch.equal(f.mu, z.mu) and torch.equal(f.log_var, z.log_var)


@torch.no_grad()
def test_only_requested_stochastic_fields_draw_noise(nets: dict[str, OODNetwork]) -> None:
    """Bayes-Z: without an embedding-side field the projection (and its MC draw) does not run."""
    net, x = nets["ssl_bayes_z"], images(3, 6)
    state = torch.get_rng_state()
    f = net.features(x, {"logits", "feats"})
    assert torch.equal(torch.get_rng_state(), state)
    assert f.mu is None and f.embeddings is None and f.samples is None
    net.features(x, {"mu"})
    assert not torch.equal(torch.get_rng_state(), state)
    with pytest.raises(ValueError, match="unknown feature fields"):
        net.features(x, {"sigma"})


def test_logits_carry_the_input_gradient(nets: dict[str, OODNetwork]) -> None:
    net = nets["ssl"]
    x = images(2, 7).requires_grad_(True)
    net.logits(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for p in [*net.model.parameters(), *net.predictor.parameters()]:
        p.grad = None


@torch.no_grad()
def test_feature_list_is_the_five_resnet_maps(nets: dict[str, OODNetwork]) -> None:
    maps = nets["ssl"].feature_list(images(2, 8, (3, 32, 32)))
    assert [tuple(m.shape[1:]) for m in maps] == [(64, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 1, 1)]
    assert all(bool((m >= 0).all()) for m in maps)  # after ReLU, or averages of ReLU outputs


def test_feature_list_needs_a_resnet_encoder() -> None:
    """A timm encoder (model/backbone=timm) has no torchvision ResNet layers: gram says so."""
    pytest.importorskip("timm")
    from src.task import SSL_MODELS
    from tests.conftest import model_kwargs

    model = SSL_MODELS["ssl"](**model_kwargs("ssl", "barlow_twins", encoder="timm/test_resnet", latent_dim=None))
    net = OODNetwork(model, torch.nn.Linear(96, 4)).eval()
    assert net.features(images(2, 1), {"feats"}).feats.shape == (2, 96)  # every other detector's features work
    with pytest.raises(ValueError, match=r"gram reads the layers .* encoder is 'timm/test_resnet'"):
        net.feature_list(images(2, 1))


def test_properties(nets: dict[str, OODNetwork]) -> None:
    assert [nets[n].stochastic_space for n in ("ssl", "ssl_bayes_h", "ssl_bayes_z")] == [None, "H", "Z"]
    assert nets["ssl"].num_classes == 4 and nets["ssl"].device.type == "cpu"
    with pytest.raises(TypeError, match="no prior"):
        _ = nets["ssl"].prior
    assert nets["ssl_bayes_h"].prior is nets["ssl_bayes_h"].model.prior


def test_model_name_from_run() -> None:
    assert model_name_from_run("ssl_bayes_h_barlow_seed_1") == "ssl_bayes_h"
    assert model_name_from_run("ssl_bayes_z_x") == "ssl_bayes_z"
    assert model_name_from_run("ssl_bayes_q") == model_name_from_run("anything") == "ssl"
