"""Optimizers (scale_lr, timm's LARS) and schedulers against their closed forms, and contract tests over
the ``OPTIMIZERS`` and ``SCHEDULERS`` registries (a new optimizer or scheduler is tested by registering it)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from timm.optim import Lars

from src.task.optim import OPTIMIZERS, SCHEDULERS, build_optimizer, build_scheduler, effective_lr
from src.utils.plain import to_plain

CONF = Path(__file__).resolve().parents[2] / "src" / "experiments" / "conf"

ADAMW = {
    "_target_": "torch.optim.AdamW",
    "_partial_": True,
    "name": "adamw",
    "scale_lr": True,
    "lr": 1e-3,
    "weight_decay": 1e-4,
}
SGD = {
    "_target_": "torch.optim.SGD",
    "name": "sgd",
    "scale_lr": True,
    "lr": 0.06,
    "weight_decay": 5e-4,
    "momentum": 0.9,
}
LARS = {
    "_target_": "lightly.utils.lars.LARS",
    "name": "lars",
    "scale_lr": True,
    "lr": 0.2,
    "weight_decay": 1.5e-6,
    "momentum": 0.9,
    "trust_coefficient": 0.001,
}


def params() -> list[torch.nn.Parameter]:
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]


def test_scale_lr_uses_the_per_device_batch() -> None:
    assert effective_lr(ADAMW, 256) == 1e-3
    assert effective_lr(ADAMW, 512) == pytest.approx(2e-3)
    assert effective_lr({**ADAMW, "scale_lr": False}, 512) == 1e-3
    opt = build_optimizer(params(), ADAMW, 128)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4) and opt.param_groups[0]["weight_decay"] == 1e-4
    assert ADAMW["lr"] == 1e-3 and "name" in ADAMW  # the spec dict is not mutated (T-Q4)


@pytest.mark.parametrize(
    ("spec", "cls"),
    [
        (ADAMW, torch.optim.AdamW),
        (SGD, torch.optim.SGD),
        (LARS, Lars),
        ({"name": "adam", "lr": 1e-3}, torch.optim.Adam),
    ],
)
def test_optimizer_registry(spec, cls) -> None:
    assert type(build_optimizer(params(), spec, 256)) is cls


def test_unknown_optimizer_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not a known optimizer"):
        build_optimizer(params(), {"_target_": "torch.optim.Adagrad", "lr": 1.0}, 256)
    with pytest.raises(ValueError, match="has no `lr`"):
        build_optimizer(params(), {"name": "sgd"}, 256)


def test_lars_step_matches_the_reference_formula() -> None:
    """local = trust ||p|| / (||g|| + wd ||p|| + eps); d = (g + wd p) local; buf = d; p -= lr buf."""
    p = params()[0]
    g = torch.randn_like(p)
    p.grad = g.clone()
    expected = p.detach().clone()
    wd, trust, lr, eps = 1.5e-6, 0.001, 0.2, 1e-8
    local = trust * expected.norm() / (g.norm() + wd * expected.norm() + eps)
    expected -= lr * (g + wd * expected) * local
    build_optimizer([p], LARS, 256).step()
    torch.testing.assert_close(p.detach(), expected)


def _sched(name: str, max_epochs: int = 10, total_steps: int = 100, **kw):
    opt = torch.optim.AdamW(params(), lr=1e-3)
    cfg = build_scheduler(
        name,
        opt,
        learning_rate=1e-3,
        eta_min_scale=kw.pop("eta_min_scale", 0.01),
        max_epochs=max_epochs,
        total_steps=total_steps,
        **kw,
    )
    return opt, cfg


def test_cosine_per_epoch_closed_form() -> None:
    opt, cfg = _sched("cosine", max_epochs=200)
    assert cfg["interval"] == "epoch"
    eta_min = 1e-5
    for e in range(201):
        lr = eta_min + (1e-3 - eta_min) * (1 + math.cos(math.pi * e / 200)) / 2
        assert opt.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-6, abs=1e-12), e
        opt.step()
        cfg["scheduler"].step()


def test_cosine_warmup_factors() -> None:
    """ImageNet: T = 100 * 5004 steps, W = 4 epochs of steps, cosine to 0.5; tested on a small T."""
    max_epochs, total = 10, 250
    opt, cfg = _sched("cosine_warmup", max_epochs=max_epochs, total_steps=total, eta_min_scale=0.5)
    assert cfg["interval"] == "step"
    w = int(total / max_epochs * 4)
    assert w == 100
    end = 0.5
    for s in range(total + 1):
        if s < w:
            f = (s + 1) / w
        else:
            t, span = s - w, total - w
            f = end if t == span else end - (end - 1) * (1 + math.cos(math.pi * t / (span - 1))) / 2
        assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * f, rel=1e-9), s
        opt.step()
        cfg["scheduler"].step()
    # the reference's concrete ImageNet numbers: 5004 steps per epoch, 100 epochs
    opt, cfg = _sched("cosine_warmup", max_epochs=100, total_steps=500_400, eta_min_scale=0.5)
    fn = cfg["scheduler"].lr_lambdas[0]
    assert fn.warmup_steps == 20_016
    assert fn(0) == pytest.approx(1 / 20_016) and fn(20_015) == 1.0 and fn(500_399) == pytest.approx(0.5)


def test_lambda_needs_warmup_epochs() -> None:
    with pytest.raises(ValueError, match="warmup_epochs"):
        _sched("lambda")
    opt, cfg = _sched("lambda", train_iters_per_epoch=5, warmup_epochs=2)
    factors = []
    for _ in range(12):
        factors.append(opt.param_groups[0]["lr"] / 1e-3)
        opt.step()
        cfg["scheduler"].step()
    assert factors == pytest.approx([s / 10 for s in range(10)] + [1.0, 1.0])


def test_one_cycle_is_stepped_per_step() -> None:
    opt, cfg = _sched("one_cycle", max_epochs=2, total_steps=20)
    assert cfg["interval"] == "step"
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        cfg["scheduler"].step()
    assert max(lrs) == pytest.approx(1e-3, rel=1e-3)  # reaches max_lr (per-epoch stepping never would)
    assert lrs[0] == pytest.approx(1e-3 / 25)


def test_cosine_warm_restarts() -> None:
    _opt, cfg = _sched("cosine_warm_restarts", max_epochs=20)
    assert cfg["scheduler"].T_0 == 2 and cfg["scheduler"].T_mult == 2 and cfg["scheduler"].eta_min == 1e-5
    with pytest.raises(ValueError, match="max_epochs >= 10"):
        _sched("cosine_warm_restarts", max_epochs=5)


def test_no_and_unknown_scheduler() -> None:
    assert _sched(None)[1] is None and _sched("")[1] is None
    with pytest.raises(ValueError, match=r"train.scheduler: 'step' is not a known scheduler; known: cosine, "):
        _sched("step")


# ---- contract tests: every registered optimizer and scheduler, every optimizer config ---------------
#: every option a registered scheduler may read; a new scheduler needing another one fails here, by name
SCHEDULE_CONTEXT = dict(
    learning_rate=1e-3,
    eta_min_scale=0.01,
    max_epochs=10,
    total_steps=100,
    train_iters_per_epoch=10,
    warmup_epochs=1,
    milestones=[2, 5],
    gamma=0.1,
)
OPTIMIZER_CONFIGS = sorted(p.stem for p in (CONF / "model" / "optimizer").glob("*.yaml"))


def _weights_only_round_trip(state: dict) -> dict:
    """``state`` saved and loaded back with ``torch.load(weights_only=True)`` (what a checkpoint resume does)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _step_with_grads(opt: torch.optim.Optimizer) -> None:
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = torch.ones_like(p)
    opt.step()


