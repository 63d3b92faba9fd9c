"""Numbers-only files for DVC (`dvc metrics show/diff`, `dvc plots show/diff`, `dvc exp show`).

``results.json`` mixes numbers with the run's metadata (strings, nested optimizer and loss configs) and the
OOD report is a CSV in long format, so `dvc metrics show` on them would print dozens of columns. DVC prints
one row per metrics file and one column per (flattened) key, so these files hold one row each:

    <metrics_dir>/runs/<run>.json       a run's final numbers (RUN_METRICS, from its results.json)
    <metrics_dir>/ood_far/<group>.json  far-OOD AUROC (%) of each detector for one run group (ood_report.csv)
    <metrics_dir>/ood_near/<group>.json near-OOD AUROC (%), the same way (only where the protocol has near-OOD)

and the training curves, one slim CSV per run (the validation rows of Lightning's ``metrics.csv``):

    <curves_dir>/<run>.csv              epoch, step and CURVE_COLUMNS present in the run's log

A detector without a score for a run group (a probabilistic detector on a deterministic model) has no key,
which DVC prints as ``-``. Every file is written atomically; a folder is rewritten whole, so a run or group
that disappeared leaves no stale row.
"""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from src.utils.io import read_json, write_json, write_text

#: (section of results.json, key): the run metrics DVC shows, in this column order
RUN_METRICS = (
    ("metrics", "val_online_acc"),
    ("metrics", "val_loss"),
    ("metrics", "val_kl_prior_loss"),
    ("offline_metrics", "test_offline_acc"),
    ("offline_metrics", "test_offline_ece"),
)
#: columns of a run's ``csv/lightning_logs/version_0/metrics.csv`` copied into its curve file
CURVE_COLUMNS = ("val_online_acc", "val_online_loss", "val_loss", "val_kl_prior_loss")
LIGHTNING_CSV = Path("csv/lightning_logs/version_0/metrics.csv")


def run_metrics(results: dict[str, Any]) -> dict[str, float]:
    """The RUN_METRICS of one ``results.json`` that it holds (finite numbers only)."""
    out: dict[str, float] = {}
    for section, key in RUN_METRICS:
        value = (results.get(section) or {}).get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[key] = float(value)
    return out


def ood_auroc(ood_report: pd.DataFrame, split: str) -> dict[str, dict[str, float]]:
    """``{group: {detector: <split> AUROC mean (%)}}`` from ``ood_report.csv``; empty cells are left out.

    Rows that share a (group, detector) pair and differ in another text column (e.g. a score orientation)
    get that column's value appended to the key (``<detector>_<value>``).
    """
    column = f"{split}_AUROC_mean"
    missing = {"group", "detector", column} - set(ood_report.columns)
    if missing:
        raise ValueError(f"the OOD report table has no column {sorted(missing)}; it has {list(ood_report.columns)}")
    extra = [
        c
        for c in ood_report.columns
        if c not in ("group", "detector")
        and not pd.api.types.is_numeric_dtype(ood_report[c])
        and ood_report[c].nunique() > 1
    ]
    ambiguous = ood_report.duplicated(["group", "detector"]).any()
    out: dict[str, dict[str, float]] = {}
    for row in ood_report.to_dict(orient="records"):
        value = row[column]
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        key = str(row["detector"])
        if ambiguous:
            key = "_".join([key, *(str(row[c]) for c in extra)])
        out.setdefault(str(row["group"]), {})[key] = round(float(value), 4)
    return out


def _rewrite_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def write_run_metrics(runs_dir: Path, metrics_dir: Path) -> list[Path]:
    """``<metrics_dir>/runs/<run>.json`` for every finished run (``<run>/results.json``) of ``runs_dir``.

    Raises:
        FileNotFoundError: ``runs_dir`` holds no finished run.
    """
    results = sorted(Path(runs_dir).glob(f"*/{'results.json'}"))
    if not results:
        raise FileNotFoundError(f"no <run>/results.json under {runs_dir}; run the pretraining stages first")
    out = _rewrite_dir(Path(metrics_dir) / "runs")
    return [write_json(out / f"{r.parent.name}.json", run_metrics(read_json(r)), indent=2) for r in results]


def write_ood_metrics(ood_report_csv: Path, metrics_dir: Path) -> list[Path]:
    """``<metrics_dir>/ood_far/<group>.json`` (and ``ood_near/`` when the report has near-OOD values).

    Raises:
        FileNotFoundError: ``ood_report_csv`` does not exist.
    """
    if not Path(ood_report_csv).is_file():
        raise FileNotFoundError(f"{ood_report_csv} is missing; run the OOD report stage first")
    table = pd.read_csv(ood_report_csv)
    written: list[Path] = []
    for split in ("far", "near"):
        folder = Path(metrics_dir) / f"ood_{split}"
        if folder.exists():
            shutil.rmtree(folder)
        per_group = ood_auroc(table, split)
        if not per_group:
            continue
        folder.mkdir(parents=True)
        written += [write_json(folder / f"{g}.json", per_group[g], indent=2) for g in sorted(per_group)]
    return written


def curve_rows(lightning_csv: Path) -> list[dict[str, str]]:
    """The validation rows (those with ``val_online_acc``) of a Lightning ``metrics.csv``, CURVE_COLUMNS only."""
    with Path(lightning_csv).open(newline="") as f:
        rows = list(csv.DictReader(f))
    columns = ["epoch", "step", *(c for c in CURVE_COLUMNS if rows and c in rows[0])]
    return [{c: r[c] for c in columns} for r in rows if r.get("val_online_acc", "") != ""]


def write_curves(runs_dir: Path, curves_dir: Path) -> list[Path]:
    """``<curves_dir>/<run>.csv`` for every run of ``runs_dir`` with a Lightning log (runs without one are skipped)."""
    out = _rewrite_dir(Path(curves_dir))
    written = []
    for log in sorted(Path(runs_dir).glob(f"*/{LIGHTNING_CSV}")):
        run = log.parents[len(LIGHTNING_CSV.parts) - 1].name
        rows = curve_rows(log)
        if not rows:
            continue
        text = ",".join(rows[0]) + "\n" + "".join(",".join(r.values()) + "\n" for r in rows)
        written.append(write_text(out / f"{run}.csv", text))
    return written


def write_dvc_files(runs_dir: Path, ood_report_csv: Path, metrics_dir: Path, curves_dir: Path) -> list[Path]:
    """The run and OOD metrics files (``metrics_dir``) and the training curves (``curves_dir``) of one runs folder."""
    return [
        *write_run_metrics(runs_dir, metrics_dir),
        *write_ood_metrics(ood_report_csv, metrics_dir),
        *write_curves(runs_dir, curves_dir),
    ]
