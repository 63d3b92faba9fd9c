"""The OOD study's report: one table over detectors x run groups, and figures.

Reads ``<results_dir>/<detector>/runs.json`` (the driver's output) and the raw scores
``<results_dir>/<detector>/scores/<run>.npz``, and writes to ``output_dir``:

- ``ood_report.{csv,md,tex}``: per detector (its ``set``: ``paper``, the paper's nine, or ``added``, the
  detectors added beside them; the paper's first) and run group (the run name without its ``_seed_<n>``
  suffix) the near/far AUROC and FPR@95 (percent) as the mean over the group's ``n`` seeds, with
  the standard deviation when ``n >= 2``; a detector that gives no score for a group (e.g. a
  probabilistic detector on a deterministic model) or a protocol without near-OOD sets gives `–`;
- both orientations of the detectors whose reference sign looks inverted (sigmamean, kldivsimk,
  gram; O-Q8, O-Q10): the rows as the study stored them, and ``<detector> (corrected sign)``,
  recomputed with :func:`~src.ood.metrics.compute_all_metrics` from the negated raw scores (the
  hyper-parameter stays the one the search chose for the stored sign);
- ``auroc_heatmap.png``: near and far AUROC, detector x run group, on a colour scale centred at
  chance (50 %), the paper's detectors and the added ones under their own headings;
- ``ood_comparison.{csv,md}`` (when the study has deterministic runs beside stochastic ones): per
  detector, each stochastic run group's AUROC minus the deterministic one's, paired by loss and seed
  (:func:`comparison_table`);
- per run group, ``roc_<run>.png`` and ``scores_<run>.png`` of the group's first seed (or of the
  one ``run`` asked for): per detector the ROC curves of ID test vs each OOD set and the score
  histograms, one colour per OOD set in every figure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display needed

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm
from sklearn.metrics import auc, roc_curve

from src.ood.detectors import DETECTORS, PAPER_DETECTORS, study_order
from src.ood.metrics import METRIC_NAMES, compute_all_metrics
from src.utils.io import atomic_write, read_json, write_text

SEED_SUFFIX = re.compile(r"_seed_(\d+)$")
#: label suffix of the corrected orientation of a sign-inverted detector
CORRECTED = " (corrected sign)"
#: the report's columns: (split, metric)
COLUMNS = ("near_AUROC", "far_AUROC", "near_FPR@95", "far_FPR@95")
#: quantiles bounding a histogram's x range (percent): a few extreme scores do not squash the rest
HIST_QUANTILES = (0.5, 99.5)
#: a fixed colour per OOD set of the known protocols (CIFAR-10, demo, Fashion-MNIST); other names
#: get a colour derived from the name, so a set has the same colour in every figure
OOD_COLOURS = {
    "cifar100": "#d62728",
    "tin": "#ff7f0e",
    "mnist": "#1f77b4",
    "svhn": "#2ca02c",
    "texture": "#9467bd",
    "places365": "#8c564b",
    "digits89": "#d62728",
    "photos": "#9467bd",
    "noise": "#bcbd22",
}
ID_COLOUR = "#000000"  # drawn as a light filled histogram; no OOD set is grey
_FALLBACK = [matplotlib.colors.to_hex(c) for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 7]  # no grey


#: the two detector sets of the reports, in their order
DETECTOR_SETS = ("paper", "added")


def detector_set(label: str) -> str:
    """``"paper"`` for the paper's nine detectors (either orientation), ``"added"`` for every other one."""
    return "paper" if label.removesuffix(CORRECTED) in PAPER_DETECTORS else "added"


def ood_colours(names: list[str]) -> dict[str, Any]:
    """A colour per OOD set: fixed for the known sets, the others in name order from the unused
    colours of the palette (so every figure of a report uses the same colour for a set)."""
    out = {n: OOD_COLOURS[n] for n in names if n in OOD_COLOURS}
    free = [c for c in _FALLBACK if c not in set(out.values())] or list(_FALLBACK)
    for k, name in enumerate(sorted(n for n in set(names) if n not in OOD_COLOURS)):
        out[name] = free[k % len(free)]
    return out


def run_group(run_name: str) -> str:
    return SEED_SUFFIX.sub("", run_name)


def _seed(run_name: str) -> int:
    m = SEED_SUFFIX.search(run_name)
    return int(m.group(1)) if m else -1


