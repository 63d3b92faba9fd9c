"""The OOD study's report: one table over detectors x run groups, and figures.

Reads ``<results_dir>/<detector>/runs.json`` (the driver's output) and writes to ``output_dir``:

- ``ood_report.{csv,md,tex}``: per detector and run group (the run name without its
  ``_seed_<n>`` suffix) the near/far AUROC and FPR@95 as mean ± std over seeds (percent);
- ``auroc_heatmap.png``: near and far AUROC, detector x run group;
- ``roc_<run>.png`` and ``scores_<run>.png`` for one chosen run: per detector, the ROC curve
  of ID test vs each OOD set and the histograms of the scores (from ``scores/<run>.npz``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display needed

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from src.ood.detectors import study_order
from src.utils.io import atomic_write, read_json, write_text

SEED_SUFFIX = re.compile(r"_seed_\d+$")


def run_group(run_name: str) -> str:
    return SEED_SUFFIX.sub("", run_name)


def load_results(results_dir: Path) -> pd.DataFrame:
    """Long table: detector, run, group, model_name, Dataset, FPR@95, AUROC, AUPR_IN, AUPR_OUT, ACC."""
    rows: list[dict[str, Any]] = []
    found = sorted(p for p in results_dir.glob("*/runs.json"))
    if not found:
        raise FileNotFoundError(
            f"no <detector>/runs.json under {results_dir}; run src/experiments/scripts/run_ood_study.py first"
        )
    for path in found:
        detector = path.parent.name
        records = read_json(path)  # invalid JSON: a ValueError naming the file
        if not isinstance(records, list) or not all(isinstance(r, dict) and "ood_scores" in r for r in records):
            raise ValueError(
                f"{path} is not a runs.json of run_ood_study.py (expected a list of run records with 'ood_scores'); "
                "delete it and run the study for this detector again (its per-run records are reused; under DVC, "
                "`dvc repro` the study's stage)"
            )
        for run in records:
            for score in run["ood_scores"] or []:
                rows.append(
                    {
                        "detector": detector,
                        "run": run["run_name"],
                        "group": run_group(run["run_name"]),
                        "model_name": run["model_name"],
                        **score,
                    }
                )
    return pd.DataFrame(rows)


def summary_table(long: pd.DataFrame) -> pd.DataFrame:
    """Detector x run group: near/far AUROC and FPR@95, mean and std over seeds."""
    wide = long[long["Dataset"].isin(["nearood", "farood"])].pivot_table(
        index=["detector", "group", "run"], columns="Dataset", values=["AUROC", "FPR@95"]
    )
    wide.columns = [f"{ds.replace('ood', '')}_{metric}" for metric, ds in wide.columns]
    for col in ("near_AUROC", "far_AUROC", "near_FPR@95", "far_FPR@95"):
        if col not in wide:  # e.g. no near-OOD set in the protocol: NaN cells, shown as such
            wide[col] = np.nan
    agg = wide.groupby(level=["detector", "group"]).agg(["mean", "std", "count"])
    out = pd.DataFrame(index=agg.index)
    for col in ("near_AUROC", "far_AUROC", "near_FPR@95", "far_FPR@95"):
        out[f"{col}_mean"] = agg[(col, "mean")]
        out[f"{col}_std"] = agg[(col, "std")].fillna(0.0)
    out["seeds"] = wide.groupby(level=["detector", "group"]).size()
    order = {d: i for i, d in enumerate(study_order())}
    out = out.reset_index()
    out["_o"] = out["detector"].map(lambda d: order.get(d, len(order)))
    return out.sort_values(["_o", "group"]).drop(columns="_o").reset_index(drop=True)


def _pm(table: pd.DataFrame) -> pd.DataFrame:
    """The table with "mean ± std" cells, for Markdown and LaTeX."""
    out = table[["detector", "group", "seeds"]].copy()
    for col in ("near_AUROC", "far_AUROC", "near_FPR@95", "far_FPR@95"):
        out[col] = [
            "–" if np.isnan(m) else f"{m:.2f} ± {s:.2f}" for m, s in zip(table[f"{col}_mean"], table[f"{col}_std"])
        ]
    return out


def write_tables(table: pd.DataFrame, output_dir: Path) -> None:
    write_text(output_dir / "ood_report.csv", table.to_csv(index=False, float_format="%.4f"))
    pm = _pm(table)
    write_text(output_dir / "ood_report.md", pm.to_markdown(index=False) + "\n")
    tex = pm.rename(columns=lambda c: c.replace("_", r"\_")).replace({"±": r"$\\pm$"}, regex=True)
    tex = tex.map(lambda v: v.replace("_", r"\_") if isinstance(v, str) else v)
    write_text(output_dir / "ood_report.tex", tex.to_latex(index=False))


def _save(fig: plt.Figure, path: Path) -> None:
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def heatmap(table: pd.DataFrame, output_dir: Path) -> Path:
    groups = sorted(table["group"].unique())
    known = study_order()
    detectors = [d for d in known if d in set(table["detector"])] + sorted(set(table["detector"]) - set(known))
    fig, axes = plt.subplots(1, 2, figsize=(2 + 1.1 * len(groups) * 2, 1 + 0.45 * len(detectors)), squeeze=False)
    for ax, split in zip(axes[0], ("near", "far")):
        grid = np.full((len(detectors), len(groups)), np.nan)
        for _, row in table.iterrows():
            grid[detectors.index(row["detector"]), groups.index(row["group"])] = row[f"{split}_AUROC_mean"]
        im = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(groups)), groups, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(detectors)), detectors, fontsize=8)
        ax.set_title(f"{split}-OOD AUROC (%)")
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=6, color="w" if v < 60 else "k")
        fig.colorbar(im, ax=ax, fraction=0.04)
    path = output_dir / "auroc_heatmap.png"
    _save(fig, path)
    return path


def run_figures(results_dir: Path, run: str, output_dir: Path) -> list[Path]:
    """ROC curves and score histograms (ID test vs each OOD set) of ``run`` for every detector with scores."""
    panels = [(d.parent.parent.name, d) for d in sorted(results_dir.glob(f"*/scores/{run}.npz"))]
    if not panels:
        return []
    n = len(panels)
    cols = min(3, n)
    rows = -(-n // cols)
    roc_fig, roc_axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.4 * rows), squeeze=False)
    hist_fig, hist_axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for k, (detector, path) in enumerate(panels):
        scores = dict(np.load(path, allow_pickle=False))
        conf_id = scores.pop("id")
        ax_r, ax_h = roc_axes.flat[k], hist_axes.flat[k]
        bins = np.histogram_bin_edges(np.concatenate([conf_id, *scores.values()]), bins=40)
        ax_h.hist(conf_id, bins=bins, density=True, alpha=0.5, label="ID test")
        for name, conf_o in scores.items():
            ood = np.concatenate([np.zeros(len(conf_id)), np.ones(len(conf_o))])
            fpr, tpr, _ = roc_curve(ood, -np.concatenate([conf_id, conf_o]))
            ax_r.plot(fpr, tpr, label=name)
            ax_h.hist(conf_o, bins=bins, density=True, histtype="step", label=name)
        ax_r.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax_r.set(title=detector, xlabel="FPR (ID flagged)", ylabel="TPR (OOD caught)")
        ax_h.set(title=detector, xlabel="score (larger = more ID)")
        ax_r.legend(fontsize=7)
        ax_h.legend(fontsize=7)
    for ax in list(roc_axes.flat[n:]) + list(hist_axes.flat[n:]):
        ax.axis("off")
    roc_fig.suptitle(run, fontsize=9)
    hist_fig.suptitle(run, fontsize=9)
    out = [output_dir / f"roc_{run}.png", output_dir / f"scores_{run}.png"]
    _save(roc_fig, out[0])
    _save(hist_fig, out[1])
    return out


def make_report(results_dir: str | Path, output_dir: str | Path, run: str | None = None) -> dict[str, Any]:
    """Tables and figures; ``run`` defaults to the run scored by the most detectors (then by name)."""
    results_dir, output_dir = Path(results_dir), Path(output_dir)
    long = load_results(results_dir)
    if long.empty:
        raise ValueError(f"the runs under {results_dir} have no OOD scores")
    table = summary_table(long)
    write_tables(table, output_dir)
    figures = [heatmap(table, output_dir)]
    if run is None:
        counts = long.groupby("run")["detector"].nunique()
        run = sorted(counts.index, key=lambda r: (-counts[r], r))[0]
    figures += run_figures(results_dir, run, output_dir)
    return {"table": table, "figures": figures, "run": run}


def summarize(results_dir: str | Path, output_dir: str | Path, run: str | None = None) -> str:
    """:func:`make_report`, then the text ``summarize_ood.py`` prints: the table and the figure paths."""
    out = make_report(results_dir, output_dir, run)
    return "\n".join([out["table"].to_string(index=False), *(str(p) for p in out["figures"])])