@pytest.mark.parametrize("key", list(OPTIMIZERS))
def test_every_registered_optimizer_steps_and_its_state_loads_weights_only(key: str) -> None:
    ps = params()
    before = [p.detach().clone() for p in ps]
    opt = build_optimizer(ps, {"name": key, "lr": 0.01, "weight_decay": 1e-4}, 256)
    assert type(opt) is OPTIMIZERS[key]
    _step_with_grads(opt)
    assert any(not torch.equal(p.detach(), b) for p, b in zip(ps, before))
    state = _weights_only_round_trip(opt.state_dict())
    fresh = build_optimizer(params(), {"name": key, "lr": 0.01, "weight_decay": 1e-4}, 256)
    fresh.load_state_dict(state)
    assert fresh.state_dict()["param_groups"] == opt.state_dict()["param_groups"]


@pytest.mark.parametrize("config", OPTIMIZER_CONFIGS)
def test_every_optimizer_config_builds_through_the_registry(config: str) -> None:
    """The composed ``model.optimizer`` node, as the models receive it, builds and steps."""
    with initialize_config_dir(version_base=None, config_dir=str(CONF)):
        cfg = compose(config_name="config", overrides=[f"model/optimizer={config}"])
    spec = to_plain(cfg.model.optimizer)
    opt = build_optimizer(params(), spec, 512)
    assert type(opt) is OPTIMIZERS[OPTIMIZERS.resolve(spec)]
    expected_lr = spec["lr"] * (2 if spec.get("scale_lr") else 1)  # batch 512 = 2 x 256
    assert opt.param_groups[0]["lr"] == pytest.approx(expected_lr)
    _step_with_grads(opt)
    _weights_only_round_trip(opt.state_dict())