def sign_inverted(detector: str) -> bool:
    """Whether the reference's sign of ``detector`` looks inverted (False for an unregistered name)."""
    return detector in DETECTORS and DETECTORS[detector].reference_sign_inverted


@dataclass
class Scores:
    """One ``scores/<run>.npz``: confidences per split, the OOD sets in table order with their group
    (near/far), and predictions and labels when the file has them (older files hold only ``conf``)."""

    conf: dict[str, np.ndarray]
    groups: dict[str, str]  # OOD set -> "near" | "far", in table order
    pred: dict[str, np.ndarray] = field(default_factory=dict)
    label: dict[str, np.ndarray] = field(default_factory=dict)


def read_scores(path: Path, rows: list[dict[str, Any]] | None = None) -> Scores:
    """A raw-score file; ``rows`` (the run's metric rows) give near/far for files without ``ood_groups``."""
    with np.load(path, allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    if "ood_sets" in data:
        groups = {str(s): str(g) for s, g in zip(data["ood_sets"], data["ood_groups"])}
    else:  # written before predictions and labels were stored: every key is a confidence
        order = [str(r["Dataset"]) for r in rows or []]
        cut = order.index("nearood") if "nearood" in order else -1
        groups = {k: ("near" if k in order and order.index(k) < cut else "far") for k in data if k != "id"}
    splits = ["id", *groups]
    return Scores(
        conf={s: data[s] for s in splits},
        groups=groups,
        pred={s: data[f"{s}_pred"] for s in splits if f"{s}_pred" in data},
        label={s: data[f"{s}_label"] for s in splits if f"{s}_label" in data},
    )


def negated_rows(scores: Scores, acc: float) -> list[dict[str, Any]]:
    """The metric rows (percent, the study's layout: near sets, nearood, far sets, farood) of the
    negated confidences, each computed with :func:`compute_all_metrics`; ``acc``: the ACC column."""
    conf_id = -scores.conf["id"].astype(np.float64)
    label_id = scores.label.get("id", np.zeros(len(conf_id), dtype=np.int64))
    pred_id = scores.pred.get("id", np.zeros(len(conf_id), dtype=np.int64))
    rows: list[dict[str, Any]] = []
    for group in ("near", "far"):
        sets = [s for s, g in scores.groups.items() if g == group]
        if not sets:
            continue
        vectors = []
        for name in sets:
            conf_o = -scores.conf[name].astype(np.float64)
            pred_o = scores.pred.get(name, np.zeros(len(conf_o), dtype=np.int64))
            label = np.concatenate([label_id, -np.ones(len(conf_o), dtype=np.int64)])
            vec = compute_all_metrics(np.concatenate([conf_id, conf_o]), label, np.concatenate([pred_id, pred_o]))
            vectors.append(vec)
            rows.append({"Dataset": name, **dict(zip(METRIC_NAMES, (100 * v for v in vec)))})
        mean = np.mean(np.asarray(vectors), axis=0)
        rows.append({"Dataset": f"{group}ood", **dict(zip(METRIC_NAMES, (100 * float(v) for v in mean)))})
    for row in rows:
        row["ACC"] = acc
    return rows


@dataclass
class Study:
    """What the report reads: the long metric table and, per run, the detectors and score files."""

    long: pd.DataFrame  # detector (label), run, group, model_name, orientation, Dataset, metrics
    detectors: list[str]  # table rows in order: each detector, its corrected orientation after it
    groups: list[str]  # every run group, with or without scores
    runs: list[str]  # every run name
    score_files: dict[tuple[str, str], Path]  # (detector, run) -> scores/<run>.npz
    records: dict[tuple[str, str], dict[str, Any]]  # (detector, run) -> run record
    missing_scores: list[str] = field(default_factory=list)  # "<detector>/<run>" without a score file


def load_study(results_dir: Path) -> Study:
    """Every ``<detector>/runs.json`` under ``results_dir``, with both orientations of the inverted detectors.

    Raises:
        FileNotFoundError: no ``runs.json``.
        ValueError: a ``runs.json`` that is not the study's.
    """
    found = sorted(p for p in results_dir.glob("*/runs.json"))
    if not found:
        raise FileNotFoundError(
            f"no <detector>/runs.json under {results_dir}; run src/experiments/scripts/run_ood_study.py first"
        )
    rows: list[dict[str, Any]] = []
    detectors: set[str] = set()
    groups: set[str] = set()
    runs: set[str] = set()
    score_files: dict[tuple[str, str], Path] = {}
    records: dict[tuple[str, str], dict[str, Any]] = {}
    missing: list[str] = []
    for path in found:
        detector = path.parent.name
        records_ = read_json(path)  # invalid JSON: a ValueError naming the file
        if not isinstance(records_, list) or not all(isinstance(r, dict) and "ood_scores" in r for r in records_):
            raise ValueError(
                f"{path} is not a runs.json of run_ood_study.py (expected a list of run records with 'ood_scores'); "
                "delete it and run the study for this detector again (its per-run records are reused; under DVC, "
                "`dvc repro` the study's stage)"
            )
        inverted = sign_inverted(detector)
        for run in records_:
            name = run["run_name"]
            groups.add(run_group(name))
            runs.add(name)
            detectors.add(detector)
            records[(detector, name)] = run
            if not run["ood_scores"]:
                continue
            corrected = bool(run.get("corrected_sign", False))
            stored = f"{detector}{CORRECTED}" if corrected else detector
            base = {"run": name, "group": run_group(name), "model_name": run["model_name"]}
            orientation = "corrected" if corrected else "reference"
            for score in run["ood_scores"]:
                rows.append({"detector": stored, "orientation": orientation if inverted else "", **base, **score})
            npz = path.parent / "scores" / f"{name}.npz"
            if npz.is_file():
                score_files[(detector, name)] = npz
            else:
                missing.append(f"{detector}/{name}")
            if inverted and npz.is_file():
                other = detector if corrected else f"{detector}{CORRECTED}"
                acc = float(run["ood_scores"][0]["ACC"])
                for score in negated_rows(read_scores(npz, run["ood_scores"]), acc):
                    rows.append(
                        {"detector": other, "orientation": "reference" if corrected else "corrected", **base, **score}
                    )
    known = study_order()
    ordered = [d for d in known if d in detectors] + sorted(detectors - set(known))
    labels: list[str] = []
    for d in ordered:
        labels += [d, f"{d}{CORRECTED}"] if sign_inverted(d) else [d]
    return Study(
        long=pd.DataFrame(rows),
        detectors=labels,
        groups=sorted(groups),
        runs=sorted(runs),
        score_files=score_files,
        records=records,
        missing_scores=missing,
    )


def load_results(results_dir: Path) -> pd.DataFrame:
    """Long table: detector, orientation, run, group, model_name, Dataset, FPR@95, AUROC, AUPR_IN, AUPR_OUT, ACC."""
    return load_study(results_dir).long


def summary_table(
    long: pd.DataFrame, detectors: list[str] | None = None, groups: list[str] | None = None
) -> pd.DataFrame:
    """Detector x run group: near/far AUROC and FPR@95, mean and std over the ``n`` seeds, with each
    detector's ``set`` (:func:`detector_set`).

    Every (detector, group) of ``detectors`` x ``groups`` has a row; a cell without values is NaN
    (`–` in the Markdown and LaTeX tables), and the std is NaN for ``n < 2``.
    """
    if long.empty:
        wide = pd.DataFrame(
            columns=list(COLUMNS), index=pd.MultiIndex.from_tuples([], names=["detector", "group", "run"])
        )
    else:
        wide = long[long["Dataset"].isin(["nearood", "farood"])].pivot_table(
            index=["detector", "group", "run"], columns="Dataset", values=["AUROC", "FPR@95"]
        )
        wide.columns = [f"{ds.replace('ood', '')}_{metric}" for metric, ds in wide.columns]
    for col in COLUMNS:
        if col not in wide:  # e.g. no near-OOD set in the protocol
            wide[col] = np.nan
    agg = wide.groupby(level=["detector", "group"])[list(COLUMNS)].agg(["mean", "std"])
    out = pd.DataFrame(index=agg.index)
    for col in COLUMNS:
        out[f"{col}_mean"] = agg[(col, "mean")]
        out[f"{col}_std"] = agg[(col, "std")]  # NaN for one seed: no spread to show
    out["seeds"] = wide.groupby(level=["detector", "group"]).size()
    detectors = detectors or sorted(out.index.get_level_values("detector").unique())
    groups = groups or sorted(out.index.get_level_values("group").unique())
    full = pd.MultiIndex.from_product([detectors, groups], names=["detector", "group"])
    out = out.reindex(full)
    out["seeds"] = out["seeds"].fillna(0).astype(int)
    out = out.reset_index()
    out.insert(1, "set", [detector_set(d) for d in out["detector"]])
    return out


def fmt_value(mean: float, std: float = float("nan"), n: int = 1, decimals: int = 1) -> str:
    """``mean ± std`` with ``decimals`` decimals; the mean alone for ``n < 2``; `–` for no value."""
    if mean is None or not np.isfinite(mean):
        return "–"
    if n < 2 or std is None or not np.isfinite(std):
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def formatted(table: pd.DataFrame) -> pd.DataFrame:
    """The table with text cells (one decimal, ``±`` only for ``n >= 2``, `–` for no value)."""
    out = table[["set", "detector", "group"]].copy()
    out["n"] = table["seeds"]
    for col in COLUMNS:
        out[f"{col} (%)"] = [
            fmt_value(m, s, n) for m, s, n in zip(table[f"{col}_mean"], table[f"{col}_std"], table["seeds"])
        ]
    return out


def percent_table(ood: pd.DataFrame, column: str) -> pd.DataFrame:
    """Detector x run group of ``column`` of :func:`summary_table` (percent): one decimal, `–` for a
    cell without a value, a first column ``set`` (``paper`` / ``added``), rows in the OOD report's order
    (the paper's detectors first; each sign-inverted detector followed by its corrected sign)."""
    order = list(dict.fromkeys(ood["detector"]))
    order = [d for s in DETECTOR_SETS for d in order if detector_set(d) == s]
    groups = list(dict.fromkeys(ood["group"]))
    table = ood.pivot_table(index="detector", columns="group", values=column, dropna=False).reindex(order)
    table = table.reindex(columns=groups)
    text = table.apply(lambda col: [fmt_value(v) for v in col]).astype(str).reset_index()
    text.insert(0, "set", [detector_set(d) for d in text["detector"]])
    return text


def notes(study: Study) -> list[str]:
    """The report's notes: what the cells are, the orientations, the figures' choice."""
    lines = [
        "Cells: mean over the n seeds of a run group (percent, one decimal), `± std` when n ≥ 2; "
        "`–`: no value (a probabilistic detector on a deterministic model, no near-OOD set, n = 0).",
    ]
    added = [d for d in study.detectors if detector_set(d) == "added"]
    if added:
        lines.append(
            "set `paper`: the paper's nine detectors; set `added`: the detectors beyond the paper's ("
            + ", ".join(added)
            + "; docs/ood.md, Added detectors)."
        )
    inverted = [d for d in study.detectors if sign_inverted(d)]
    if inverted:
        lines.append(
            f"{', '.join(inverted)}: the reference's score orientation (as in the paper; it looks inverted, "
            f"O-Q8, O-Q10) and `{CORRECTED.strip()}`, the negated scores' metrics recomputed from "
            "`scores/<run>.npz` (the hyper-parameter the search chose for the reference's sign is kept)."
        )
    if study.missing_scores:
        lines.append("No raw scores (no corrected rows, no figures): " + ", ".join(study.missing_scores) + ".")
    return lines


#: the stochastic model variants, each compared with the deterministic ``ssl`` of the same loss and seed
STOCHASTIC_MODELS = ("ssl_bayes_h", "ssl_bayes_z")
#: the comparison table's value columns: (split, what)
COMPARISON_COLUMNS = ("near_diff_mean", "near_diff_std", "near_wins", "far_diff_mean", "far_diff_std", "far_wins")


def run_loss(run_name: str) -> str | None:
    """The SSL loss a run name carries (``barlow`` for Barlow Twins, ``vicreg``), or None: the demo's,
    Fashion-MNIST's and the paper's run names all carry it."""
    return next((loss for loss in ("barlow", "vicreg") if loss in run_name), None)


def comparison_table(long: pd.DataFrame, detectors: list[str] | None = None) -> pd.DataFrame:
    """Stochastic against deterministic, per detector: for every run of a stochastic model (Bayes-H, Bayes-Z),
    its AUROC minus that of the deterministic run with the same loss and seed, in percentage points, per split.

    One row per (detector, stochastic run group): ``against`` (the deterministic run group), ``n`` (the
    seeds with both runs), per split (near, far) the mean and std (NaN for ``n < 2``) of the paired
    differences and ``wins`` (in how many of the ``n`` pairs the stochastic run is higher). Detectors
    without deterministic scores (the probabilistic ones) and runs without a partner have no row; no
    deterministic run at all (e.g. the paper's CIFAR-10 ablation) gives an empty table.
    """
    columns = ["set", "detector", "group", "against", "n", *COMPARISON_COLUMNS]
    if long.empty or "model_name" not in long:
        return pd.DataFrame(columns=columns)
    rows = long[long["Dataset"].isin(["nearood", "farood"]) & long["AUROC"].notna()]
    base = {
        (r.detector, run_loss(r.run), _seed(r.run), r.Dataset): (float(r.AUROC), r.group)
        for r in rows[rows["model_name"] == "ssl"].itertuples(index=False)
    }
    pairs = []
    for r in rows[rows["model_name"].isin(STOCHASTIC_MODELS)].itertuples(index=False):
        partner = base.get((r.detector, run_loss(r.run), _seed(r.run), r.Dataset))
        if partner is not None and run_loss(r.run) is not None:
            split = r.Dataset.removesuffix("ood")
            pairs.append(
                {
                    "detector": r.detector,
                    "group": r.group,
                    "against": partner[1],
                    "split": split,
                    "diff": float(r.AUROC) - partner[0],
                }
            )
    if not pairs:
        return pd.DataFrame(columns=columns)
    df = pd.DataFrame(pairs)
    keys = ["detector", "group", "against"]
    out = df[keys].drop_duplicates().set_index(keys)
    for split in ("near", "far"):
        part = df[df["split"] == split].groupby(keys)["diff"]
        out[f"{split}_diff_mean"] = part.mean()
        out[f"{split}_diff_std"] = part.std()
        out[f"{split}_wins"] = part.apply(lambda d: int((d > 0).sum()))
        out[f"{split}_n"] = part.size()
    out = out.reset_index()
    out["n"] = out[["near_n", "far_n"]].max(axis=1).fillna(0).astype(int)
    order = detectors or sorted(out["detector"].unique())
    out["_order"] = [order.index(d) if d in order else len(order) for d in out["detector"]]
    out = out.sort_values(["_order", "group"], kind="stable").reset_index(drop=True)
    out.insert(0, "set", [detector_set(d) for d in out["detector"]])
    return out[columns]


def _signed_cell(mean: float, std: float, n: int) -> str:
    """``+2.3 ± 1.1``: a signed difference, ``± std`` for ``n >= 2``, `–` for no value."""
    if mean is None or not np.isfinite(mean):
        return "–"
    return f"{mean:+.1f}" + (f" ± {std:.1f}" if n >= 2 and std is not None and np.isfinite(std) else "")


def formatted_comparison(table: pd.DataFrame) -> pd.DataFrame:
    """The comparison with text cells: ``+2.3 ± 1.1`` (percentage points, signed, ± for n ≥ 2), wins as ``k/n``."""
    out = table[["set", "detector", "group", "against", "n"]].copy()
    for split in ("near", "far"):
        means, stds, wins = table[f"{split}_diff_mean"], table[f"{split}_diff_std"], table[f"{split}_wins"]
        out[f"{split} ΔAUROC (pp)"] = [_signed_cell(m, s, n) for m, s, n in zip(means, stds, table["n"])]
        out[f"{split} wins"] = [
            "–" if not np.isfinite(m) else f"{int(w)}/{n}" for m, w, n in zip(means, wins.fillna(0), table["n"])
        ]
    return out


def write_comparison(table: pd.DataFrame, output_dir: Path) -> None:
    """``ood_comparison.{csv,md}``: :func:`comparison_table` (the CSV in full precision)."""
    write_text(output_dir / "ood_comparison.csv", table.to_csv(index=False, float_format="%.4f"))
    md = (
        "# Stochastic against deterministic, per detector\n\n"
        "AUROC of the stochastic run minus that of the deterministic run with the same loss and seed "
        "(percentage points; positive: the stochastic model detects better), mean ± std over the n seeds "
        "that have both runs; wins: in how many of the n pairs the stochastic run is higher.\n\n"
        + formatted_comparison(table).to_markdown(index=False, disable_numparse=True)
        + "\n"
    )
    write_text(output_dir / "ood_comparison.md", md)


def comparison_section(report_dir: Path, level: str = "##") -> list[str]:
    """Markdown lines of a report section from ``<report_dir>/ood_comparison.csv`` (none without the file):
    the stochastic-against-deterministic table of :func:`write_comparison`."""
    path = report_dir / "ood_comparison.csv"
    if not path.is_file():
        return []
    table = pd.read_csv(path)
    n = sorted(set(table["n"])) if len(table) else [0]
    seeds = f"n = {n[0]} seed" + ("s" if n[0] != 1 else "") if len(n) == 1 else f"n = {n[0]}–{n[-1]} seeds"
    return [
        f"{level} OOD detection: stochastic against deterministic, per detector",
        "",
        "AUROC of each stochastic run group minus that of the deterministic run with the same loss and seed "
        f"(percentage points; positive: the stochastic model detects better; {seeds}); wins: in how many "
        "seed pairs the stochastic run is higher.",
        "",
        formatted_comparison(table).to_markdown(index=False, disable_numparse=True),
        "",
    ]


def write_tables(table: pd.DataFrame, output_dir: Path, note_lines: list[str] | None = None) -> None:
    write_text(output_dir / "ood_report.csv", table.to_csv(index=False, float_format="%.4f"))
    text = formatted(table)
    md = text.to_markdown(index=False, disable_numparse=True) + "\n"
    if note_lines:
        md += "\n" + "\n".join(f"- {line}" for line in note_lines) + "\n"
    write_text(output_dir / "ood_report.md", md)
    tex = text.rename(columns=lambda c: c.replace("_", r"\_").replace("%", r"\%")).replace({"±": r"$\\pm$"}, regex=True)
    tex = tex.map(lambda v: v.replace("_", r"\_") if isinstance(v, str) else v)
    write_text(output_dir / "ood_report.tex", tex.to_latex(index=False))


def _save(fig: plt.Figure, path: Path) -> None:
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)


