"""The Fashion-MNIST GPU study (src/reports/fashion_mnist_study.py): its commands are the DVC stages'."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from src.experiments.scripts.fashion_mnist_gpu import parse_args
from src.reports.fashion_mnist_study import PROTOCOLS, StudySettings, commands, run_study

ROOT = Path(__file__).resolve().parents[2]


def test_commands_match_the_dvc_stages() -> None:
    steps = commands(StudySettings(epochs=3, source_dir=Path("/data/fmnist")))
    phases = [phase for phase, _, _ in steps]
    assert phases[0] == "data" and "--source-dir" in steps[0][1]
    assert phases.count("pretrain fashion_mnist") == phases.count("pretrain fashion_mnist_split") == 6
    assert phases[-1] == "ood report fashion_mnist_split"
    runs = {done.parent.name for _, _, done in steps if done is not None}
    assert "ssl_barlow_twins_seed_1997" in runs and "ssl_bayes_z_vicreg_beta_0.001_mc_12_seed_1997" in runs
    bayes = next(cmd for phase, cmd, done in steps if done is not None and "bayes_h_vicreg" in str(done))
    for override in ("+model/task/ssl@train=ssl_bayes_h", "model/loss=mc_vicreg", "train.trainer.max_epochs=3"):
        assert override in bayes
    # the printed commands are those the dvc.yaml stages run (same scripts, same override keys)
    dvc = (ROOT / "dvc.yaml").read_text()
    for key in ("+model/task@finetune=finetune", "finetune.offline_learning_rate", "--postprocessor-name all"):
        assert key in dvc
    for script in {cmd[1] for _, cmd, _ in steps}:
        assert (ROOT / script).is_file() and script in dvc


def test_cli_defaults_are_the_settings_defaults() -> None:
    args = vars(parse_args([]))
    assert args.pop("dry_run") is False
    assert StudySettings(**{**args, "protocols": tuple(args["protocols"])}) == StudySettings()
    assert StudySettings().protocols == PROTOCOLS == ("fashion_mnist", "fashion_mnist_split")


def test_dry_run_prints_the_commands(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run_study(StudySettings(output_root=tmp_path, protocols=("fashion_mnist",)), dry_run=True) == 0
    out = capsys.readouterr().out
    assert out.count("run_pipeline.py") == 6 and "fashion_mnist_split" not in out
    assert not any(tmp_path.iterdir())  # nothing ran


@pytest.mark.slow
def test_script_dry_run() -> None:
    out = subprocess.run(
        [sys.executable, "src/experiments/scripts/fashion_mnist_gpu.py", "--dry-run", "--protocols", "fashion_mnist"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.count("run_pipeline.py") == 6 and "fashion_mnist_split" not in out
