"""The three SSL modules: shapes, the batched step against the reference's per-sample step
(``tests.reference.ssl_step``), gradients, validation of arguments and the online probe."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf

from src.model.prior import PRIORS
from src.task.bayesian_ssl import HBayesianSelfSupervisedLearning, ZBayesianSelfSupervisedLearning
from src.train.callbacks.online_finetuner import OnlineFineTuner
from tests.conftest import COMBINATIONS, build_model, model_kwargs, three_view_batch
from tests.model.devices import DEVICES, fp32_on
from tests.reference.ssl_step import reference_step


def step_cases() -> list[tuple[str, str, str]]:
    """Every model with every loss it accepts; the stochastic models alternate over the priors (every prior's
    density and KL term is checked against its reference in tests/model; every model x loss x prior trains
    in test_model_contract.py)."""
    priors = list(PRIORS)
    return [(m, loss, priors[i % len(priors)]) for i, (m, loss) in enumerate(COMBINATIONS)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("model_name", "loss", "prior"), step_cases())
def test_step_matches_per_sample_reference(model_name: str, loss: str, prior: str, device: str) -> None:
    """Every loss term, every parameter gradient and every BatchNorm running statistic of the batched
    step equal the reference's per-sample computation (same weights, same MC noise), on the CPU and on CUDA
    (fp32)."""
    with fp32_on(device) as dev:
        torch.manual_seed(0)
        fast = build_model(model_name, loss, hidden_dim=16, z_dim=16, prior=prior).to(dev)
        ref = copy.deepcopy(fast)
        (x1, x2, x3), y = three_view_batch()
        batch = (x1.to(dev), x2.to(dev), x3.to(dev)), y.to(dev)

        torch.manual_seed(123)
        out = fast.shared_step(batch)
        out["loss"].backward()
        torch.manual_seed(123)
        expected = reference_step(ref, batch)
        expected["loss"].backward()

    # the step's output: the loss terms, and the two posteriors q_<rv>1, q_<rv>2 of the Bayes models
    others = {f"q_{fast.rv_name}1", f"q_{fast.rv_name}2"} if fast.stochastic else set()
    assert set(out) == set(expected) | others
    for key, value in expected.items():
        torch.testing.assert_close(out[key], value, rtol=1e-4, atol=1e-5, msg=key)
    if fast.stochastic:
        torch.testing.assert_close(out["weighted_kl_prior_loss"], 1e-3 * out["kl_prior_loss"])
    fast_params = dict(fast.named_parameters())
    ref_params = dict(ref.named_parameters())
    assert fast_params.keys() == ref_params.keys()
    for name, p in fast_params.items():
        if name.startswith("online_finetuner."):  # trained only by its own optimizer (T-Q14)
            assert p.grad is None and ref_params[name].grad is None, name
            continue
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} gets no gradient"
        torch.testing.assert_close(p.grad, ref_params[name].grad, rtol=1e-3, atol=1e-5, msg=name)
    for (name, b), (_, rb) in zip(fast.named_buffers(), ref.named_buffers(), strict=True):
        torch.testing.assert_close(b, rb, rtol=1e-5, atol=1e-6, msg=name)


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
    the train-mode extra forwards (twice for Bayes-H, as the reference; T-Q15a)."""
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