def heatmap_rows(detectors: list[str]) -> list[tuple[str, bool]]:
    """The heat map's rows, ``(label, is_heading)``: a heading per detector set present (``paper's
    detectors``, ``added detectors``), each followed by its detectors in the report's order."""
    titles = {"paper": "paper's detectors", "added": "added detectors"}
    rows: list[tuple[str, bool]] = []
    for s in DETECTOR_SETS:
        members = [d for d in detectors if detector_set(d) == s]
        if members:
            rows += [(titles[s], True), *((d, False) for d in members)]
    return rows


def heatmap(table: pd.DataFrame, output_dir: Path, detectors: list[str], groups: list[str]) -> Path:
    """Near and far AUROC (mean over seeds), detector x run group; blue above chance, red below, `–` none;
    the paper's detectors and the added ones under their own headings (:func:`heatmap_rows`)."""
    splits = [s for s in ("near", "far") if table[f"{s}_AUROC_mean"].notna().any()] or ["far"]
    rows = heatmap_rows(detectors)
    index = {label: i for i, (label, heading) in enumerate(rows) if not heading}
    width = max(4.5, 1.6 + 0.55 * len(groups))
    fig, axes = plt.subplots(
        1, len(splits), figsize=(width * len(splits), 1.6 + 0.32 * len(rows)), squeeze=False, layout="constrained"
    )
    norm = TwoSlopeNorm(vmin=0, vcenter=50, vmax=100)
    cmap = plt.get_cmap("RdBu").with_extremes(bad="#e6e6e6")
    im = None
    for k, (ax, split) in enumerate(zip(axes[0], splits)):
        grid = np.full((len(rows), len(groups)), np.nan)
        for row in table.itertuples(index=False):
            if row.detector in index:
                grid[index[row.detector], groups.index(row.group)] = getattr(row, f"{split}_AUROC_mean")
        im = ax.imshow(np.ma.masked_invalid(grid), norm=norm, cmap=cmap, aspect="auto")
        for i, (_, heading) in enumerate(rows):
            if heading:  # a white band over the row, no cell values: the set's title is its tick label
                ax.axhspan(i - 0.5, i + 0.5, color="white", zorder=2)
                if i:
                    ax.axhline(i - 0.5, color="k", lw=1.2, zorder=3)
        ax.set_xticks(range(len(groups)), groups, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(rows)), [label if k == 0 else "" for label, _ in rows], fontsize=8)
        for tick, (_, heading) in zip(ax.get_yticklabels(), rows):
            if heading:
                tick.set_fontweight("bold")
        ax.set_title(f"{split}-OOD AUROC (%)", fontsize=10)
        for (i, j), v in np.ndenumerate(grid):
            if rows[i][1]:
                continue
            text = "–" if not np.isfinite(v) else f"{v:.0f}"
            dark = np.isfinite(v) and abs(v - 50) > 30
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="w" if dark else "k")
    bar = fig.colorbar(im, ax=axes[0].tolist(), fraction=0.05, pad=0.02, ticks=[0, 25, 50, 75, 100])
    bar.ax.axhline(50, color="k", lw=1)
    bar.set_label("AUROC (%), 50 = chance", fontsize=8)
    fig.suptitle(
        "AUROC per detector and run group: mean over seeds; blue above chance, red below; –: no value", fontsize=10
    )
    path = output_dir / "auroc_heatmap.png"
    _save(fig, path)
    return path