@pytest.mark.parametrize("key", list(SCHEDULERS))
def test_every_registered_scheduler_steps_and_its_state_loads_weights_only(key: str) -> None:
    """Lightning stores scheduler states in checkpoints: they must load with weights_only=True."""
    opt = torch.optim.AdamW(params(), lr=1e-3)
    ctx = dict(SCHEDULE_CONTEXT)
    cfg = build_scheduler(key, opt, **ctx)
    assert cfg["interval"] in ("step", "epoch")
    sch = cfg["scheduler"]
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    assert all(math.isfinite(lr) and lr >= 0 for lr in lrs)
    assert len(set(lrs)) > 1, "the schedule never changed the learning rate"
    state = _weights_only_round_trip(sch.state_dict())
    again = build_scheduler(key, torch.optim.AdamW(params(), lr=1e-3), **ctx)["scheduler"]
    again.load_state_dict(state)
    assert again.state_dict()["last_epoch"] == sch.state_dict()["last_epoch"] == 12


@pytest.mark.parametrize("key", list(SCHEDULERS))
def test_every_registered_scheduler_builds_from_the_task_config(key: str) -> None:
    """``train.scheduler=<key>`` composes, and the task node's options (``sch_eta_min_scale``) suffice."""
    with initialize_config_dir(version_base=None, config_dir=str(CONF)):
        cfg = compose(config_name="config", overrides=["+model/task/ssl@train=ssl", f"train.scheduler={key}"])
    kwargs = to_plain(cfg.train.kwargs)
    assert kwargs["scheduler"] == key
    ctx = {**SCHEDULE_CONTEXT, "eta_min_scale": kwargs["sch_eta_min_scale"], "learning_rate": kwargs["learning_rate"]}
    assert build_scheduler(key, torch.optim.AdamW(params(), lr=1e-3), **ctx)["scheduler"] is not None


def test_multistep_needs_its_options() -> None:
    with pytest.raises(ValueError, match=r"multistep needs \['milestones', 'gamma'\]"):
        build_scheduler(
            "multistep",
            torch.optim.AdamW(params(), lr=1e-3),
            learning_rate=1e-3,
            eta_min_scale=None,
            max_epochs=3,
            total_steps=9,
        )
    opt = torch.optim.AdamW(params(), lr=1.0)
    sch = build_scheduler(
        "multistep",
        opt,
        learning_rate=1.0,
        eta_min_scale=None,
        max_epochs=3,
        total_steps=9,
        milestones=[1, 2],
        gamma=0.5,
    )
    assert sch["interval"] == "epoch"
    lrs = []
    for _ in range(3):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sch["scheduler"].step()
    assert lrs == [1.0, 0.5, 0.25]


def test_per_step_schedulers_ask_for_the_step_count_only_when_they_need_it() -> None:
    asked = []

    def total() -> int:
        asked.append(1)
        return 100

    build_scheduler(
        "cosine",
        torch.optim.AdamW(params(), lr=1e-3),
        learning_rate=1e-3,
        eta_min_scale=0.01,
        max_epochs=10,
        total_steps=total,
    )
    assert asked == []
    build_scheduler(
        "one_cycle",
        torch.optim.AdamW(params(), lr=1e-3),
        learning_rate=1e-3,
        eta_min_scale=0.01,
        max_epochs=10,
        total_steps=total,
    )
    assert asked == [1]
