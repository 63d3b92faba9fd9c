"""The three SSL modules: shapes, the batched step against a per-sample reference, gradients,
validation of arguments and the online probe (spec §4, §5, §6.3, §9)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor

from src.model.stochastic import MAX_LOG_VAR, MAX_MU, MIN_LOG_VAR, MIN_MU
from src.task.bayesian_ssl import HBayesianSelfSupervisedLearning, ZBayesianSelfSupervisedLearning
from src.task.ssl import SelfSupervisedLearning
from src.train.callbacks.online_finetuner import OnlineFineTuner
from tests.conftest import COMBINATIONS, build_model, model_kwargs, three_view_batch

LOG_2PI = math.log(2 * math.pi)


# ---- plain per-sample references, written from the spec's formulas -------------------------------
def ref_barlow_twins(z1: Tensor, z2: Tensor, batch_size: int, lam: float = 5e-3) -> Tensor:
    z1 = (z1 - z1.mean(0)) / z1.std(0)
    z2 = (z2 - z2.mean(0)) / z2.std(0)
    c = z1.T @ z2 / batch_size
    d = c.shape[0]
    on = sum((c[i, i] - 1) ** 2 for i in range(d))
    off = sum(c[i, j] ** 2 for i in range(d) for j in range(d) if i != j)
    return on + lam * off


def ref_vicreg(za: Tensor, zb: Tensor, batch_size: int, z_dim: int) -> Tensor:
    za, zb = za - za.mean(0), zb - zb.mean(0)
    var = (
        torch.relu(1 - torch.sqrt(za.var(0) + 1e-6)).mean() + torch.relu(1 - torch.sqrt(zb.var(0) + 1e-6)).mean()
    ) / 2
    inv = ((za - zb) ** 2).mean()

    def cov_term(z: Tensor) -> Tensor:
        c = z.T @ z / (batch_size - 1)
        return sum(c[i, j] ** 2 for i in range(c.shape[0]) for j in range(c.shape[0]) if i != j) / z_dim

    return 25 * inv + 25 * var + cov_term(za) + cov_term(zb)


def ref_kl_standard(s: Tensor, mu: Tensor, log_var: Tensor) -> Tensor:
    m = s.shape[0]
    log_q = sum(-0.5 * (LOG_2PI + log_var + torch.exp(-log_var) * (s[i] - mu) ** 2) for i in range(m)) / m
    log_p = sum(-0.5 * LOG_2PI - 0.5 * s[i] ** 2 for i in range(m)) / m
    return (log_q - log_p).sum(-1).mean()


def ref_step(model, batch, loss: str) -> Tensor:
    """The reference's step: encoder per view, Gaussian head, projector mapped over MC slices
    one by one, the MC loss as a loop over M, and the KL term per view."""
    (x1, x2, _), _ = batch
    hp = model.hparams
    base = ref_barlow_twins if "barlow" in loss else (lambda a, b, n: ref_vicreg(a, b, n, hp["z_dim"]))
    proj = model.projection_head.layers
    if isinstance(model, SelfSupervisedLearning):
        return base(proj(model.encoder(x1)), proj(model.encoder(x2)), hp["batch_size"])
    m = hp["mc_samples"]
    views = []
    for x in (x1, x2):
        u = model.encoder(x)
        if isinstance(model, ZBayesianSelfSupervisedLearning):
            u = proj(u)
        mu = torch.clamp(model.fc_mu(u), MIN_MU, MAX_MU)
        lv = torch.clamp(model.fc_log_var(u), MIN_LOG_VAR, MAX_LOG_VAR)
        s = mu + torch.exp(0.5 * lv) * torch.randn(m, *mu.shape)
        views.append((s, mu, lv))
    if isinstance(model, HBayesianSelfSupervisedLearning):
        z = [torch.stack([proj(s[i]) for i in range(m)]) for s, _, _ in views]
    else:
        z = [s for s, _, _ in views]
    cl = sum(base(z[0][i], z[1][i], hp["batch_size"]) for i in range(m)) / m
    kl = 0.5 * (ref_kl_standard(*views[0]) + ref_kl_standard(*views[1]))
    return cl + hp["beta_scale"] * kl


@pytest.mark.parametrize(("model_name", "loss"), COMBINATIONS)
def test_step_matches_per_sample_reference(model_name: str, loss: str) -> None:
    """Loss, every parameter gradient and every BatchNorm running statistic of the batched step
    equal the reference's per-sample computation."""
    torch.manual_seed(0)
    fast = build_model(model_name, loss, hidden_dim=16, z_dim=16)
    ref = copy.deepcopy(fast)
    batch = three_view_batch()

    torch.manual_seed(123)
    out = fast.shared_step(batch)
    out["loss"].backward()
    torch.manual_seed(123)
    ref_loss = ref_step(ref, batch, loss)
    ref_loss.backward()

    torch.testing.assert_close(out["loss"], ref_loss, rtol=1e-4, atol=1e-5)
    fast_params = dict(fast.named_parameters())
    ref_params = dict(ref.named_parameters())
    assert fast_params.keys() == ref_params.keys()
    for name, p in fast_params.items():
        if p.grad is None:
            assert ref_params[name].grad is None, name
        else:
            torch.testing.assert_close(p.grad, ref_params[name].grad, rtol=1e-3, atol=1e-5, msg=name)
    for (name, b), (_, rb) in zip(fast.named_buffers(), ref.named_buffers()):
        torch.testing.assert_close(b, rb, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize(("model_name", "loss"), COMBINATIONS)
def test_every_trained_parameter_gets_a_gradient(model_name: str, loss: str) -> None:
    torch.manual_seed(0)
    model = build_model(model_name, loss, prior="mog")
    model.shared_step(three_view_batch())["loss"].backward()
    for name, p in model.named_parameters():
        if name.startswith("online_finetuner."):
            assert p.grad is None, "the probe is trained only by its own optimizer"
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_output_shapes() -> None:
    torch.manual_seed(0)
    b, m, x = 8, 3, three_view_batch()[0][0]
    ssl = build_model("ssl", "barlow_twins")
    assert ssl(x).shape == (b, 512) and ssl.project(ssl(x)).shape == (b, 32)

    h = build_model("ssl_bayes_h", "mc_barlow_twins", mc_samples=m)
    repr_, samples, mu, log_var, q = h(x)
    assert repr_.shape == mu.shape == log_var.shape == (b, 512) and samples.shape == (m, b, 512)
    torch.testing.assert_close(repr_, samples.mean(0))  # the MC mean of the draws, not mu
    assert not torch.equal(repr_, mu)
    assert h.project(samples).shape == (m, b, 32)
    torch.testing.assert_close(q.loc, mu)
    torch.testing.assert_close(q.scale, torch.exp(0.5 * log_var))

    z = build_model("ssl_bayes_z", "mc_vicreg", mc_samples=m)
    assert z(x).shape == (b, 512)
    repr_, samples, mu, log_var, _ = z.project(z(x))
    assert samples.shape == (m, b, 32) and repr_.shape == mu.shape == (b, 32)
    assert z.fc_mu.in_features == 32 and h.fc_mu.in_features == 512


@pytest.mark.parametrize(("model_name", "loss"), COMBINATIONS)
def test_step_output_names(model_name: str, loss: str) -> None:
    torch.manual_seed(0)
    out = build_model(model_name, loss).shared_step(three_view_batch())
    terms = (
        {"cl_loss", "on_diag_loss", "off_diag_loss", "weighted_off_diag_loss"}
        if "barlow" in loss
        else {
            "cl_loss",
            "var_loss",
            "weighted_var_loss",
            "inv_loss",
            "weighted_inv_loss",
            "cov_loss",
            "weighted_cov_loss",
        }
    )
    expected = terms | {"loss"}
    if model_name != "ssl":
        rv = model_name[-1]
        expected |= {"kl_prior_loss", "weighted_kl_prior_loss", f"q_{rv}1", f"q_{rv}2"}
        torch.testing.assert_close(out["weighted_kl_prior_loss"], 1e-3 * out["kl_prior_loss"])
        torch.testing.assert_close(out["loss"], out["cl_loss"] + out["weighted_kl_prior_loss"])
    else:
        torch.testing.assert_close(out["loss"], out["cl_loss"])
    assert set(out) == expected


def test_imagenet_uses_three_layer_head() -> None:
    model = build_model("ssl", "barlow_twins", dataset="imagenet")
    keys = {k.split(".")[2] for k in model.state_dict() if k.startswith("projection_head.layers.")}
    assert keys == {"0", "1", "3", "4", "6"}
    assert model.encoder.conv1.kernel_size == (7, 7)


def test_constructor_accepts_omegaconf_nodes_and_stores_plain_values() -> None:
    kwargs = model_kwargs("ssl_bayes_z", "mc_barlow_twins", prior="mog")
    kwargs["cl_loss"] = OmegaConf.create(kwargs["cl_loss"])
    kwargs["optimizer"] = OmegaConf.create(kwargs["optimizer"])
    model = ZBayesianSelfSupervisedLearning(**kwargs)

    def plain(v: object) -> bool:
        if isinstance(v, dict):
            return all(isinstance(k, str) and plain(x) for k, x in v.items())
        if isinstance(v, list):
            return all(plain(x) for x in v)
        return v is None or isinstance(v, (str, int, float, bool))

    assert plain(dict(model.hparams))
    assert model.hparams["cl_loss"]["lambda_coeff"] == 5e-3
    assert model.prior.num_components == 3 and model.prior.latent_dim == 32


# ---- invalid arguments ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model_name", "loss", "overrides", "match"),
    [
        ("ssl", "mc_barlow_twins", {}, "needs barlow_twins or vicreg"),
        ("ssl_bayes_h", "vicreg", {}, "needs an MC loss"),
        ("ssl_bayes_z", "mc_vicreg", {"mc_samples": 0}, "mc_samples"),
        ("ssl_bayes_h", "mc_barlow_twins", {"mc_samples": 2.5}, "mc_samples"),
        ("ssl_bayes_z", "mc_barlow_twins", {"beta_scale": -1e-3}, "beta_scale"),
        ("ssl_bayes_z", "mc_barlow_twins", {"beta_scale": float("nan")}, "beta_scale"),
        ("ssl", "barlow_twins", {"batch_size": 1}, "batch_size=1"),
        ("ssl", "vicreg", {"batch_size": 1}, "batch_size=1"),
        ("ssl_bayes_h", "mc_barlow_twins", {"latent_dim": 256}, "latent_dim"),
        ("ssl", "barlow_twins", {"encoder": "resnet101"}, "encoder='resnet101'"),
        ("ssl", "barlow_twins", {"num_classes": 0}, "num_classes"),
    ],
)
def test_invalid_combinations_fail_at_construction(model_name, loss, overrides, match) -> None:
    with pytest.raises(ValueError, match=match):
        build_model(model_name, loss, **overrides)