#: what the stored score of a sign-inverted detector is, with the reference's sign (O-Q8, O-Q10 (c))
REFERENCE_SCORES = {
    "sigmamean": "mean posterior σ, reference sign\n(larger = more uncertain)",
    "kldivsimk": "(K+1)-th smallest KL(train ‖ test), reference sign\n(larger = farther from training)",
    "gram": "Gram deviation / 50, reference sign\n(larger = farther from the training range)",
}


def score_axis_label(detector: str, corrected: bool) -> str:
    """The histogram's x label, true for the detector's stored orientation: a sign-inverted detector's
    reference score is what it measures, with no claim that larger means more in-distribution."""
    if not sign_inverted(detector):
        return "score (larger = more ID)"
    if corrected:
        return "score, corrected sign (larger = more ID)"
    return REFERENCE_SCORES.get(detector, "score, reference sign\n(its orientation is suspect, O-Q8)")


def _roc(ax: plt.Axes, scores: Scores, sign: float, title: str, colours: dict[str, Any]) -> None:
    conf_id = sign * scores.conf["id"].astype(np.float64)
    for name, group in scores.groups.items():
        conf_o = sign * scores.conf[name].astype(np.float64)
        ood = np.concatenate([np.zeros(len(conf_id)), np.ones(len(conf_o))])
        fpr, tpr, _ = roc_curve(ood, -np.concatenate([conf_id, conf_o]))
        auroc = 100 * float(auc(fpr, tpr))  # as compute_all_metrics
        ax.plot(fpr, tpr, color=colours[name], lw=1.4, label=f"{name} ({group}) {auroc:.1f}")
    ax.plot([0, 1], [0, 1], color="0.5", ls=":", lw=0.8)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="FPR (ID flagged)", ylabel="TPR (OOD caught)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6.5, title="OOD set (AUROC %)", title_fontsize=6.5, loc="best")


