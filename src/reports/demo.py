"""The demo's one-page report: ``data/demo/reports/README.md`` plus ``summary.json``.

Collects the six demo runs (pretraining + finetune), the OOD study's table and figures and the
linear-probe table, and checks two sanity bars:

- every deterministic (``ssl``) model, finetuned, reaches an ID test accuracy >= 0.85;
- the best detector (over runs) reaches a far-OOD AUROC >= 90 %.

``summary.json`` holds the numbers and whether each bar passed; CI fails when one does not.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from src.utils.io import read_json, write_json, write_text

MIN_DETERMINISTIC_ACC = 0.85
MIN_BEST_FAR_AUROC = 90.0


def run_table(runs_dir: Path) -> pd.DataFrame:
    rows = []
    for results in sorted(runs_dir.glob("*/results.json")):
        r = read_json(results)
        meta = r["metadata"]
        rows.append(
            {
                "run": results.parent.name,
                "model": meta["model_name"],
                "loss": meta.get("cl_loss_name"),
                "mc_samples": meta.get("mc_samples", "-"),
                "beta_scale": meta.get("beta_scale", "-"),
                "val_online_acc": r["metrics"].get("val_online_acc"),
                "test_offline_acc": (r.get("offline_metrics") or {}).get("test_offline_acc"),
            }
        )
    if not rows:
        raise FileNotFoundError(f"no <run>/results.json under {runs_dir}; run the demo_pretrain stages first")
    return pd.DataFrame(rows)


def sanity_bars(runs: pd.DataFrame, ood: pd.DataFrame) -> dict[str, Any]:
    det = runs[runs["model"] == "ssl"]
    det_acc = {row.run: float(row.test_offline_acc) for row in det.itertuples()}
    best = ood.loc[ood["far_AUROC_mean"].idxmax()]
    bars = {
        "deterministic_test_acc": {
            "values": det_acc,
            "threshold": MIN_DETERMINISTIC_ACC,
            "passed": bool(det_acc) and min(det_acc.values()) >= MIN_DETERMINISTIC_ACC,
        },
        "best_far_auroc": {
            "value": float(best["far_AUROC_mean"]),
            "detector": str(best["detector"]),
            "run": str(best["group"]),
            "threshold": MIN_BEST_FAR_AUROC,
            "passed": float(best["far_AUROC_mean"]) >= MIN_BEST_FAR_AUROC,
        },
    }
    bars["passed"] = bars["deterministic_test_acc"]["passed"] and bars["best_far_auroc"]["passed"]
    return bars


def _md(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False, floatfmt=".3f")


def make_demo_report(runs_dir: Path, ood_report_dir: Path, probe_report_dir: Path, output_dir: Path) -> dict[str, Any]:
    runs = run_table(runs_dir)
    ood_csv = ood_report_dir / "ood_report.csv"
    if not ood_csv.is_file():
        raise FileNotFoundError(f"{ood_csv} is missing; run the demo_ood_report stage first")
    ood = pd.read_csv(ood_csv)
    probe_csv = probe_report_dir / "linear_probing_report.csv"
    probe = pd.read_csv(probe_csv) if probe_csv.is_file() else None
    bars = sanity_bars(runs, ood)

    figures = output_dir / "figures"
    if figures.exists():
        shutil.rmtree(figures)
    figures.mkdir(parents=True)
    pngs = sorted(ood_report_dir.glob("*.png"))
    for png in pngs:
        shutil.copy2(png, figures / png.name)

    near_far = ood.pivot_table(index="detector", columns="group", values="far_AUROC_mean").round(1)
    near = ood.pivot_table(index="detector", columns="group", values="near_AUROC_mean").round(1)
    fpr = ood.pivot_table(index="detector", columns="group", values="far_FPR@95_mean").round(1)
    status = "PASSED" if bars["passed"] else "FAILED"
    lines = [
        "# Demo report",
        "",
        "Stochastic SSL (Barlow Twins and VICReg; deterministic, Bayes-H, Bayes-Z) trained on the embedded demo "
        "data: scikit-learn's handwritten digits 0–7 as in-distribution, digits 8–9 as near-OOD, photo patches "
        "and noise as far-OOD (the OpenOOD v1.5 protocol in miniature). Produced by `dvc repro demo_report`.",
        "",
        f"## Sanity bars: {status}",
        "",
        f"- finetuned deterministic models' ID test accuracy >= {MIN_DETERMINISTIC_ACC}: "
        + ", ".join(f"{k} {v:.3f}" for k, v in bars["deterministic_test_acc"]["values"].items())
        + (" ✔" if bars["deterministic_test_acc"]["passed"] else " ✘"),
        f"- best far-OOD AUROC >= {MIN_BEST_FAR_AUROC:.0f} %: {bars['best_far_auroc']['value']:.1f} % "
        f"({bars['best_far_auroc']['detector']} on {bars['best_far_auroc']['run']})"
        + (" ✔" if bars["best_far_auroc"]["passed"] else " ✘"),
        "",
        "## Pretraining and finetuning",
        "",
        "`val_online_acc`: the online linear probe during pretraining; `test_offline_acc`: the finetuned linear "
        "head on the ID test split (micro accuracy).",
        "",
        _md(runs),
        "",
        "## OOD detection: far-OOD AUROC (%)",
        "",
        _md(near_far.reset_index()),
        "",
        "## OOD detection: near-OOD AUROC (%)",
        "",
        _md(near.reset_index()),
        "",
        "## OOD detection: far-OOD FPR@95 (%)",
        "",
        _md(fpr.reset_index()),
        "",
        "Probabilistic detectors (sigmamean, logpprior, kldivsimk) give no score for deterministic models. "
        "sigmamean, kldivsimk and gram keep the reference's score orientation (see the project README).",
        "",
    ]
    if probe is not None:
        lines += ["## Linear probe (macro accuracy)", "", _md(probe), ""]
    lines += ["## Figures", ""]
    for png in pngs:
        lines += [f"![{png.stem}](figures/{png.name})", ""]
    write_text(output_dir / "README.md", "\n".join(lines))
    summary = {"sanity_bars": bars, "runs": runs.to_dict(orient="records")}
    write_json(output_dir / "summary.json", summary, indent=2)
    return summary
