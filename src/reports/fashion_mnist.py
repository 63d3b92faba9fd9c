"""The Fashion-MNIST report: ``data/reports/fashion_mnist/README.md``, ``summary.json`` and figures.

Collects, per OOD protocol (``fashion_mnist``: ten ID classes; ``fashion_mnist_split``: classes
0–5 ID, 6–9 near-OOD), the runs of the ablation matrix and the OOD study's report
(``summarize_ood.py``'s ``ood_report.csv`` and figures), and writes:

- accuracy per model × loss × β × MC samples (mean ± std over seeds): the online linear probe's
  val accuracy during pretraining and the finetuned linear head's (frozen encoder) test accuracy;
- per detector × run group: far-OOD AUROC and FPR@95, and for the split protocol near-OOD AUROC
  and FPR@95 (percent, mean over seeds);
- the OOD report's figures (AUROC heat map, ROC curves and score histograms of one run).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from src.data.prepare.fashion_mnist_data import PROTOCOL_NAMES
from src.reports.ood import CORRECTED, comparison_section, detector_set, percent_table, run_group
from src.utils.io import read_json, write_json, write_text

PROTOCOL_TITLES = {
    "fashion_mnist": "`fashion_mnist`: ID all ten classes; far-OOD digits and noise",
    "fashion_mnist_split": "`fashion_mnist_split`: ID classes 0–5; near-OOD classes 6–9; far-OOD digits and noise",
}


def _run_settings(run_dir: Path) -> dict[str, Any]:
    """Epochs, batch size and data subset of a run, from the ``hydra_config.yaml`` it saved (empty if absent)."""
    path = run_dir / "hydra_config.yaml"
    if not path.is_file():
        return {}
    cfg = yaml.safe_load(path.read_text()) or {}
    dataset, train, finetune = cfg.get("dataset", {}), cfg.get("train", {}), cfg.get("finetune", {})
    return {
        "pretrain_epochs": (train.get("trainer") or {}).get("max_epochs"),
        "finetune_epochs": (finetune.get("trainer") or {}).get("max_epochs"),
        "batch_size": dataset.get("batch_size"),
        "train_per_class": dataset.get("train_per_class"),
    }


def run_table(runs_dir: Path) -> pd.DataFrame:
    """One row per run: its group (name without the seed), model, loss, β, MC samples, accuracies."""
    rows = []
    for results in sorted(runs_dir.glob("*/results.json")):
        r = read_json(results)
        meta = r["metadata"]
        stochastic = meta["model_name"] != "ssl"
        rows.append(
            {
                "group": run_group(results.parent.name),
                "run": results.parent.name,
                "model": meta["model_name"],
                "loss": meta.get("cl_loss_name"),
                "beta_scale": meta.get("beta_scale") if stochastic else None,
                "mc_samples": meta.get("mc_samples") if stochastic else None,
                "val_online_acc": r["metrics"].get("val_online_acc"),
                "test_finetune_acc": (r.get("offline_metrics") or {}).get("test_offline_acc"),
                **_run_settings(results.parent),
            }
        )
    if not rows:
        raise FileNotFoundError(f"no <run>/results.json under {runs_dir}; run the fmnist_pretrain stages first")
    return pd.DataFrame(rows)


def _pm(mean: float, std: float, count: int, scale: float = 1.0) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if count < 2:
        return f"{scale * mean:.2f}"
    return f"{scale * mean:.2f} ± {scale * std:.2f}"


def accuracy_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per run group: mean ± std over seeds of both accuracies (percent)."""
    rows = []
    for group, g in runs.groupby("group", sort=True):
        first = g.iloc[0]
        rows.append(
            {
                "run group": group,
                "model": first["model"],
                "loss": first["loss"],
                "β": "–" if first["beta_scale"] is None or pd.isna(first["beta_scale"]) else f"{first['beta_scale']:g}",
                "MC": "–" if first["mc_samples"] is None or pd.isna(first["mc_samples"]) else int(first["mc_samples"]),
                "seeds": len(g),
                "online probe val acc (%)": _pm(g["val_online_acc"].mean(), g["val_online_acc"].std(), len(g), 100),
                "finetune test acc (%)": _pm(g["test_finetune_acc"].mean(), g["test_finetune_acc"].std(), len(g), 100),
            }
        )
    return pd.DataFrame(rows)


def detector_table(ood: pd.DataFrame, column: str) -> pd.DataFrame:
    """Detector × run group of ``column`` (e.g. ``far_AUROC_mean``): one decimal, `–` for no value,
    rows in the study's order (each sign-inverted detector followed by its corrected sign)."""
    return percent_table(ood, column)


def _detector_count_text(detectors: set[str]) -> str:
    """``"the paper's nine OOD detectors and 8 added ones (ash, …)"`` from the detectors of the OOD reports."""
    paper = sorted(d for d in detectors if detector_set(d) == "paper")
    added = sorted(d for d in detectors if detector_set(d) == "added")
    text = "the paper's nine OOD detectors" if len(paper) == 9 else f"{len(paper)} of the paper's OOD detectors"
    if added:
        text += f" and {len(added)} added one{'' if len(added) == 1 else 's'} ({', '.join(added)})"
    return text


