"""The OOD report from hand-written study outputs: the table (mean ± std over seeds, in the study
order), its csv/md/tex files, the figures, and the text summarize_ood.py prints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src.reports.ood import make_report, summarize

METRICS = ("FPR@95", "AUROC", "AUPR_IN", "AUPR_OUT", "ACC")


def rows(near: float, far: float) -> list[dict[str, float | str]]:
    out: list[dict[str, float | str]] = []
    for name, auroc in (("a", near), ("nearood", near), ("b", far), ("farood", far)):
        out.append({"Dataset": name, **{m: 50.0 for m in METRICS}, "AUROC": auroc, "FPR@95": 100 - auroc})
    return out


def write_results(root: Path) -> None:
    """Two detectors (in reverse study order on disk) x one group with two seeds, plus a null record."""
    scores = {"ssl_x_seed_1": (70.0, 80.0), "ssl_x_seed_2": (74.0, 90.0)}
    for detector, shift in (("mds", 0.0), ("msp", 10.0)):
        out = root / detector
        (out / "scores").mkdir(parents=True)
        records = []
        for run, (near, far) in scores.items():
            records.append({"run_name": run, "model_name": "ssl", "ood_scores": rows(near + shift, far)})
            rng = np.random.default_rng(0)
            np.savez(
                out / "scores" / f"{run}.npz", id=rng.normal(1, 1, 50), a=rng.normal(0, 1, 40), b=rng.normal(-1, 1, 30)
            )
        records.append({"run_name": "ssl_y_seed_1", "model_name": "ssl", "ood_scores": None})
        (out / "runs.json").write_text(json.dumps(records))


def test_report_table_files_and_figures(tmp_path: Path) -> None:
    write_results(tmp_path / "results")
    report = make_report(tmp_path / "results", tmp_path / "report")
    table = report["table"]
    assert list(table["detector"]) == ["msp", "mds"]  # the study order, not the folder order
    assert list(table["group"]) == ["ssl_x", "ssl_x"] and list(table["seeds"]) == [2, 2]
    msp = table.iloc[0]
    assert msp["near_AUROC_mean"] == pytest.approx(82.0) and msp["near_AUROC_std"] == pytest.approx(
        np.std([80, 84], ddof=1)
    )
    assert msp["far_AUROC_mean"] == pytest.approx(85.0) and msp["far_FPR@95_mean"] == pytest.approx(15.0)
    csv = pd.read_csv(tmp_path / "report" / "ood_report.csv")
    assert list(csv["detector"]) == ["msp", "mds"] and csv["near_AUROC_mean"].iloc[1] == pytest.approx(72.0)
    md = (tmp_path / "report" / "ood_report.md").read_text()
    assert "82.00 ± 2.83" in md
    assert r"$\pm$" in (tmp_path / "report" / "ood_report.tex").read_text()
    assert report["run"] == "ssl_x_seed_1"  # scored by the most detectors, then by name
    names = {p.name for p in report["figures"]}
    assert names == {"auroc_heatmap.png", "roc_ssl_x_seed_1.png", "scores_ssl_x_seed_1.png"}
    for path in report["figures"]:
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summarize_prints_the_table_and_the_figures(tmp_path: Path) -> None:
    write_results(tmp_path / "results")
    text = summarize(tmp_path / "results", tmp_path / "report", run="ssl_x_seed_2")
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["detector", "group", "near_AUROC_mean"]
    assert lines[-1].endswith("scores_ssl_x_seed_2.png") and lines[-3].endswith("auroc_heatmap.png")