def test_unknown_loss_and_prior_targets_are_clear_errors() -> None:
    kwargs = model_kwargs("ssl_bayes_h", "mc_barlow_twins")
    kwargs["cl_loss"] = {**kwargs["cl_loss"], "_target_": "src.model.loss.SimCLR"}
    with pytest.raises(ValueError, match="not a known loss"):
        HBayesianSelfSupervisedLearning(**kwargs)
    kwargs = model_kwargs("ssl_bayes_h", "mc_barlow_twins")
    kwargs["prior"] = {"name": "vamp"}
    with pytest.raises(ValueError, match="not a known prior"):
        HBayesianSelfSupervisedLearning(**kwargs)


def test_a_batch_of_one_is_refused_in_the_step() -> None:
    model = build_model("ssl", "barlow_twins")
    with pytest.raises(ValueError, match="batch of 1 sample"):
        model.shared_step(three_view_batch(batch_size=1))


# ---- reference state dicts and compiled encoders ------------------------------------------------------
def test_reference_state_dict_keys_load() -> None:
    """The paper's release names the Gaussian layers `fc_mu`/`fc_log_var` at the top level and,
    for compiled encoders, prefixes `encoder._orig_mod.`; such state dicts load unchanged."""
    torch.manual_seed(0)
    src = build_model("ssl_bayes_h", "mc_barlow_twins")
    legacy = {}
    for k, v in src.state_dict().items():
        k = k.replace("gaussian_head.", "").replace("encoder.", "encoder._orig_mod.", 1)
        legacy[k] = v
    assert "fc_mu.weight" in legacy and "encoder._orig_mod.conv1.weight" in legacy
    dst = build_model("ssl_bayes_h", "mc_barlow_twins")
    dst.load_state_dict(legacy)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_compile_encoder_keeps_state_dict_keys() -> None:
    model = build_model("ssl", "barlow_twins", compile_encoder=True)
    assert all(not k.startswith("encoder._orig_mod") for k in model.state_dict())
    assert all(not k.startswith("_compiled") for k in model.state_dict())
    assert model._compiled_encoder is not None and model._compiled_encoder._orig_mod is model.encoder


