"""SemiSupervised (two learning rates, schedulers, MC logits) and run_semi_supervised end to end."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from src.task.semi_supervised import SemiSupervised
from src.train.run_config import RunConfigMismatch
from src.train.semi_supervised import pretrained_checkpoint, run_semi_supervised
from tests.conftest import build_model
from tests.downstream.conftest import CONF, ROOT, subprocess_env, write_imagenet

OPTIMIZER = {
    "_target_": "torch.optim.AdamW",
    "_partial_": True,
    "name": "adamw",
    "lr": 1e-4,
    "weight_decay": 1e-5,
    "lr_linear": 1e-3,
}
TINY = [
    "train.trainer.max_epochs=1",
    "train.trainer.accelerator=cpu",
    "train.trainer.devices=1",
    "+train.trainer.limit_train_batches=2",
    "+train.trainer.limit_val_batches=1",
    "+train.trainer.num_sanity_val_steps=0",
]


def semi(model_name: str = "ssl", loss: str = "barlow_twins", **kwargs: object) -> SemiSupervised:
    params: dict = dict(
        num_classes=8,
        learning_rate=1e-4,
        optimizer=OPTIMIZER,
        scheduler="cosine",
        scheduler_kwargs={"sch_eta_min_scale": 0.1},
    )
    params.update(kwargs)
    return SemiSupervised(pl_module=build_model(model_name, loss, dataset="demo", num_classes=8), **params)


def test_two_learning_rates_and_one_eta_min() -> None:
    model = semi()
    model.trainer = SimpleNamespace(max_epochs=50)  # type: ignore[assignment]
    conf = model.configure_optimizers()
    opt, sch = conf["optimizer"], conf["lr_scheduler"]
    assert isinstance(opt, torch.optim.AdamW) and sch["interval"] == "epoch"
    backbone, linear = opt.param_groups
    assert (backbone["name"], backbone["lr"], backbone["weight_decay"]) == ("backbone", 1e-4, 1e-5)
    assert (linear["name"], linear["lr"], linear["weight_decay"]) == ("linear", 1e-3, 1e-5)
    # every parameter of the SSL module is in the backbone group (projector and probe included)
    assert {id(p) for p in backbone["params"]} == {id(p) for p in model.model.parameters()}
    assert {id(p) for p in linear["params"]} == {id(p) for p in model.predictor.parameters()}
    cosine = sch["scheduler"]
    assert isinstance(cosine, torch.optim.lr_scheduler.CosineAnnealingLR) and cosine.T_max == 50
    assert cosine.eta_min == pytest.approx(1e-5)
    for _ in range(50):
        opt.step()
        cosine.step()
    # the shared eta_min (from the backbone lr) is where both groups end (D-Q25, T-Q26)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-5, 1e-5])
    assert model.hparams["optimizer"] == OPTIMIZER  # not mutated

    multi = semi(scheduler="multistep", scheduler_kwargs={"milestones": [3], "gamma": 0.5})
    multi.trainer = SimpleNamespace(max_epochs=50)  # type: ignore[assignment]
    step = multi.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert isinstance(step, torch.optim.lr_scheduler.MultiStepLR) and step.milestones == {3: 1}
    with pytest.raises(ValueError, match="scheduler='step'"):
        semi(scheduler="step")


def test_bayes_h_logits_average_fresh_mc_samples() -> None:
    model = semi("ssl_bayes_h", "mc_barlow_twins").eval()
    x = torch.randn(4, 3, 8, 8)
    torch.manual_seed(3)
    logits = model(x)
    torch.manual_seed(3)
    samples = model.model(x)[1]  # [M, B, L]
    expected = torch.stack([model.predictor(samples[m]) for m in range(samples.shape[0])]).mean(0)
    assert torch.allclose(logits, expected, atol=1e-6)
    assert not torch.allclose(model(x), model(x))  # re-sampled at every forward, also in eval mode (D-Q26)
    repr_model = semi("ssl_bayes_h", "mc_barlow_twins", use_mc_samples=False).eval()
    torch.manual_seed(3)
    out = repr_model.model(x)
    torch.manual_seed(3)
    assert torch.allclose(repr_model(x), repr_model.predictor(out[0]), atol=1e-6)


def compose_semi(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(version_base=None, config_dir=str(CONF)):
        return compose(config_name="semi_supervised", overrides=overrides)


@pytest.mark.slow
def test_run_semi_supervised_on_the_demo(runs_root: Path, demo_root: Path, chdir: Path) -> None:
    """Outputs, schema and ranges; the run's relative checkpoint path falls back to <run>/checkpoints (D-Q27)."""
    run = runs_root / "data/results/imagenet/ssl/ssl_barlow_twins"
    out = Path("data/results/demo/semi_supervised/ssl_barlow_twins")
    cfg = compose_semi(
        [
            "dataset=demo",
            f"dataset.data_dir={demo_root}",
            "dataset.task=semi_supervised",  # the demo config takes its task from train.name otherwise
            "dataset.input_height=8",
            "dataset.batch_size=16",
            f"run_path={run}",
            f"output_path={out}",
            *TINY,
        ]
    )
    results = run_semi_supervised(cfg)
    assert results is not None
    for rel in ("results.json", "checkpoints/model.ckpt", "checkpoints/last.ckpt", "csv/lightning_logs/version_0"):
        assert (out / rel).exists(), rel
    saved = json.loads((out / "results.json").read_text())
    assert saved == results
    assert set(saved["metrics"]) == {"test_loss", "test_accuracy", "test_accuracy_at_5", "test_ece"}
    assert all(0.0 <= saved["metrics"][k] <= 1.0 for k in ("test_accuracy", "test_accuracy_at_5", "test_ece"))
    assert saved["metrics"]["test_accuracy"] <= saved["metrics"]["test_accuracy_at_5"]
    assert saved["model_ckpt_path"] == str(out / "checkpoints" / "model.ckpt")
    meta = saved["metadata"]
    assert meta["dataset"] == "demo" and meta["_target_"] == "src.task.semi_supervised.SemiSupervised"
    assert meta["optimizer"]["lr_linear"] == 1e-3 and "run_id" not in saved

    ckpt = torch.load(out / "checkpoints" / "model.ckpt", weights_only=True)
    hp = ckpt["hyper_parameters"]
    assert "pl_module" not in hp and hp["run_name"] == "ssl_barlow_twins" and hp["model_name"] == "ssl"
    assert len(hp["original_run_id"]) == 8 and hp["pl_module_hparams"]["model_name"] == "ssl"
    reloaded = SemiSupervised.load_from_checkpoint(out / "checkpoints" / "model.ckpt", weights_only=True)
    assert torch.equal(reloaded.predictor.weight, ckpt["state_dict"]["predictor.weight"])

    assert "optimizer_states" not in ckpt and "optimizer_states" in torch.load(
        out / "checkpoints" / "last.ckpt", weights_only=True
    )

    stamp = (out / "results.json").stat().st_mtime_ns
    assert run_semi_supervised(cfg) is None  # finished: nothing is recomputed
    assert (out / "results.json").stat().st_mtime_ns == stamp
    # another config: refused before anything is written, the key named with both values
    changed = copy.deepcopy(cfg)
    changed.train.trainer.max_epochs = 2
    with pytest.raises(RunConfigMismatch, match=r"train\.trainer\.max_epochs: 1 → 2(.|\n)*overwrite=true"):
        run_semi_supervised(changed)
    assert (out / "results.json").stat().st_mtime_ns == stamp
    assert json.loads((out / "run_config.json").read_text())["parts"]["run"]["train.trainer.max_epochs"] == 1


