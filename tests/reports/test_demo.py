"""The demo report's tables and sanity bars, on synthetic run and OOD outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from src.reports.demo import FAR_AUROC_CELL, MIN_FAR_AUROC, make_demo_report


def write_inputs(root: Path, ssl_acc: float, cell_far: float | None) -> tuple[Path, Path, Path]:
    """Runs, an OOD report and a probe report; the bar's cell has far AUROC ``cell_far`` (None: the row
    is absent) and another cell is better (99 %), which the bar must not take."""
    runs = root / "runs"
    for name, model, acc in [
        ("ssl_barlow_twins", "ssl", ssl_acc),
        ("ssl_vicreg", "ssl", 0.95),
        ("ssl_bayes_z_vicreg", "ssl_bayes_z", 0.5),
    ]:
        (runs / name).mkdir(parents=True)
        meta = {"model_name": model, "cl_loss_name": "barlow_twins"}
        if model != "ssl":
            meta |= {"mc_samples": 4, "beta_scale": 0.001}
        (runs / name / "results.json").write_text(
            json.dumps(
                {"metrics": {"val_online_acc": 0.5}, "metadata": meta, "offline_metrics": {"test_offline_acc": acc}}
            )
        )
    ood = root / "ood"
    ood.mkdir()
    detector, group = FAR_AUROC_CELL
    cells = {("knn", group): 80.0}  # an added detector listed first: the tables put the paper's first
    cells |= {(detector, group): cell_far, ("mds", group): 99.0, (detector, "ssl_barlow_twins"): 70.04}
    cells |= {("kldivsimk", "ssl_barlow_twins"): float("nan"), ("kldivsimk", group): 30.0}
    rows = []
    for (det, grp), far in cells.items():
        if far is None:
            continue
        rows.append(
            {
                "detector": det,
                "group": grp,
                "near_AUROC_mean": 60.0,
                "near_AUROC_std": float("nan"),
                "far_AUROC_mean": far,
                "far_AUROC_std": float("nan"),
                "near_FPR@95_mean": 50.0,
                "near_FPR@95_std": float("nan"),
                "far_FPR@95_mean": 20.0,
                "far_FPR@95_std": float("nan"),
                "seeds": 0 if far != far else 1,
            }
        )
    pd.DataFrame(rows).to_csv(ood / "ood_report.csv", index=False)
    for name in ("scores_ssl_vicreg.png", "auroc_heatmap.png", "roc_ssl_vicreg.png"):
        (ood / name).write_bytes(b"\x89PNG\r\n\x1a\nfake")
    probe = root / "probe"
    probe.mkdir()
    pd.DataFrame([{"dataset": "demo", "model_name": "ssl_vicreg", "test/accuracy": 0.9}]).to_csv(
        probe / "linear_probing_report.csv", index=False
    )
    return runs, ood, probe


BAR = MIN_FAR_AUROC


@pytest.mark.parametrize(
    ("ssl_acc", "cell_far", "passed"),
    [(0.9, BAR + 1, True), (0.9, BAR, True), (0.8, BAR + 1, False), (0.9, BAR - 0.1, False), (0.9, None, False)],
)
def test_sanity_bars_use_the_fixed_cell(tmp_path: Path, ssl_acc: float, cell_far: float | None, passed: bool) -> None:
    runs, ood, probe = write_inputs(tmp_path, ssl_acc, cell_far)
    out = tmp_path / "report"
    summary = make_demo_report(runs, ood, probe, out)
    bars = summary["sanity_bars"]
    assert bars["passed"] is passed
    assert bars["deterministic_test_acc"]["values"] == {"ssl_barlow_twins": ssl_acc, "ssl_vicreg": 0.95}
    detector, group = FAR_AUROC_CELL
    assert bars["far_auroc"] == {  # the named cell, not the best one (mds, 99 %)
        "value": cell_far,
        "detector": detector,
        "run": group,
        "threshold": BAR,
        "passed": cell_far is not None and cell_far >= BAR,
    }
    text = (out / "README.md").read_text()
    assert ("Sanity bars: PASSED" in text) is passed
    assert f"far-OOD AUROC of {detector} on {group} (a cell fixed in advance) >= {BAR:.0f} %" in text
    assert "![auroc_heatmap](figures/auroc_heatmap.png)" in text and (out / "figures" / "auroc_heatmap.png").is_file()
    figures = [line for line in text.splitlines() if line.startswith("![")]
    assert [f.split("]")[0][2:] for f in figures] == ["auroc_heatmap", "roc_ssl_vicreg", "scores_ssl_vicreg"]
    assert "ssl_vicreg" in text and "Linear probe" in text
    assert json.loads((out / "summary.json").read_text())["sanity_bars"]["passed"] is passed


def test_tables_one_decimal_and_dashes(tmp_path: Path) -> None:
    runs, ood, probe = write_inputs(tmp_path, 0.9, 91.26)
    make_demo_report(runs, ood, probe, tmp_path / "report")
    text = (tmp_path / "report" / "README.md").read_text()
    far = text.split("## OOD detection: far-OOD AUROC (%)")[1].split("##")[0]
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in far.splitlines()[4:] if "|" in line]
    rows = {c[1]: c[2:] for c in cells}
    header = [c.strip() for c in far.splitlines()[2].split("|")[1:-1]]
    assert header == ["set", "detector", FAR_AUROC_CELL[1], "ssl_barlow_twins"]
    assert [(c[0], c[1]) for c in cells] == [
        ("paper", FAR_AUROC_CELL[0]),
        ("paper", "mds"),
        ("paper", "kldivsimk"),
        ("added", "knn"),
    ]  # the paper's detectors first, then the added ones
    assert rows[FAR_AUROC_CELL[0]] == ["91.3", "70.0"]  # one decimal, printed with one
    assert rows["kldivsimk"] == ["30.0", "–"] and rows["mds"] == ["99.0", "–"] and rows["knn"] == ["80.0", "–"]
    assert "nan" not in text.lower() and "n = 1 seed per run" in text


def test_missing_inputs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="demo_pretrain"):
        make_demo_report(tmp_path, tmp_path, tmp_path, tmp_path / "out")


def test_demo_report_script_writes_the_dvc_metrics(tmp_path: Path) -> None:
    """demo_report.py (the demo_report stage): README.md, summary.json, then metrics/ and curves/."""
    from src.experiments.scripts import demo_report

    runs, ood, probe = write_inputs(tmp_path, 0.9, 95.0)
    out = tmp_path / "reports"
    argv = ["--runs-dir", str(runs), "--ood-report-dir", str(ood), "--probe-report-dir", str(probe)]
    demo_report.main([*argv, "--output-dir", str(out)])
    assert (out / "README.md").is_file() and (out / "summary.json").is_file()
    rows = sorted(p.relative_to(out / "metrics").as_posix() for p in (out / "metrics").rglob("*.json"))
    groups = ["ssl_barlow_twins.json", "ssl_bayes_z_vicreg.json"]
    runs_ = ["ssl_barlow_twins.json", "ssl_bayes_z_vicreg.json", "ssl_vicreg.json"]
    assert rows == [f"ood_far/{g}" for g in groups] + [f"ood_near/{g}" for g in groups] + [f"runs/{r}" for r in runs_]
    # the cell of write_inputs: knn 80, msp 95 (the sanity bar's), mds 99, kldivsimk 30; a NaN cell has no key
    assert json.loads((out / "metrics" / "ood_far" / "ssl_bayes_z_vicreg.json").read_text()) == {
        "knn": 80.0,
        "msp": 95.0,
        "mds": 99.0,
        "kldivsimk": 30.0,
    }
    assert json.loads((out / "metrics" / "ood_far" / "ssl_barlow_twins.json").read_text()) == {"msp": 70.04}
    assert json.loads((out / "metrics" / "runs" / "ssl_vicreg.json").read_text()) == {
        "val_online_acc": 0.5,
        "test_offline_acc": 0.95,
    }
    assert list((out / "curves").iterdir()) == []  # the synthetic runs have no Lightning log