def _epochs(n: Any) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def _settings_text(settings: dict[str, Any] | None) -> str:
    """``train_per_class=30, test_per_class=all, …`` from a protocol's build settings."""
    if not settings:
        return "settings not recorded"
    keys = ("train_per_class", "test_per_class", "ood_count", "seed")
    return ", ".join(f"{k}={'all' if settings.get(k) is None else settings.get(k)}" for k in keys)


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts with None for missing values (NaN is not JSON)."""
    return df.astype(object).where(df.notna(), None).to_dict(orient="records")


def _md(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False, floatfmt=".2f", missingval="–")


def make_fashion_mnist_report(results_dir: Path, reports_dir: Path, data_dir: Path | None = None) -> dict[str, Any]:
    """Write ``README.md``, ``summary.json`` and ``figures/`` under ``reports_dir``; return the summary.

    Reads ``<results_dir>/<protocol>/runs/*/results.json`` and
    ``<reports_dir>/<protocol>/ood/{ood_report.csv,*.png}`` for both protocols.

    Raises:
        FileNotFoundError: a protocol has no runs or no OOD report (the message names the stage).
    """
    results_dir, reports_dir = Path(results_dir), Path(reports_dir)
    figures = reports_dir / "figures"
    if figures.exists():
        shutil.rmtree(figures)
    figures.mkdir(parents=True)
    summary: dict[str, Any] = {"protocols": {}}
    sections: list[str] = []
    settings_line = ""
    detectors: set[str] = set()
    for protocol in PROTOCOL_NAMES:
        runs = run_table(results_dir / protocol / "runs")
        ood_dir = reports_dir / protocol / "ood"
        ood_csv = ood_dir / "ood_report.csv"
        if not ood_csv.is_file():
            raise FileNotFoundError(f"{ood_csv} is missing; run the fmnist_ood_report@{protocol} stage first")
        ood = pd.read_csv(ood_csv)
        detectors |= {d.removesuffix(CORRECTED) for d in ood["detector"]}
        acc = accuracy_table(runs)
        pngs = []
        for png in sorted(ood_dir.glob("*.png")):
            target = figures / f"{protocol}_{png.name}"
            shutil.copy2(png, target)
            pngs.append(target)
        first = runs.iloc[0]
        settings_line = (
            f"pretraining {_epochs(first.get('pretrain_epochs'))}, finetuning {_epochs(first.get('finetune_epochs'))}, "
            f"batch size {first.get('batch_size')}"
        )
        lines = [f"## {PROTOCOL_TITLES[protocol]}", ""]
        if data_dir is not None:
            proto = read_json(Path(data_dir) / "benchmark_imglist" / protocol / "protocol.json")
            counts = {
                name: sum(1 for _ in (Path(data_dir) / "benchmark_imglist" / protocol / name).open())
                for name in [
                    *proto["id"].values(),
                    proto["ood"]["val"],
                    *proto["ood"]["near"].values(),
                    *proto["ood"]["far"].values(),
                ]
            }
            lines += ["Image lists: " + ", ".join(f"`{k}` {v:,}" for k, v in counts.items()) + ".", ""]
            summary["protocols"].setdefault(protocol, {})["list_sizes"] = counts
            summary["settings"] = proto.get("settings")
        lines += [
            "### Accuracy",
            "",
            "Online probe: the linear probe trained alongside pretraining, on the val split; finetune: a linear "
            "head trained on the frozen encoder, on the official test images of the ID classes.",
            "",
            _md(acc),
            "",
        ]
        tables = [("far-OOD AUROC (%)", "far_AUROC_mean"), ("far-OOD FPR@95 (%)", "far_FPR@95_mean")]
        if ood["near_AUROC_mean"].notna().any():
            tables = [("near-OOD AUROC (%)", "near_AUROC_mean"), ("near-OOD FPR@95 (%)", "near_FPR@95_mean"), *tables]
        for title, column in tables:
            lines += [
                f"### {title}",
                "",
                detector_table(ood, column).to_markdown(index=False, disable_numparse=True),
                "",
            ]
        lines += comparison_section(ood_dir, "###")
        lines += ["### Figures", ""] + [f"![{p.stem}](figures/{p.name})\n" for p in pngs]
        sections += lines
        best = ood.loc[ood["far_AUROC_mean"].idxmax()]
        summary["protocols"].setdefault(protocol, {}).update(
            {
                "runs": _records(runs),
                "ood": _records(ood),
                "best_far_auroc": {
                    "value": float(best["far_AUROC_mean"]),
                    "detector": str(best["detector"]),
                    "group": str(best["group"]),
                },
            }
        )
        if ood["near_AUROC_mean"].notna().any():
            best = ood.loc[ood["near_AUROC_mean"].idxmax()]
            summary["protocols"][protocol]["best_near_auroc"] = {
                "value": float(best["near_AUROC_mean"]),
                "detector": str(best["detector"]),
                "group": str(best["group"]),
            }
    header = [
        "# Fashion-MNIST report",
        "",
        "Stochastic SSL (Barlow Twins and VICReg; deterministic, Bayes-H, Bayes-Z; ResNet-18 with the CIFAR "
        "stem) on the real Fashion-MNIST (Debian's `dataset-fashion-mnist`), with "
        f"{_detector_count_text(detectors)} under two "
        "protocols in OpenOOD v1.5's layout. Produced by `dvc repro fmnist_report` "
        f"({settings_line}; data: {_settings_text(summary.get('settings'))}).",
        "",
        "Probabilistic detectors (sigmamean, logpprior, kldivsimk) give no score for deterministic models. "
        "sigmamean, kldivsimk and gram appear twice: with the reference's score orientation (as in the paper; it "
        "looks inverted, below 50 % AUROC) and as `(corrected sign)`, the metrics of the negated scores. "
        "Set `paper`: the paper's detectors; set `added`: those added beside them (OpenOOD v1.5's definitions). "
        "Detector cells are percent means over the seeds of a run group, one decimal; `–`: no value.",
        "",
    ]
    write_text(reports_dir / "README.md", "\n".join(header + sections))
    write_json(reports_dir / "summary.json", summary, indent=2)
    return summary
