"""The three probing steps on the demo with the shipped `linear_probing/demo.yaml`, as the DVC stages call them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from src.experiments.scripts.evaluate_linear_probing import main as evaluate_main
from src.experiments.scripts.pre_embed_datasets import main as pre_embed_main
from tests.downstream.conftest import CONF, ROOT, subprocess_env


@pytest.mark.slow
def test_demo_pre_embed_probe_and_report(runs_root: Path, demo_root: Path, chdir: Path) -> None:
    (chdir / "data" / "demo").mkdir(parents=True)
    (chdir / "data" / "demo" / "dataset").symlink_to(demo_root)  # the config's dataset_dir
    run = runs_root / "data/results/imagenet/ssl/ssl_barlow_twins"
    config = str(CONF / "linear_probing" / "demo.yaml")
    target = "data/demo/embeddings/demo/ssl_barlow_twins"

    pre_embed_main(["--experiment-dir", str(run), "--config-path", config, "--target-dir", target])
    counts = {}
    for split in ("train", "val", "test"):
        raw = torch.load(Path(target) / f"{split}.pt", weights_only=True)
        assert raw["reps"].shape[1:] == (512,) and int(raw["labels"].max()) == 7
        counts[split] = raw["reps"].shape[0]
    assert counts["train"] > counts["test"] > counts["val"] > 0

    argv = ["--backbone-experiment-dir", str(run), "--config-path", config, "--pre-embedded-root-dir", target]
    evaluate_main([*argv, "--test-mode"])
    version = chdir / "data/demo/linear_probing/ssl_barlow_twins/demo/lightning_logs/version_0"
    (ckpt,) = (version / "checkpoints").iterdir()
    assert ckpt.name.startswith("epoch=19-")  # test mode: the last of the 20 epochs is tested

    # as DVC runs it: no PYTHONPATH, from the working directory holding data/
    env = subprocess_env()
    script = ROOT / "src/experiments/scripts/summarize_evaluation.py"
    cmd = [sys.executable, str(script), "--root-dir", "data/demo/linear_probing/"]
    proc = subprocess.run(cmd, cwd=chdir, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = pd.read_csv(chdir / "data/demo/reports/linear_probing_report.csv")
    assert report[["dataset", "model_id", "epoch"]].values.tolist() == [["demo", "ssl_barlow_twins", 19]]
    assert report.loc[0, "test/accuracy"] > 0.3  # 8 classes: chance is 0.125
    assert 0.0 <= report.loc[0, "test/ece"] <= 1.0
    md = (chdir / "data/demo/reports/linear_probing_report.md").read_text().splitlines()
    assert "test/accuracy |" in md[0] and md[2].startswith("| demo ")
    assert (
        "ssl_barlow_twins" in (chdir / "data/demo/reports/linear_probing_report.tex").read_text()
    )  # unescaped (D-Q19)

    # rerunning the finished steps recomputes nothing
    stamps = {p: p.stat().st_mtime_ns for p in (chdir / "data").rglob("*") if p.is_file()}
    pre_embed_main(["--experiment-dir", str(run), "--config-path", config, "--target-dir", target])
    evaluate_main([*argv, "--test-mode"])
    proc = subprocess.run(cmd, cwd=chdir, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in (chdir / "data").rglob("*") if p.is_file()} == stamps