# ---- online probe ---------------------------------------------------------------------------------------
class _FakeTrainer:
    pass


@pytest.mark.parametrize(
    ("model_name", "loss", "forwards"),
    [
        ("ssl", "barlow_twins", 1),
        ("ssl_bayes_h", "mc_barlow_twins", 2),
        ("ssl_bayes_z", "mc_vicreg", 1),
    ],
)
def test_online_probe_step(model_name: str, loss: str, forwards: int) -> None:
    """One probe step: only the probe changes; the encoder's BN running statistics are updated by
    the train-mode extra forwards (twice for Bayes-H, as the reference; Quirk Q15a)."""
    torch.manual_seed(0)
    model = build_model(model_name, loss)
    model.log = lambda *a, **k: None  # no trainer attached
    callback = OnlineFineTuner(512, 4)
    callback.on_fit_start(_FakeTrainer(), model)
    before = copy.deepcopy(model.state_dict())
    batch = three_view_batch()
    callback.on_train_batch_end(_FakeTrainer(), model, None, batch, 0)
    after = model.state_dict()
    for k, v in after.items():
        if k.startswith("online_finetuner."):
            assert not torch.equal(v, before[k]), k
        elif k.endswith("num_batches_tracked"):
            assert int(v - before[k]) == (forwards if k.startswith("encoder.") else 0), k
        elif "running_" in k:
            assert not torch.equal(v, before[k]) if k.startswith("encoder.") else torch.equal(v, before[k]), k
        else:
            assert torch.equal(v, before[k]), k
    # the probe's loss is the cross-entropy of the probe on the (MC-mean) representation
    model.eval()
    loss_value, acc = callback.shared_step(model, batch)
    assert 0.0 <= float(acc) <= 1.0 and float(loss_value.detach()) > 0


@pytest.mark.parametrize(("model_name", "loss"), [("ssl", "vicreg"), ("ssl_bayes_h", "mc_barlow_twins")])
def test_channels_last_gives_the_same_loss_and_gradients(model_name: str, loss: str) -> None:
    torch.manual_seed(0)
    # float64: a tiny batch through BatchNorm amplifies float32 summation-order noise in the grads
    plain = build_model(model_name, loss).double()
    nhwc = build_model(model_name, loss, channels_last=True).double()
    nhwc.load_state_dict(plain.state_dict())
    conv = nhwc.encoder.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and conv.dim() == 4
    assert nhwc.state_dict().keys() == plain.state_dict().keys()
    (x1, x2, x3), y = three_view_batch(batch_size=8, size=8)
    batch = ((x1.double(), x2.double(), x3.double()), y)
    losses = []
    for model in (plain, nhwc):
        torch.manual_seed(1)  # same MC noise for both
        out = model.shared_step(batch)
        out["loss"].backward()
        losses.append(out["loss"].detach())
    assert torch.allclose(losses[0], losses[1], rtol=1e-10)
    for (name, p), q in zip(plain.named_parameters(), nhwc.parameters(), strict=True):
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, rtol=1e-8, atol=1e-10), name