def _set_momentum(model: torch.nn.Module, momentum: float | None) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
def test_bayes_h_single_pass_probe_leaves_the_state_of_two_passes(
    momentum: float | None, mode: str, device: str
) -> None:
    """Float64: one encoder pass gives the two passes' probe features and logits, every BatchNorm buffer
    (running statistics to float64 rounding, counters exactly) and the same random stream afterwards."""
    torch.manual_seed(0)
    model = build_model("ssl_bayes_h", "mc_barlow_twins").to(device, torch.float64)
    _set_momentum(model, momentum)
    model.train(mode == "train")
    for _ in range(2):  # move the running statistics off their initial values (a cumulative counter > 0)
        with torch.no_grad():
            model(three_view_batch(seed=5)[0][0].to(device, torch.float64))
    one, two = model, copy.deepcopy(model)
    x = three_view_batch()[0][2].to(device, torch.float64)
    rng_state = torch.cuda.get_rng_state if device == "cuda" else torch.get_rng_state
    results = []
    for net, single_pass in ((one, True), (two, False)):
        torch.manual_seed(11)
        callback = OnlineFineTuner(512, 4, single_pass=single_pass)
        feats = callback.features(net, x)
        logits = net.online_finetuner(feats)
        results.append((feats, logits, rng_state()))
    (f1, l1, rng1), (f2, l2, rng2) = results
    assert f1.dtype == torch.float64 and f1.shape == (8, 512)
    torch.testing.assert_close(f1, f2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(l1, l2, rtol=1e-12, atol=1e-12)
    assert torch.equal(rng1, rng2)  # the same random stream afterwards: the noise was drawn twice
    buffers = dict(two.named_buffers())
    for name, b in one.named_buffers():
        if name.endswith("num_batches_tracked"):
            assert torch.equal(b, buffers[name]), name
        else:
            torch.testing.assert_close(b, buffers[name], rtol=1e-12, atol=1e-14, msg=name)
    # train mode: the two passes moved the encoder's counters by 2 (after the 2 warm-up forwards)
    assert int(buffers["encoder.bn1.num_batches_tracked"]) == (4 if mode == "train" else 0)


def test_bayes_h_single_pass_probe_runs_the_encoder_once() -> None:
    torch.manual_seed(0)
    model = build_model("ssl_bayes_h", "mc_barlow_twins")
    calls = []
    model.encoder.register_forward_hook(lambda *args: calls.append(1))
    x = three_view_batch()[0][2]
    OnlineFineTuner(512, 4).features(model, x)
    assert len(calls) == 1
    OnlineFineTuner(512, 4, single_pass=False).features(model, x)
    assert len(calls) == 3


@pytest.mark.parametrize("autocast", [True, False])
def test_probe_features_follow_the_steps_autocast_and_the_probe_stays_fp32(autocast: bool) -> None:
    """Under a bf16-mixed trainer (CPU autocast) the encoder runs in bf16 when ``autocast`` is on and in fp32
    (autocast off, the reference) when it is off; the probe's logits and loss are fp32 either way."""
    from types import SimpleNamespace

    from pytorch_lightning.plugins.precision import MixedPrecision

    torch.manual_seed(0)
    model = build_model("ssl_bayes_h", "mc_barlow_twins")
    model.log = lambda *a, **k: None
    dtypes: list[torch.dtype] = []
    model.encoder.register_forward_hook(lambda module, inputs, out: dtypes.append(out.dtype))
    logits_dtypes: list[torch.dtype] = []
    callback = OnlineFineTuner(512, 4, autocast=autocast)
    trainer = SimpleNamespace(precision_plugin=MixedPrecision("bf16-mixed", "cpu"))
    callback.on_fit_start(trainer, model)
    model.online_finetuner.register_forward_hook(lambda module, inputs, out: logits_dtypes.append(out.dtype))
    loss, _ = callback.shared_step(model, three_view_batch(), trainer)
    assert dtypes == [torch.bfloat16 if autocast else torch.float32]
    assert logits_dtypes == [torch.float32] and loss.dtype == torch.float32
    plain = SimpleNamespace(precision_plugin=None)  # a 32-true trainer's plugin has no autocast
    callback.shared_step(model, three_view_batch(), plain)
    assert dtypes[-1] == torch.float32


def test_probe_switches_must_be_booleans() -> None:
    with pytest.raises(TypeError, match=r"callbacks\.online_finetuner\.single_pass must be true or false"):
        OnlineFineTuner(512, 4, single_pass="yes")  # type: ignore[arg-type]


def test_channels_last_gives_the_same_encoder_outputs_and_gradients() -> None:
    """channels_last changes only the encoder's memory format (weights and inputs): same values, same
    gradients, same state-dict keys (eval mode: BatchNorm's batch statistics on a tiny batch would amplify
    float32 summation-order noise)."""
    torch.manual_seed(0)
    plain = build_model("ssl", "barlow_twins").eval()
    nhwc = build_model("ssl", "barlow_twins", channels_last=True).eval()
    nhwc.load_state_dict(plain.state_dict())
    conv = nhwc.encoder.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and conv.dim() == 4
    assert nhwc.state_dict().keys() == plain.state_dict().keys()
    x = three_view_batch(batch_size=4, size=8)[0][0]
    weights = torch.randn(4, 512)
    outs = []
    for model in (plain, nhwc):
        out = model.encode(x)
        (out * weights).sum().backward()
        outs.append(out.detach())
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(plain.encoder.named_parameters(), nhwc.encoder.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5, msg=name)