def _hist(ax: plt.Axes, scores: Scores, detector: str, corrected: bool, colours: dict[str, Any]) -> None:
    pooled = np.concatenate([c.astype(np.float64) for c in scores.conf.values()])
    lo, hi = np.percentile(pooled, HIST_QUANTILES)
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.linspace(lo, hi, 41)
    ax.hist(np.clip(scores.conf["id"], lo, hi), bins=bins, density=True, color=ID_COLOUR, alpha=0.2, label="ID test")
    for name, group in scores.groups.items():
        conf_o = np.clip(scores.conf[name], lo, hi)
        ax.hist(
            conf_o, bins=bins, density=True, histtype="step", lw=1.3, color=colours[name], label=f"{name} ({group})"
        )
    ax.set_xlim(lo, hi)
    ax.set_xlabel(score_axis_label(detector, corrected), fontsize=8)
    ax.set_ylabel("density", fontsize=8)
    ax.set_title(f"{detector}{CORRECTED if corrected else ''} [{detector_set(detector)}]", fontsize=9)
    ax.legend(fontsize=6.5, loc="best")


def run_figures(
    study: Study, run: str, output_dir: Path, why: str, colours: dict[str, Any] | None = None
) -> list[Path]:
    """ROC curves (both orientations for the inverted detectors) and score histograms of ``run``."""
    panels = [(d, study.score_files[(d, run)]) for d in study.detectors if (d, run) in study.score_files]
    if not panels:
        return []
    loaded = [(d, read_scores(p, study.records[(d, run)]["ood_scores"])) for d, p in panels]
    colours = colours or ood_colours(sorted({n for _, s in loaded for n in s.groups}))
    corrected = {d: bool(study.records[(d, run)].get("corrected_sign", False)) for d, _ in panels}
    roc_panels: list[tuple[str, Scores, float]] = []
    for d, s in loaded:
        roc_panels.append((f"{d}{CORRECTED if corrected[d] else ''} [{detector_set(d)}]", s, 1.0))
        if sign_inverted(d):
            roc_panels.append((f"{d}{'' if corrected[d] else CORRECTED} [{detector_set(d)}]", s, -1.0))
    out = []
    for kind, items in (("roc", roc_panels), ("scores", loaded)):
        cols = min(4, len(items))
        rows = -(-len(items) // cols)
        size = (max(3.6 * cols, 6.0), 3.3 * rows + 0.4)  # one panel: wide enough for the title
        fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False, layout="constrained")
        for ax, item in zip(axes.flat, items):
            if kind == "roc":
                title, scores, sign = item  # type: ignore[misc]
                _roc(ax, scores, sign, title, colours)
            else:
                d, scores = item  # type: ignore[misc]
                _hist(ax, scores, d, corrected[d], colours)
        for ax in list(axes.flat)[len(items) :]:
            ax.axis("off")
        what = (
            "ROC curves, ID test vs each OOD set"
            if kind == "roc"
            else "score histograms over the 0.5–99.5 % quantiles of the pooled scores (the tails in the edge bins)"
        )
        fig.suptitle(f"{run} ({why})\n{what}", fontsize=10)
        path = output_dir / f"{kind}_{run}.png"
        _save(fig, path)
        out.append(path)
    return out


