"""The Fashion-MNIST GPU study (src/reports/fashion_mnist_study.py): the DVC stages' steps, in one process."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from src.experiments.scripts.fashion_mnist_gpu import parse_args
from src.ood.detectors import study_order
from src.reports.fashion_mnist_study import (
    PROTOCOLS,
    StudySettings,
    commands,
    compose_run,
    own_process_state,
    phase_log,
    run_study,
    steps,
)
from tests.data.conftest import write_fashion_mnist_source

ROOT = Path(__file__).resolve().parents[2]
#: a study in about a minute on a CPU: the synthetic files' 12 images per class, a 64-wide head, 3 steps
TINY_RUN = (
    "model.backbone.hidden_dim=64",
    "model.backbone.z_dim=64",
    "+train.trainer.limit_train_batches=3",
    "+train.trainer.limit_val_batches=2",
    "+finetune.trainer.limit_val_batches=2",
)


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
    settings = StudySettings(**{**args, "protocols": tuple(args["protocols"]), "overrides": tuple(args["overrides"])})
    assert settings == StudySettings()
    assert StudySettings().protocols == PROTOCOLS == ("fashion_mnist", "fashion_mnist_split")
    more = parse_args(["--override", "a.b=1", "--override", "+c=2", "--ood-count", "50", "--ood-batch-size", "64"])
    assert more.overrides == ["a.b=1", "+c=2"] and more.ood_count == "50" and more.ood_batch_size == 64


def test_each_step_calls_what_its_command_runs(tmp_path: Path) -> None:
    """The in-process call of a step gets the values its printed command would pass to the script."""
    from src.experiments.scripts import prepare_fashion_mnist, run_ood_study

    settings = StudySettings(
        output_root=tmp_path, source_dir=tmp_path / "src", protocols=("fashion_mnist_split",), ood_count="40",
        overrides=("model.backbone.hidden_dim=64",),
    )  # fmt: skip
    todo = steps(settings)
    assert [s.call for s in todo] == ["prepare"] + ["pipeline"] * 6 + ["ood", "summarize"]
    data = vars(prepare_fashion_mnist.parse_args(list(todo[0].args)))
    assert {k: v for k, v in data.items() if k != "download"} == todo[0].kwargs and data["download"] is False
    ood = vars(run_ood_study.parse_args(list(todo[7].args)))
    kwargs = todo[7].kwargs
    assert {k: ood[k] for k in kwargs if k != "progress"} == {k: v for k, v in kwargs.items() if k != "progress"}
    assert ood["no_progress"] is True and kwargs["progress"] is False
    assert todo[8].kwargs == {
        "results_dir": kwargs["output_dir"],
        "output_dir": tmp_path / "reports/fashion_mnist_split/ood",
    }
    # a run: the config composed from the real tree with the command's overrides, the extra ones last
    bayes = next(s for s in todo if s.name == "ssl_bayes_z_vicreg_beta_0.001_mc_12_seed_1997")
    assert bayes.args[-1] == "model.backbone.hidden_dim=64"
    cfg = compose_run(bayes.args)
    assert (
        cfg.train.name == "ssl_bayes_z"
        and cfg.model.loss._target_.endswith(".MCVICRegLoss")
        and cfg.train.mc_samples == 12
    )
    assert cfg.dataset.name == "fashion_mnist_split" and cfg.model.backbone.hidden_dim == 64
    assert cfg.output_path == str(tmp_path / "results/fashion_mnist_split/runs" / bayes.name)
    assert cfg.finetune.trainer.max_epochs == 5 and "hydra" not in cfg
    assert bayes.done == tmp_path / "results/fashion_mnist_split/runs" / bayes.name / "results.json"


def test_phase_log_takes_records_and_output_then_restores(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    quiet = logging.getLogger("tests.fashion_mnist_study.own")  # a logger that keeps its records (as Lightning's)
    quiet.propagate = False
    quiet.addHandler(logging.NullHandler())
    own = quiet.handlers[:]
    with phase_log(tmp_path / "logs" / "00_x.log"):
        logging.getLogger("tests.fashion_mnist_study").info("a record")
        quiet.info("its own record")
        print("printed")
        print("to stderr", file=sys.stderr)
    text = (tmp_path / "logs" / "00_x.log").read_text()
    for line in ("[tests.fashion_mnist_study][INFO] - a record", "own][INFO] - its own record", "printed", "to stderr"):
        assert line in text
    assert root.handlers == handlers and root.level == level and quiet.handlers == own
    out = capsys.readouterr()
    assert "printed" not in out.out and "to stderr" not in out.err


def test_own_process_state_restores_the_global_settings() -> None:
    precision, benchmark = torch.get_float32_matmul_precision(), torch.backends.cudnn.benchmark
    method = mp.get_start_method(allow_none=True)
    with own_process_state(start_method="spawn"):
        assert mp.get_start_method() == "spawn"
        torch.set_float32_matmul_precision("medium" if precision != "medium" else "high")
        torch.backends.cudnn.benchmark = not benchmark
    assert torch.get_float32_matmul_precision() == precision and torch.backends.cudnn.benchmark == benchmark
    assert mp.get_start_method(allow_none=True) == method


def test_a_failing_step_stops_the_study_with_its_log(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = tmp_path / "bad"
    source.mkdir()
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (source / name).write_bytes(b"not an IDX file")
    out = tmp_path / "out"
    assert run_study(StudySettings(output_root=out, source_dir=source, protocols=("fashion_mnist",))) == 1
    err = capsys.readouterr().err
    assert "[data] failed: ValueError" in err and "00_data.log" in err
    assert "Traceback" in (out / "logs" / "00_data.log").read_text()
    record = json.loads((out / "study.json").read_text())
    assert record["failed_phase"] == "data" and list(record["phases_s"]) == ["data"]
    assert not (out / "results").exists()  # nothing after the failed step ran


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


def run_files(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_study_runs_in_one_process_and_reuses_finished_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The whole chain for one protocol, tiny, in this process: the files the stages' commands write (a run
    folder's as run_pipeline.py writes them, without Hydra's own .hydra_run records), then a rerun that
    reuses every finished run and OOD record."""
    started: list[str] = []
    popen = subprocess.Popen

    class RecordingPopen(popen):  # type: ignore[misc,valid-type]
        def __init__(self, args, *a, **k) -> None:
            started.append(" ".join(map(str, args)) if isinstance(args, (list, tuple)) else str(args))
            super().__init__(args, *a, **k)

    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    write_fashion_mnist_source(tmp_path / "source")
    out = tmp_path / "study"
    settings = StudySettings(
        output_root=out, source_dir=tmp_path / "source", protocols=("fashion_mnist_split",), train_per_class="all",
        ood_count="12", epochs=1, finetune_epochs=1, batch_size=8, num_workers=0, ood_batch_size=64, mc_samples=2,
        overrides=TINY_RUN,
    )  # fmt: skip
    assert run_study(settings) == 0
    first = capsys.readouterr().out
    assert not [cmd for cmd in started if "src/experiments/scripts" in cmd]  # no step ran as a subprocess
    assert first.count("[pretrain fashion_mnist_split]") == 6 and "| mds " in first
    assert re.search(r"device: CPU \(no CUDA device\); torch .*; date: \d{4}-\d\d-\d\d; pretraining epochs: 1", first)
    runs = out / "results" / "fashion_mnist_split" / "runs"
    names = sorted(p.name for p in runs.iterdir())
    assert names == sorted(s.name for s in steps(settings) if s.call == "pipeline")
    for name in names:
        files = run_files(runs / name)
        finetune = [f for f in files if re.fullmatch(r"finetune/checkpoints/epoch=0-step=\d+\.ckpt", f)]
        assert len(finetune) == 1
        assert files - set(finetune) == {
            "checkpoints/last.ckpt",
            "checkpoints/model.ckpt",
            "checkpoints/pretrain_done.json",
            "csv/lightning_logs/version_0/metrics.csv",
            "finetune/checkpoints/last.ckpt",
            "finetune/csv/lightning_logs/version_0/metrics.csv",
            "hydra_config.yaml",
            "results.json",
            "run_config.json",
        }
        results = json.loads((runs / name / "results.json").read_text())
        assert set(results) >= {"metrics", "offline_metrics", "metadata"}
    assert sorted(p.name for p in (out / "logs").iterdir()) == [
        "00_data.log",
        *[f"0{i}_pretrain_fashion_mnist_split.log" for i in range(1, 7)],
        "07_ood_fashion_mnist_split.log",
        "08_ood_report_fashion_mnist_split.log",
    ]
    assert "Seed set to 1997" in (out / "logs" / "01_pretrain_fashion_mnist_split.log").read_text()
    ood = out / "results" / "ood" / "fashion_mnist_split"
    assert sorted(p.name for p in ood.iterdir() if p.is_dir()) == sorted(study_order())  # the paper's and the added
    for detector in ood.iterdir():
        if detector.is_dir():
            assert {p.name for p in detector.glob("*.json")} == {"runs.json", *(f"{n}.json" for n in names)}
    reports = out / "reports" / "fashion_mnist_split" / "ood"
    assert {"ood_report.csv", "ood_report.md", "ood_report.tex", "auroc_heatmap.png"} <= {
        p.name for p in reports.iterdir()
    }
    record = json.loads((out / "study.json").read_text())
    assert record["failed_phase"] is None and record["reused_runs"] == [] and record["pretraining_epochs"] == 1
    assert list(record["phases_s"]) == [
        "data", "pretrain fashion_mnist_split", "ood fashion_mnist_split", "ood report fashion_mnist_split", "report"
    ]  # fmt: skip

    # a rerun: every run and OOD record is reused, nothing is rewritten
    stamps = {
        p: p.stat().st_mtime_ns for p in [*runs.rglob("*.ckpt"), *runs.rglob("results.json"), *ood.rglob("*.npz")]
    }
    assert run_study(settings) == 0
    again = capsys.readouterr().out
    assert again.count("reused") == 6 and "[pretrain fashion_mnist_split] ssl_" not in again
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    record = json.loads((out / "study.json").read_text())
    assert sorted(record["reused_runs"]) == names and "pretrain fashion_mnist_split" not in record["phases_s"]
