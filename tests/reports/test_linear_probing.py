"""summarize_evaluation.py: rows, order, formats, the up-to-date check and layout errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from src.reports.linear_probing import summarize

PROBES = [
    ("ssl_vicreg", "imagenet", 99, 0.61234567, 0.05),
    ("ssl_bayes_h_vicreg_beta_1e-05", "flowers-102", 79, 0.9, 0.1),
    ("ssl_barlow_twins", "SUN397", 49, 0.55, 0.02),
    ("ssl_bayes_h_vicreg_beta_1e-05", "SUN397", 49, 0.56, 0.03),
]


def write_probe(root: Path, model: str, dataset: str, epoch: int, acc: float, ece: float) -> Path:
    version = root / model / dataset / "lightning_logs" / "version_0"
    (version / "checkpoints").mkdir(parents=True)
    (version / "checkpoints" / f"epoch={epoch}-step={epoch * 10 + 10}.ckpt").write_bytes(b"")
    (version / "metrics.json").write_text(json.dumps({"test/accuracy": acc, "test/ece": ece}))
    return version


def test_report_rows_order_and_formats(tmp_path: Path) -> None:
    root = tmp_path / "data" / "linear_probing"
    for probe in PROBES:
        write_probe(root, *probe)
    outputs = summarize(str(root) + "/")  # as DVC passes it, with the trailing slash
    reports = tmp_path / "data" / "reports"
    assert {p.parent for p in outputs.values()} == {reports}
    csv = (reports / "linear_probing_report.csv").read_text().splitlines()
    assert csv[0] == "dataset,model_id,model_name,epoch,test/accuracy,test/ece"
    # code-point order of dataset (upper case first), then model_name
    assert [line.split(",")[:2] for line in csv[1:]] == [
        ["SUN397", "ssl_barlow_twins"],
        ["SUN397", "ssl_bayes_h_vicreg_beta_1e-05"],
        ["flowers-102", "ssl_bayes_h_vicreg_beta_1e-05"],
        ["imagenet", "ssl_vicreg"],
    ]
    assert csv[4] == "imagenet,ssl_vicreg,ssl_vicreg,99,0.6123,0.0500"  # %.4f
    md = (reports / "linear_probing_report.md").read_text()
    assert "0.612346" in md and md.splitlines()[1].startswith("|:")  # tabulate pipe table, `g` floats
    tex = (reports / "linear_probing_report.tex").read_text()
    assert "\\toprule" in tex and "ssl_vicreg & ssl_vicreg & 99 & 0.612 & 0.050" in tex  # %.3f, unescaped (D-Q19)
    frame = pd.read_csv(reports / "linear_probing_report.csv")
    assert frame["test/accuracy"].between(0, 1).all()

    # up to date: not rewritten; a newer metrics.json: rewritten
    stamps = {p: p.stat().st_mtime_ns for p in outputs.values()}
    summarize(root)
    assert {p: p.stat().st_mtime_ns for p in outputs.values()} == stamps
    newer = write_probe(root, "ssl_vicreg", "SUN397", 49, 0.5, 0.1) / "metrics.json"
    future = max(stamps.values()) + 10**9
    os.utime(newer, ns=(future, future))
    summarize(root)
    assert len(pd.read_csv(reports / "linear_probing_report.csv")) == 5


def test_layout_errors(tmp_path: Path) -> None:
    root = tmp_path / "lp"
    version = write_probe(root, "m", "SUN397", 49, 0.5, 0.1)
    (version / "checkpoints" / "epoch=48-step=480.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match="exactly one"):
        summarize(root)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        summarize(tmp_path / "absent")