def figure_runs(study: Study, run: str | None) -> dict[str, str]:
    """{run: why it is shown}: ``run`` alone when given, else the first seed of every run group that has scores."""
    if run is not None:
        return {run: "the run asked for (--run)"}
    with_scores = sorted({r for _, r in study.score_files}, key=lambda r: (run_group(r), _seed(r), r))
    chosen: dict[str, str] = {}
    for r in with_scores:
        if run_group(r) not in {run_group(c) for c in chosen}:
            chosen[r] = "first seed of its group" if SEED_SUFFIX.search(r) else "the group's only run"
    return chosen


def make_report(results_dir: str | Path, output_dir: str | Path, run: str | None = None) -> dict[str, Any]:
    """Tables and figures; figures for the first seed of every run group, or for ``run`` alone.

    Raises:
        ValueError: ``run`` is not a run of the study (the message lists the known runs), or the runs
            have no OOD scores; nothing is written.
    """
    results_dir, output_dir = Path(results_dir), Path(output_dir)
    study = load_study(results_dir)
    if run is not None and run not in study.runs:
        raise ValueError(
            f"--run {run!r} is not a run of the study under {results_dir}; known runs: {', '.join(study.runs)}"
        )
    if study.long.empty:
        raise ValueError(f"the runs under {results_dir} have no OOD scores")
    output_dir.mkdir(parents=True, exist_ok=True)
    table = summary_table(study.long, study.detectors, study.groups)
    shown = figure_runs(study, run)
    note_lines = notes(study)
    note_lines.append(
        "Figures: ROC curves and score histograms of "
        + ("; ".join(f"{r} ({why})" for r, why in shown.items()) or "no run (no raw scores)")
        + "."
    )
    comparison = comparison_table(study.long, study.detectors)
    if not comparison.empty:
        write_comparison(comparison, output_dir)
        note_lines.append(
            "Stochastic against deterministic, per detector (paired by loss and seed): ood_comparison.{csv,md}."
        )
    write_tables(table, output_dir, note_lines)
    figures = [heatmap(table, output_dir, study.detectors, study.groups)]
    colours = ood_colours(sorted({n for p in study.score_files.values() for n in read_scores(p).groups}))
    for r, why in shown.items():
        figures += run_figures(study, r, output_dir, why, colours)
    return {
        "table": table,
        "comparison": comparison,
        "figures": figures,
        "run": next(iter(shown), None),
        "runs": list(shown),
        "notes": note_lines,
    }


def summarize(results_dir: str | Path, output_dir: str | Path, run: str | None = None) -> str:
    """:func:`make_report`, then the text ``summarize_ood.py`` prints: the table, the notes and the figure paths."""
    out = make_report(results_dir, output_dir, run)
    return "\n".join([formatted(out["table"]).to_string(index=False), *out["notes"], *(str(p) for p in out["figures"])])
