"""Multi-step training of every model x loss combination on random tensors (CPU): falling loss,
checkpoints that load with weights_only=True, determinism, bf16 autocast (slow; one step of every
model, loss and prior is the fast contract in test_model_contract.py)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Dataset

from src.task import SSL_MODELS
from src.task.checkpoint import load_ssl_model
from src.train.callbacks.online_finetuner import OnlineFineTuner
from tests.conftest import COMBINATIONS, build_model, model_kwargs, three_view_batch


class RepeatedBatch(Dataset):
    """The same three-view batch `steps` times (a loader with batch_size=None)."""

    def __init__(self, steps: int, batch_size: int = 8, seed: int = 0) -> None:
        self.batch = three_view_batch(batch_size=batch_size, seed=seed)
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int):
        return self.batch


class LossRecorder(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def fit(model: pl.LightningModule, root: Path, steps: int = 6, epochs: int = 1, **trainer_kwargs) -> LossRecorder:
    recorder = LossRecorder()
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        gradient_clip_val=0.5,
        callbacks=[
            recorder,
            OnlineFineTuner(512, 4),
            ModelCheckpoint(dirpath=root / "checkpoints", filename="model", save_last=True),
        ],
        num_sanity_val_steps=0,
        **trainer_kwargs,
    )
    loader = DataLoader(RepeatedBatch(steps), batch_size=None)
    trainer.fit(model, loader, DataLoader(RepeatedBatch(1, seed=1), batch_size=None))
    return recorder


def fixed_draw_loss(model: pl.LightningModule) -> float:
    """The training loss on the training batch with one fixed MC draw: free of sampling noise.

    Computed on a copy, so the train-mode BatchNorm running statistics of `model` stay as trained."""
    model = copy.deepcopy(model).train()
    torch.manual_seed(7)
    with torch.no_grad():
        return float(model.shared_step(RepeatedBatch(1).batch)["loss"])


@pytest.mark.slow
@pytest.mark.parametrize(("model_name", "loss"), COMBINATIONS)
def test_trains_with_falling_loss_and_reloads_weights_only(model_name: str, loss: str, tmp_path: Path) -> None:
    pl.seed_everything(0)
    kwargs = model_kwargs(model_name, loss, prior="mog" if model_name == "ssl_bayes_z" else "standard")
    kwargs["optimizer"]["lr"] = 3e-3
    model = SSL_MODELS[model_name](**kwargs)
    before = fixed_draw_loss(model)
    recorder = fit(model, tmp_path, steps=10)
    after = fixed_draw_loss(model)
    assert len(recorder.losses) == 10 and all(torch.isfinite(torch.tensor(recorder.losses)))
    assert after < 0.98 * before, (before, after, recorder.losses)

    path = tmp_path / "checkpoints" / "model.ckpt"
    raw = torch.load(path, weights_only=True)  # plain values only
    assert raw["hyper_parameters"]["model_name"] == model_name
    reloaded = load_ssl_model(path, model_name)
    also = SSL_MODELS[model_name].load_from_checkpoint(path, weights_only=True)
    for other in (reloaded, also):
        assert type(other) is type(model)
        for k, v in model.state_dict().items():
            torch.testing.assert_close(other.state_dict()[k], v, msg=k)
    # same outputs in eval mode (Bayes-H samples: compare the Gaussian parameters)
    model.eval()
    reloaded.eval()
    x = three_view_batch()[0][2]
    with torch.no_grad():
        a, b = model(x), reloaded(x)
    if isinstance(a, tuple):
        a, b = a[2], b[2]
    torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_same_seed_gives_identical_losses(tmp_path: Path) -> None:
    runs = []
    for i in range(2):
        pl.seed_everything(1997)
        model = build_model("ssl_bayes_h", "mc_vicreg", prior="mog")
        runs.append(fit(model, tmp_path / str(i), steps=3).losses)
    assert runs[0] == runs[1]
    pl.seed_everything(1998)
    other = fit(build_model("ssl_bayes_h", "mc_vicreg", prior="mog"), tmp_path / "other", steps=3).losses
    assert other != runs[0]


@pytest.mark.slow
def test_bf16_autocast_step_keeps_fp32_losses(tmp_path: Path) -> None:
    pl.seed_everything(0)
    model = build_model("ssl_bayes_h", "mc_barlow_twins")
    recorder = fit(model, tmp_path, steps=2, precision="bf16-mixed")
    assert all(torch.isfinite(torch.tensor(recorder.losses)))
