"""run_pipeline end to end on the demo data, for every model x loss combination (tiny settings; slow)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from src.task.checkpoint import load_ssl_model
from src.train.pipeline import run_pipeline
from tests.conftest import COMBINATIONS, compose_config
from tests.train.conftest import SCRIPT, TINY, compose_run, script_env


@pytest.mark.slow
@pytest.mark.parametrize(("model_name", "loss"), COMBINATIONS)
def test_pipeline_writes_the_output_layout(
    model_name: str, loss: str, demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # results hold paths relative to the working directory
    out = Path("data/results/demo") / f"{model_name}_{loss}"
    cfg = compose_run(model_name, loss, demo_root, out)
    results = run_pipeline(cfg)

    for rel in (
        "hydra_config.yaml",
        "run_config.json",
        "results.json",
        "checkpoints/model.ckpt",
        "checkpoints/last.ckpt",
        "finetune/checkpoints/last.ckpt",
        "csv/lightning_logs/version_0/metrics.csv",
        "finetune/csv/lightning_logs/version_0/metrics.csv",
    ):
        assert (out / rel).is_file(), rel
    saved = json.loads((out / "results.json").read_text())
    assert saved == results
    assert saved["model_ckpt_path"] == str(out / "checkpoints" / "model.ckpt")
    assert Path(saved["finetuner_ckpt_path"]).parent == out / "finetune" / "checkpoints"
    assert Path(saved["finetuner_ckpt_path"]).is_file()
    meta = saved["metadata"]
    assert meta["dataset"] == "demo" and meta["model_name"] == model_name and len(meta["run_id"]) == 8
    assert meta["train_iters_per_epoch"] == 866 // 32
    assert {"val_loss", "val_cl_loss", "val_online_acc", "val_online_loss"} <= set(saved["metrics"])
    if model_name != "ssl":
        assert f"val_mu_{model_name[-1]}_mean" in saved["metrics"]
    offline = saved["offline_metrics"]
    assert set(offline) == {"test_offline_loss", "test_offline_acc", "test_offline_acc_at_5", "test_offline_ece"}
    assert offline["test_offline_acc"] > 0.25, offline  # 8 classes: chance is 0.125

    # 3 training batches per epoch, fewer than log_every_n_steps (50): the interval follows the epoch,
    # so the training losses reach metrics.csv
    for phase, loss_key in (("", "train_loss"), ("finetune/", "train_offline_loss")):
        with (out / phase / "csv/lightning_logs/version_0/metrics.csv").open() as f:
            rows = [r for r in csv.DictReader(f) if r.get(loss_key)]
        assert rows and all(float(r[loss_key]) == float(r[loss_key]) for r in rows), (phase, loss_key)

    hydra_cfg = OmegaConf.load(out / "hydra_config.yaml")
    assert hydra_cfg.train.name == model_name and hydra_cfg.train.kwargs.train_iters_per_epoch is None
    assert "task: ${train.name}" in (out / "hydra_config.yaml").read_text()  # saved unresolved
    model = load_ssl_model(out / "checkpoints" / "model.ckpt", model_name)
    assert model.hparams["train_iters_per_epoch"] == 866 // 32
    # the best checkpoint holds the weights and plain hyper-parameters only; last.ckpt all a resume needs
    best = torch.load(out / "checkpoints" / "model.ckpt", weights_only=True)
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    resume_only = {"optimizer_states", "lr_schedulers", "callbacks", "resume_state"}
    assert not resume_only & set(best) and resume_only <= set(last)
    assert (
        best["state_dict"].keys() == last["state_dict"].keys() and best["hyper_parameters"]["model_name"] == model_name
    )
    # a complete checkpoint (what model.ckpt held before) still loads
    assert load_ssl_model(out / "checkpoints" / "last.ckpt", model_name).hparams == model.hparams
    ft = torch.load(out / "finetune" / "checkpoints" / "last.ckpt", weights_only=True)
    assert "predictor.weight" in ft["state_dict"] and any(k.startswith("model.encoder.") for k in ft["state_dict"])

    # a finished run started again does nothing
    stamp = (out / "results.json").stat().st_mtime_ns
    assert run_pipeline(cfg) is None
    assert (out / "results.json").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_finetune_updates_backbone_batchnorm_statistics(demo_root: Path, tmp_path: Path) -> None:
    """The frozen SSL module stays in train mode while the head trains (T-Q15b): the BN running
    statistics stored in the finetuner checkpoint differ from the pretraining checkpoint's."""
    out = tmp_path / "run"
    run_pipeline(compose_run("ssl", "barlow_twins", demo_root, out))
    pre = torch.load(out / "checkpoints" / "model.ckpt", weights_only=True)["state_dict"]
    ft = torch.load(out / "finetune" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert not torch.equal(pre["encoder.bn1.running_mean"], ft["model.encoder.bn1.running_mean"])
    assert torch.equal(pre["encoder.conv1.weight"], ft["model.encoder.conv1.weight"])  # weights stay frozen


@pytest.mark.slow
def test_debug_mode_and_tensorboard(demo_root: Path, tmp_path: Path) -> None:
    """`debug=default` limits every trainer whatever the task files say (T-Q18c is fixed)."""
    out = tmp_path / "debug"
    cfg = compose_run(
        "ssl_bayes_z",
        "mc_barlow_twins",
        demo_root,
        out,
        ["debug=default", "train.trainer.max_epochs=5", "logging.tensorboard=true"],
    )
    run_pipeline(cfg)
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert torch.load(out / "finetune" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert any((out / "tensorboard").rglob("events.out.tfevents.*"))


@pytest.mark.slow
def test_wandb_groups_pretrain_and_finetune(
    demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """One pipeline = one wandb group (its run id) with a pretrain and a finetune run, offline (WANDB_MODE),
    files in <phase folder>/wandb/, no deprecation warning; a resumed pipeline keeps its group."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    runs: list[tuple[str, str, str, str]] = []
    real_init = wandb.init

    def spy(**kwargs: Any) -> Any:
        run = real_init(**kwargs)
        runs.append((run.group, run.job_type, run.settings.mode, kwargs["dir"]))
        return run

    monkeypatch.setattr(wandb, "init", spy)
    out = tmp_path / "wb"
    cfg = compose_run("ssl", "barlow_twins", demo_root, out, ["debug=default", "logging.wandb=true"])
    run_pipeline(cfg)
    run_id = json.loads((out / "results.json").read_text())["metadata"]["run_id"]
    assert runs == [(run_id, "pretrain", "offline", str(out)), (run_id, "finetune", "offline", str(out / "finetune"))]
    for phase in (out, out / "finetune"):
        assert len(list((phase / "wandb").glob("offline-run-*/run-*.wandb"))) == 1
        assert not (phase / "wandb" / "wandb").exists()
    wandb_lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("wandb:")]
    assert wandb_lines and not [line for line in wandb_lines if "deprecat" in line.lower()]

    # the finetune of a resumed pipeline joins the group of its pretraining
    (out / "results.json").unlink()
    runs.clear()
    run_pipeline(cfg)
    assert runs == [(run_id, "finetune", "offline", str(out / "finetune"))]
    assert json.loads((out / "results.json").read_text())["metadata"]["run_id"] == run_id


@pytest.mark.slow
def test_script_multirun(demo_root: Path, tmp_path: Path) -> None:
    """The script as DVC runs it: a plain `python <script> -m ...` from the repository root."""
    out = tmp_path / "multirun_out"
    cmd = [
        sys.executable,
        str(SCRIPT),
        "-m",
        "dataset=demo",
        f"dataset.data_dir={demo_root}",
        "+model/task/ssl@train=ssl",
        "model/loss=vicreg",
        f"output_path={out}",
        *[o for o in TINY if "finetune." not in o],
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=script_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "runs" / "multirun.yaml").is_file() and (out / "runs" / "0" / ".hydra").is_dir()
    results = json.loads((out / "results.json").read_text())
    assert "offline_metrics" not in results and results["metadata"]["model_name"] == "ssl"


def test_missing_task_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"\+model/task/ssl@train="):
        run_pipeline(compose_config("dataset=demo"))


@pytest.mark.parametrize(
    ("code", "fix"),
    [(13, r"make it writable \(e\.g\. `chmod u\+w "), (28, r"free space there")],
    ids=["read-only", "full"],
)
def test_unwritable_output_folder_names_it_and_the_fix(
    code: int, fix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulated at the lowest level (creating the temporary file), so that it also holds when run as root, whom a
    read-only folder does not stop; the run stops at its first output, before any training."""
    import os
    import re

    import src.utils.io as io_module

    out = tmp_path / "run"

    def refuse(*args: object, dir: str, **kwargs: object) -> tuple[int, str]:
        raise OSError(code, os.strerror(code), str(Path(dir) / ".hydra_config.yaml.x.tmp"))

    monkeypatch.setattr(io_module.tempfile, "mkstemp", refuse)
    cfg = compose_run("ssl", "barlow_twins", tmp_path / "no_data_needed", out)
    with pytest.raises(OSError, match=rf"cannot write into the output folder {re.escape(str(out))} \(.*\); {fix}") as e:
        run_pipeline(cfg)
    assert ".tmp" not in str(e.value)