@pytest.mark.slow
def test_dvc_stage_command_composes_and_runs(runs_root: Path, chdir: Path) -> None:
    """The DVC stage command, byte for byte (wandb options ignored, D-Q1), plus tiny-run overrides, as a subprocess."""
    ssl_dir = chdir / "data/results/imagenet/ssl"
    ssl_dir.mkdir(parents=True)
    (ssl_dir / "ssl_barlow_twins").symlink_to(runs_root / "data/results/imagenet/ssl/ssl_barlow_twins")
    write_imagenet(chdir / "data/datasets/imagenet1pct")
    m = "ssl_barlow_twins"
    dvc = [
        "dataset=imagenet1pct",
        "seed=1997",
        f"run_path=data/results/imagenet/ssl/{m}",
        f"output_path=data/results/imagenet/semi_supervised/imagenet1pct/{m}",
        "logging.tracking_project_name=bayes-ssl",
        '+logging.wandb_logger_kwargs.tags=["semi_supervised", "imagenet", "1pct"]',
    ]
    small = [
        "dataset.num_classes=3",
        "dataset.input_height=8",
        "dataset.resize_height=10",
        "dataset.batch_size=3",
        "dataset.num_workers=0",
        "dataset.persistent_workers=false",
        *TINY,
    ]
    env = subprocess_env()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "src/experiments/scripts/run_semi_supervised.py"), *dvc, *small],
        cwd=chdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    warning = "logging.tracking_project_name, logging.wandb_logger_kwargs is set but logging.wandb is false"
    assert warning in proc.stdout + proc.stderr
    out = chdir / f"data/results/imagenet/semi_supervised/imagenet1pct/{m}"
    results = json.loads((out / "results.json").read_text())
    assert results["metadata"]["dataset"] == "imagenet1pct"
    assert results["model_ckpt_path"] == f"{out.relative_to(chdir)}/checkpoints/model.ckpt"  # relative (D-Q27)


def test_pretrained_checkpoint_fallback(tmp_path: Path) -> None:
    """D-Q27: a recorded (absolute, moved) path that is gone falls back to <run>/checkpoints/model.ckpt."""
    run = {"model_ckpt_path": "/moved/repo/checkpoints/model.ckpt"}
    with pytest.raises(FileNotFoundError, match="model_ckpt_path='/moved/repo"):
        pretrained_checkpoint(run, tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "model.ckpt").write_bytes(b"")
    assert pretrained_checkpoint(run, tmp_path) == tmp_path / "checkpoints" / "model.ckpt"
