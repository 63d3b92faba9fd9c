"""Hydra sweeps of run_pipeline (src/train/sweep.py): a sweep whose jobs would share one output folder is
refused before anything trains; with the joblib launcher two jobs run in parallel processes, each into
its own `output_path`, and Hydra's sweep files go to `hydra.sweep.dir` (slow: subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from src.train.sweep import shared_output_path_error
from tests.train.conftest import SCRIPT, script_env

BETAS = (0.001, 0.01)


@pytest.mark.slow
def test_joblib_sweep_gives_every_job_its_own_output_path(demo_root: Path, tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    cmd = [
        sys.executable,
        str(SCRIPT),
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "dataset=demo",
        f"dataset.data_dir={demo_root}",
        "dataset.input_height=8",
        "dataset.batch_size=32",
        "+model/task/ssl@train=ssl_bayes_z",
        "model/loss=mc_vicreg",
        "model.backbone.hidden_dim=32",
        "model.backbone.z_dim=32",
        "train.trainer.max_epochs=1",
        "+train.trainer.limit_train_batches=2",
        "+train.trainer.limit_val_batches=1",
        "train.trainer.accelerator=cpu",
        "train.mc_samples=2",
        "++train.beta_scale=" + ",".join(map(str, BETAS)),
        # the swept value goes into the path (resolved per job), as the docs recommend
        "output_path=out/ssl_bayes_z_vicreg_beta_${train.beta_scale}",
        "hydra.sweep.dir=out/sweep",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=script_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr

    sweep = tmp_path / "out" / "sweep"
    multirun = OmegaConf.load(sweep / "multirun.yaml")
    assert multirun.hydra.launcher.n_jobs == 2
    assert "++train.beta_scale=0.001,0.01" in multirun.hydra.overrides.task

    seen = {}
    for num, beta in enumerate(BETAS):
        job = sweep / str(num)
        assert (job / ".hydra" / "config.yaml").is_file() and (job / "run_pipeline.log").is_file()
        assert f"++train.beta_scale={beta}" in OmegaConf.load(job / ".hydra" / "overrides.yaml")
        out = tmp_path / "out" / f"ssl_bayes_z_vicreg_beta_{beta}"
        results = json.loads((out / "results.json").read_text())
        assert Path(results["model_ckpt_path"]).parent.parent.name == out.name  # its own checkpoint
        assert (out / "checkpoints" / "model.ckpt").is_file() and (out / "hydra_config.yaml").is_file()
        seen[beta] = results["metadata"]
    assert [m["beta_scale"] for m in seen.values()] == list(BETAS)
    assert all(m["model_name"] == "ssl_bayes_z" and m["mc_samples"] == 2 for m in seen.values())
    assert seen[BETAS[0]]["run_id"] != seen[BETAS[1]]["run_id"]


@pytest.mark.parametrize(
    ("overrides", "refused"),
    [
        (["dataset=demo", "train.beta_scale=0.001,0.01"], True),  # default output_path for every job
        (["train.beta_scale=0.001,0.01", "output_path=data/results/x"], True),  # one fixed folder
        (["train.beta_scale=0.001,0.01", "output_path=data/results/b_${train.beta_scale}"], False),
        (["model/prior=standard,mog", "output_path=a,b"], False),  # output_path swept itself
        (["train.beta_scale=0.001", "output_path=data/results/x"], False),  # one job (the DVC stages)
    ],
)
def test_a_sweep_whose_jobs_would_share_output_path_is_refused(overrides: list[str], refused: bool) -> None:
    error = shared_output_path_error(overrides)
    assert (error is not None) == refused
    if refused:
        assert "train.beta_scale" in error and "output_path" in error and "${train.beta_scale}" in error


@pytest.mark.slow
def test_the_script_refuses_a_sweep_into_one_folder_before_training(demo_root: Path, tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        str(SCRIPT),
        "-m",
        "dataset=demo",
        f"dataset.data_dir={demo_root}",
        "+model/task/ssl@train=ssl_bayes_z",
        "model/loss=mc_vicreg",
        "++train.beta_scale=0.001,0.01",
        "output_path=out/one_folder",
        "hydra.sweep.dir=out/sweep",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=script_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "would write every job to output_path=out/one_folder" in proc.stderr
    assert not (tmp_path / "out" / "one_folder").exists()  # refused before any job wrote anything
