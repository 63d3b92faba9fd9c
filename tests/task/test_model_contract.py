"""Contract of every registered SSL model, with every loss it accepts and every prior: one training step
and one validation step through the real trainer builder (``src.train.trainer.build_trainer``, the
composed pretraining ``trainer`` and ``callbacks`` nodes, shrunk), then the checks every model must pass.

A new model, loss or prior is tested here by registering it (and adding its config file under the
same name): the cases come from the registries (``tests.conftest.model_combinations``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from src.task import SSL_MODELS
from src.task.checkpoint import load_ssl_model
from src.train.trainer import build_trainer
from src.utils.plain import to_plain
from tests.conftest import compose_config, model_combinations, model_overrides, three_view_batch

CASES = model_combinations(priors=True)
SHRINK = [
    "train.trainer.max_epochs=1",
    "train.trainer.accelerator=cpu",
    "+train.trainer.limit_train_batches=1",
    "+train.trainer.limit_val_batches=1",
    "+train.trainer.num_sanity_val_steps=0",
    "+train.trainer.log_every_n_steps=1",
    "+train.trainer.enable_progress_bar=false",
    "+train.trainer.enable_model_summary=false",
]


class OneBatch(Dataset):
    """The same three-view batch (a loader with batch_size=None)."""

    def __init__(self, seed: int) -> None:
        self.batch = three_view_batch(seed=seed)

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> Any:
        return self.batch


class OneBatchData(pl.LightningDataModule):
    """One training batch and one (other) validation batch."""

    def train_dataloader(self) -> DataLoader:
        return DataLoader(OneBatch(seed=0), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(OneBatch(seed=1), batch_size=None)


class ModeRecorder(pl.Callback):
    """What the modules' train/eval flags and the BatchNorm statistics are during each phase."""

    def __init__(self) -> None:
        self.train_modes: list[bool] = []
        self.val_modes: list[bool] = []
        self.val_changed_buffers: list[str] = []
        self._buffers: dict[str, torch.Tensor] = {}

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.train_modes.append(all(m.training for m in pl_module.modules()))

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._buffers = {k: v.clone() for k, v in pl_module.named_buffers()}

    def on_validation_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, *args: Any) -> None:
        self.val_modes.append(not any(m.training for m in pl_module.modules()))

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.val_changed_buffers = [k for k, v in pl_module.named_buffers() if not torch.equal(v, self._buffers[k])]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: "-".join(c))
def fitted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One case fitted for one training step and one validation step."""
    model_name, loss, prior = request.param
    cfg = compose_config(*model_overrides(model_name, loss, prior=prior), *SHRINK)
    kwargs = to_plain(cfg.train.kwargs)
    kwargs.pop("_target_")
    pl.seed_everything(0)
    model = SSL_MODELS[model_name](**kwargs, seed=int(cfg.seed))
    root = tmp_path_factory.mktemp("-".join(request.param))
    recorder = ModeRecorder()
    # the pretraining callbacks but the best-checkpoint writer: the last.ckpt writer that every phase
    # gets saves the one checkpoint the round trip needs
    callbacks_cfg = {k: v for k, v in to_plain(cfg.train.callbacks).items() if k != "checkpoint"}
    phase = build_trainer(
        cfg.train.trainer,
        root,
        callbacks_cfg=callbacks_cfg,
        logging_cfg={"csv": True},
        callbacks=[recorder],
        encoder_output_dim=int(kwargs["latent_dim"]),
        num_classes=int(kwargs["num_classes"]),
    )
    phase.fit(model, OneBatchData())
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    terms = set(model.last_step_terms)  # every term of the training step's output ending in "loss"
    return {
        "case": request.param,
        "model": model,
        "state": state,
        "step_terms": terms,
        "phase": phase,
        "recorder": recorder,
        "root": root,
    }


def test_one_training_and_one_validation_step_log_finite_losses(fitted: dict[str, Any]) -> None:
    model = fitted["model"]
    assert model.trainer.global_step == 1
    step_terms = fitted["step_terms"]
    assert "loss" in step_terms and "cl_loss" in step_terms
    expected = {f"{phase}_{term}" for phase in ("train", "val") for term in step_terms}
    expected |= {f"{phase}_online_{m}" for phase in ("train", "val") for m in ("acc", "loss")}
    expected.add("train_epoch")
    if model.stochastic_space is not None:
        rv = model.rv_name
        expected |= {f"{p}_{s}_{rv}_{x}" for p in ("train", "val") for s in ("mu", "sigma") for x in ("mean", "std")}
    # lr-*: the learning-rate monitor of the pretraining callbacks
    metrics = {k: v for k, v in model.trainer.callback_metrics.items() if not k.startswith("lr-")}
    assert set(metrics) == expected
    assert all(torch.isfinite(v).all() for v in metrics.values())
    csv = fitted["root"] / "csv" / "lightning_logs" / "version_0" / "metrics.csv"
    header = csv.read_text().splitlines()[0].split(",")
    assert expected <= set(header)


def test_the_progress_bar_shows_the_training_loss_and_the_kl_term(fitted: dict[str, Any]) -> None:
    """Display only: the total loss, and the unweighted KL/prior term of the stochastic models (T-Q5)."""
    model = fitted["model"]
    expected = {"train_loss"} | ({"train_kl_prior_loss"} if model.stochastic_space is not None else set())
    assert set(model.trainer.progress_bar_metrics) == expected
    shown = model.trainer.progress_bar_metrics
    assert all(isinstance(v, float) for v in shown.values())
    assert shown["train_loss"] == pytest.approx(float(model.last_step_terms["loss"]))


def test_train_and_eval_modes_are_kept(fitted: dict[str, Any]) -> None:
    """Every module trains in train mode and validates in eval mode; validation changes no buffer
    (BatchNorm running statistics), and the module is back in train mode after validation."""
    recorder = fitted["recorder"]
    assert recorder.train_modes == [True]
    assert recorder.val_modes == [True]
    assert recorder.val_changed_buffers == []
    assert all(m.training for m in fitted["model"].modules())


def test_the_main_optimizer_leaves_out_only_the_online_probe(fitted: dict[str, Any]) -> None:
    """The probe is trained by its own Adam (T-Q14); every other parameter is in the main optimizer."""
    model = fitted["model"]
    main = model.trainer.optimizers[0]
    in_main = {id(p) for g in main.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert {n for n, p in named.items() if id(p) in in_main} == {n for n in named if not n.startswith("online_")}


def test_checkpoint_round_trip_weights_only(fitted: dict[str, Any]) -> None:
    model = fitted["model"]
    path = Path(fitted["phase"].checkpoint_dir) / "last.ckpt"
    raw = torch.load(path, weights_only=True)  # plain values only: no pickled code
    assert raw["hyper_parameters"]["model_name"] == fitted["case"][0]
    assert to_plain(raw["hyper_parameters"]) == raw["hyper_parameters"]
    loaders = [load_ssl_model]
    if fitted["case"] == CASES[0]:  # Lightning's own loader too, once (it builds the same way)
        loaders.append(lambda p: SSL_MODELS[fitted["case"][0]].load_from_checkpoint(p, weights_only=True))
    for load in loaders:
        reloaded = load(path)
        assert type(reloaded) is type(model)
        state = reloaded.state_dict()
        assert state.keys() == fitted["state"].keys()
        for k, v in fitted["state"].items():
            torch.testing.assert_close(state[k], v, rtol=0, atol=0, msg=k)
