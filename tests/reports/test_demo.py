"""The demo report's tables and sanity bars, on synthetic run and OOD outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from src.reports.demo import make_demo_report


def write_inputs(root: Path, ssl_acc: float, best_far: float) -> tuple[Path, Path, Path]:
    runs = root / "runs"
    for name, model, acc in [
        ("ssl_barlow_twins", "ssl", ssl_acc),
        ("ssl_vicreg", "ssl", 0.95),
        ("ssl_bayes_h_barlow", "ssl_bayes_h", 0.5),
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
    rows = []
    for det, far in [("msp", 70.0), ("mds", best_far), ("gram", 40.0)]:
        for group in ("ssl_barlow_twins", "ssl_bayes_h_barlow"):
            rows.append(
                {
                    "detector": det,
                    "group": group,
                    "near_AUROC_mean": 60.0,
                    "near_AUROC_std": 0.0,
                    "far_AUROC_mean": far - (group == "ssl_barlow_twins"),
                    "far_AUROC_std": 0.0,
                    "near_FPR@95_mean": 50.0,
                    "near_FPR@95_std": 0.0,
                    "far_FPR@95_mean": 20.0,
                    "far_FPR@95_std": 0.0,
                    "seeds": 1,
                }
            )
    pd.DataFrame(rows).to_csv(ood / "ood_report.csv", index=False)
    (ood / "auroc_heatmap.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    probe = root / "probe"
    probe.mkdir()
    pd.DataFrame([{"dataset": "demo", "model_name": "ssl_vicreg", "test/accuracy": 0.9}]).to_csv(
        probe / "linear_probing_report.csv", index=False
    )
    return runs, ood, probe


@pytest.mark.parametrize(("ssl_acc", "best_far", "passed"), [(0.9, 95.0, True), (0.8, 95.0, False), (0.9, 85.0, False)])
def test_sanity_bars(tmp_path: Path, ssl_acc: float, best_far: float, passed: bool) -> None:
    runs, ood, probe = write_inputs(tmp_path, ssl_acc, best_far)
    out = tmp_path / "report"
    summary = make_demo_report(runs, ood, probe, out)
    bars = summary["sanity_bars"]
    assert bars["passed"] is passed
    assert bars["deterministic_test_acc"]["values"] == {"ssl_barlow_twins": ssl_acc, "ssl_vicreg": 0.95}
    assert bars["best_far_auroc"] == {
        "value": best_far if best_far > 70 else 70.0,
        "detector": "mds" if best_far > 70 else "msp",
        "run": "ssl_bayes_h_barlow",
        "threshold": 90.0,
        "passed": best_far >= 90,
    }
    text = (out / "README.md").read_text()
    assert ("Sanity bars: PASSED" in text) is passed
    assert "![auroc_heatmap](figures/auroc_heatmap.png)" in text and (out / "figures" / "auroc_heatmap.png").is_file()
    assert "ssl_vicreg" in text and "Linear probe" in text
    assert json.loads((out / "summary.json").read_text())["sanity_bars"]["passed"] is passed


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
    groups = ["ssl_barlow_twins.json", "ssl_bayes_h_barlow.json"]
    runs_ = ["ssl_barlow_twins.json", "ssl_bayes_h_barlow.json", "ssl_vicreg.json"]
    assert rows == [f"ood_far/{g}" for g in groups] + [f"ood_near/{g}" for g in groups] + [f"runs/{r}" for r in runs_]
    assert json.loads((out / "metrics" / "ood_far" / "ssl_bayes_h_barlow.json").read_text()) == {
        "msp": 70.0,
        "mds": 95.0,
        "gram": 40.0,
    }
    assert json.loads((out / "metrics" / "runs" / "ssl_vicreg.json").read_text()) == {
        "val_online_acc": 0.5,
        "test_offline_acc": 0.95,
    }
    assert list((out / "curves").iterdir()) == []  # the synthetic runs have no Lightning log
