"""NonFiniteLossGuard on a tiny module: it stops at the first bad step (the default) naming the step and
the bad terms, or, switched to the reference's behaviour, warns once and lets training go on; the
pipeline configs' ``continue_on_non_finite_loss`` reaches it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from src.train.callbacks.fault_guard import NonFiniteLossError, NonFiniteLossGuard
from src.train.pipeline import stop_on_non_finite_loss
from src.train.trainer import build_trainer
from tests.conftest import compose_config

BAD_STEP = 2


class Tiny(pl.LightningModule):
    """A linear regression whose loss terms become NaN at training step BAD_STEP."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(3, 1)
        self.steps_seen = 0

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        mse = ((self.net(x) - y) ** 2).mean()
        extra = torch.tensor(float("nan")) if self.global_step == BAD_STEP else torch.zeros(())
        self.last_step_terms = {"loss": (mse + extra).detach(), "mse_loss": mse.detach(), "extra_loss": extra}
        self.steps_seen += 1
        return mse  # the optimizer step stays finite: only the reported terms are bad

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(12, 3, generator=g), torch.randn(12, 1, generator=g)), batch_size=2)


def fit(guard: NonFiniteLossGuard, root: Path) -> Tiny:
    model = Tiny()
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=[guard],
    )
    trainer.fit(model, loader())
    return model


def test_stops_at_the_first_bad_step_and_names_the_bad_terms(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLossError, match=rf"global step {BAD_STEP} \(epoch 0, batch {BAD_STEP}\)") as e:
        fit(NonFiniteLossGuard(check_every_n_steps=1), tmp_path)
    assert "non-finite terms: loss, extra_loss." in str(e.value)
    assert "continue_on_non_finite_loss=true" in str(e.value)  # the message names the switch


def test_checks_only_every_n_steps_on_the_host(tmp_path: Path) -> None:
    """The flags stay on the device until a check: with n = 4 the error comes at step 4, naming step 2."""
    guard = NonFiniteLossGuard(check_every_n_steps=4)
    with pytest.raises(NonFiniteLossError, match=rf"global step {BAD_STEP} "):
        fit(guard, tmp_path)
    assert guard._steps == 4


@pytest.mark.parametrize(("n", "steps_run"), [(2, 4), (3, 3), (5, 5), (7, 6)])  # n = 7: the epoch-end check
def test_the_first_bad_step_is_named_whatever_the_check_interval(n: int, steps_run: int, tmp_path: Path) -> None:
    """The host-side list of steps and the device counter restart together after a clean check, so the bad
    step is named right whether it falls in the first window (n > 2) or after a clean check (n = 2)."""
    guard = NonFiniteLossGuard(check_every_n_steps=n)
    with pytest.raises(NonFiniteLossError, match=rf"global step {BAD_STEP} \(epoch 0, batch {BAD_STEP}\)"):
        fit(guard, tmp_path)
    assert guard._steps == steps_run


def test_a_step_between_checks_copies_nothing_from_the_host_and_reads_nothing_back() -> None:
    """Between checks a step's device work is only kernels on device tensors: no tensor made from Python
    values (``aten.lift_fresh``, a host-to-device copy on a GPU) and no value read back (``_local_scalar_dense``,
    ``.item()``/``bool()``); the check reads one value."""
    from types import SimpleNamespace

    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            self.names.append(str(func.overloadpacket.__name__))
            return func(*args, **(kwargs or {}))

    guard = NonFiniteLossGuard(check_every_n_steps=3)
    trainer = SimpleNamespace(current_epoch=0, global_step=0, checkpoint_callbacks=[])
    module = SimpleNamespace(last_step_terms={"loss": torch.ones(()), "kl_loss": torch.zeros(())})
    guard.on_train_batch_end(trainer, module, None, None, 0)  # first step: allocates the flags
    steps = []
    for step in (1, 2):
        trainer.global_step = step + 1
        with Ops() as ops:
            guard.on_train_batch_end(trainer, module, None, None, step)
        steps.append(ops.names)
    assert steps[0] and not any(n in ("lift_fresh", "_local_scalar_dense", "item") for n in steps[0])
    assert steps[1].count("_local_scalar_dense") == 1  # the third step checks: one read
    assert guard._where == [] and int(guard._count) == 0  # a clean check forgets the steps it looked at


def test_switched_off_it_warns_once_and_training_goes_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="src.train.callbacks.fault_guard"):
        model = fit(NonFiniteLossGuard(check_every_n_steps=1, stop=False), tmp_path)
    assert model.steps_seen == 6  # the whole epoch
    warnings = [r for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(warnings) == 1
    assert f"global step {BAD_STEP}" in warnings[0].getMessage() and "extra_loss" in warnings[0].getMessage()


def test_stop_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="stop must be a bool"):
        NonFiniteLossGuard(stop="no")  # type: ignore[arg-type]


@pytest.mark.parametrize(("setting", "stop"), [(None, True), ("false", True), ("true", False)])
def test_the_config_switch_reaches_every_phase_trainer(setting: str | None, stop: bool, tmp_path: Path) -> None:
    overrides = ["+model/task/ssl@train=ssl", "model/loss=barlow_twins", "+model/task@finetune=finetune"]
    if setting is not None:
        overrides.append(f"continue_on_non_finite_loss={setting}")
    cfg = compose_config(*overrides)
    assert stop_on_non_finite_loss(cfg) is stop
    for phase in ("train", "finetune"):
        built = build_trainer(
            cfg[phase].trainer, tmp_path / phase, logging_cfg={}, stop_on_non_finite_loss=stop_on_non_finite_loss(cfg)
        )
        guards = [c for c in built.trainer.callbacks if isinstance(c, NonFiniteLossGuard)]
        assert len(guards) == 1 and guards[0].stop is stop


def test_semi_supervised_config_has_the_switch() -> None:
    cfg = compose_config("continue_on_non_finite_loss=true", config_name="semi_supervised")
    assert stop_on_non_finite_loss(cfg) is False
    assert stop_on_non_finite_loss(compose_config(config_name="semi_supervised")) is True
