"""The numbers-only files behind `dvc metrics show` and `dvc plots show` (src/reports/dvc_metrics.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from src.reports.dvc_metrics import (
    LIGHTNING_CSV,
    curve_rows,
    ood_auroc,
    run_metrics,
    write_curves,
    write_dvc_files,
    write_ood_metrics,
    write_run_metrics,
)

LOG = """epoch,step,train_epoch,val_loss,val_online_acc,val_online_loss,val_mu_h_mean
0,12,,66.1,0.1875,2.16,0.01
0,12,0.0,,,,
1,25,,56.2,0.25,2.10,0.02
1,25,1.0,,,,
2,26,,53.7,0.5,2.06,0.02
"""


def results(acc: float, finetune: float | None = 0.9, kl: float | None = None) -> dict:
    out: dict = {
        "metrics": {"val_online_acc": acc, "val_loss": 53.7, "val_mu_h_mean": 0.1},
        "metadata": {"model_name": "ssl", "optimizer": {"lr": 1e-3}, "run_id": "abc"},
        "model_ckpt_path": "x/checkpoints/model.ckpt",
    }
    if kl is not None:
        out["metrics"]["val_kl_prior_loss"] = kl
    if finetune is not None:
        out["offline_metrics"] = {"test_offline_acc": finetune, "test_offline_ece": 0.05, "test_offline_loss": 0.3}
    return out


def write_runs(root: Path) -> Path:
    runs = root / "runs"
    for name, res in [("ssl_vicreg", results(0.5)), ("ssl_bayes_h_barlow", results(0.25, kl=560.0))]:
        (runs / name / LIGHTNING_CSV).parent.mkdir(parents=True)
        (runs / name / "results.json").write_text(json.dumps(res))
        (runs / name / LIGHTNING_CSV).write_text(LOG)
    (runs / "unfinished").mkdir()  # no results.json, no log: not a row
    return runs


def ood_table() -> pd.DataFrame:
    nan = float("nan")
    return pd.DataFrame(
        [
            {"detector": "msp", "group": "ssl_vicreg", "near_AUROC_mean": 61.0, "far_AUROC_mean": 91.23456},
            {"detector": "sigmamean", "group": "ssl_vicreg", "near_AUROC_mean": nan, "far_AUROC_mean": nan},
            {"detector": "msp", "group": "ssl_bayes_h_barlow", "near_AUROC_mean": 60.0, "far_AUROC_mean": 80.0},
            {"detector": "sigmamean", "group": "ssl_bayes_h_barlow", "near_AUROC_mean": 55.0, "far_AUROC_mean": 40.0},
        ]
    )


def test_run_metrics_keeps_the_chosen_finite_numbers_only() -> None:
    assert run_metrics(results(0.5, kl=560.0)) == {
        "val_online_acc": 0.5,
        "val_loss": 53.7,
        "val_kl_prior_loss": 560.0,
        "test_offline_acc": 0.9,
        "test_offline_ece": 0.05,
    }
    # no finetune, a NaN metric: those keys are absent (DVC prints "-")
    assert run_metrics(results(math.nan, finetune=None)) == {"val_loss": 53.7}


def test_ood_auroc_per_group_without_empty_cells() -> None:
    assert ood_auroc(ood_table(), "far") == {
        "ssl_vicreg": {"msp": 91.2346},
        "ssl_bayes_h_barlow": {"msp": 80.0, "sigmamean": 40.0},
    }
    assert ood_auroc(ood_table(), "near")["ssl_bayes_h_barlow"] == {"msp": 60.0, "sigmamean": 55.0}


def test_ood_auroc_keys_rows_that_share_a_cell_by_their_other_text_column() -> None:
    table = ood_table()
    table["orientation"] = "reference"
    corrected = table[table["detector"] == "sigmamean"].assign(orientation="corrected", far_AUROC_mean=60.0)
    both = pd.concat([table, corrected], ignore_index=True)
    assert ood_auroc(both, "far")["ssl_bayes_h_barlow"] == {
        "msp_reference": 80.0,
        "sigmamean_reference": 40.0,
        "sigmamean_corrected": 60.0,
    }


def test_ood_auroc_names_a_missing_column() -> None:
    with pytest.raises(ValueError, match=r"no column \['far_AUROC_mean'\]"):
        ood_auroc(ood_table().drop(columns="far_AUROC_mean"), "far")


def test_curve_rows_are_the_validation_rows(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text(LOG)
    rows = curve_rows(tmp_path / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert [float(r["val_online_acc"]) for r in rows] == [0.1875, 0.25, 0.5]
    assert list(rows[0]) == ["epoch", "step", "val_online_acc", "val_online_loss", "val_loss"]


def test_write_dvc_files_layout_and_content(tmp_path: Path) -> None:
    runs = write_runs(tmp_path)
    ood_table().to_csv(tmp_path / "ood_report.csv", index=False)
    metrics, curves = tmp_path / "report" / "metrics", tmp_path / "report" / "curves"
    (metrics / "runs").mkdir(parents=True)
    (metrics / "runs" / "gone.json").write_text("{}")  # a stale row of an earlier run is removed
    written = write_dvc_files(runs, tmp_path / "ood_report.csv", metrics, curves)
    rel = sorted(str(p.relative_to(tmp_path / "report")) for p in written)
    assert rel == [
        "curves/ssl_bayes_h_barlow.csv",
        "curves/ssl_vicreg.csv",
        "metrics/ood_far/ssl_bayes_h_barlow.json",
        "metrics/ood_far/ssl_vicreg.json",
        "metrics/ood_near/ssl_bayes_h_barlow.json",
        "metrics/ood_near/ssl_vicreg.json",
        "metrics/runs/ssl_bayes_h_barlow.json",
        "metrics/runs/ssl_vicreg.json",
    ]
    assert sorted(p.name for p in (metrics / "runs").iterdir()) == ["ssl_bayes_h_barlow.json", "ssl_vicreg.json"]
    assert json.loads((metrics / "runs" / "ssl_bayes_h_barlow.json").read_text())["val_kl_prior_loss"] == 560.0
    assert json.loads((metrics / "ood_far" / "ssl_vicreg.json").read_text()) == {"msp": 91.2346}
    assert (curves / "ssl_vicreg.csv").read_text().splitlines() == [
        "epoch,step,val_online_acc,val_online_loss,val_loss",
        "0,12,0.1875,2.16,66.1",
        "1,25,0.25,2.10,56.2",
        "2,26,0.5,2.06,53.7",
    ]


def test_no_near_ood_writes_no_near_folder(tmp_path: Path) -> None:
    table = ood_table().assign(near_AUROC_mean=float("nan"))
    table.to_csv(tmp_path / "ood_report.csv", index=False)
    (tmp_path / "m" / "ood_near").mkdir(parents=True)  # from an earlier protocol with near-OOD
    write_ood_metrics(tmp_path / "ood_report.csv", tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["ood_far"]


def test_missing_inputs_name_the_stage(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no <run>/results\.json under .*run the pretraining stages first"):
        write_run_metrics(tmp_path, tmp_path / "m")
    with pytest.raises(FileNotFoundError, match=r"ood_report\.csv is missing; run the OOD report stage first"):
        write_ood_metrics(tmp_path / "ood_report.csv", tmp_path / "m")
    assert write_curves(tmp_path, tmp_path / "c") == [] and (tmp_path / "c").is_dir()
