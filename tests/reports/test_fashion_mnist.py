"""The Fashion-MNIST report (src/reports/fashion_mnist.py) on synthetic run and OOD outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from src.reports.fashion_mnist import make_fashion_mnist_report

RUNS = {
    "ssl_vicreg_seed_1": ("ssl", "vicreg", None, 0.80),
    "ssl_vicreg_seed_2": ("ssl", "vicreg", None, 0.90),
    "ssl_bayes_z_vicreg_beta_0.001_mc_2_seed_1": ("ssl_bayes_z", "vicreg", 0.001, 0.70),
}


def write_inputs(root: Path) -> tuple[Path, Path]:
    results, reports = root / "results", root / "reports"
    for protocol in ("fashion_mnist", "fashion_mnist_split"):
        for name, (model, loss, beta, acc) in RUNS.items():
            run = results / protocol / "runs" / name
            run.mkdir(parents=True)
            meta = {"model_name": model, "cl_loss_name": loss}
            if beta is not None:
                meta |= {"beta_scale": beta, "mc_samples": 2}
            (run / "results.json").write_text(
                json.dumps(
                    {
                        "metrics": {"val_online_acc": acc - 0.1},
                        "metadata": meta,
                        "offline_metrics": {"test_offline_acc": acc},
                    }
                )
            )
            config = {
                "dataset": {"batch_size": 32},
                "train": {"trainer": {"max_epochs": 3}},
                "finetune": {"trainer": {"max_epochs": 2}},
            }
            (run / "hydra_config.yaml").write_text(yaml.safe_dump(config))
        near = math.nan if protocol == "fashion_mnist" else 60.0
        rows = [
            {
                "detector": det,
                "group": group,
                "near_AUROC_mean": near,
                "near_AUROC_std": 0.0,
                "far_AUROC_mean": far + (group == "ssl_vicreg"),
                "far_AUROC_std": 0.0,
                "near_FPR@95_mean": near,
                "near_FPR@95_std": 0.0,
                "far_FPR@95_mean": 100 - far,
                "far_FPR@95_std": 0.0,
                "seeds": 1,
            }
            for det, far in [("knn", 60.0), ("msp", 70.0), ("mds", 95.0)]
            for group in ("ssl_vicreg", "ssl_bayes_z_vicreg_beta_0.001_mc_2")
        ]
        ood = reports / protocol / "ood"
        ood.mkdir(parents=True)
        pd.DataFrame(rows).to_csv(ood / "ood_report.csv", index=False)
        (ood / "auroc_heatmap.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    return results, reports


def test_report_tables_and_summary(tmp_path: Path) -> None:
    results, reports = write_inputs(tmp_path)
    summary = make_fashion_mnist_report(results, reports)
    text = (reports / "README.md").read_text()
    assert text.startswith("# Fashion-MNIST report")
    assert "pretraining 3 epochs, finetuning 2 epochs, batch size 32" in text
    # seeds averaged: (0.80 + 0.90) / 2 = 85 %, std 7.07
    assert "85.00 ± 7.07" in text and "| 70.00 " in text
    # the ten-class protocol has no near-OOD table; the split protocol has both
    full, split = text.split("## `fashion_mnist_split`")
    assert "near-OOD AUROC" not in full and "near-OOD AUROC" in split and "far-OOD FPR@95" in split
    assert "| mds " in full and "| 96.0 " in full  # mds, far AUROC of the ssl group (95 + 1), one decimal
    assert "nan" not in text.lower()
    assert "with 2 of the paper's OOD detectors and 1 added one (knn) under two protocols" in text
    table = full.split("### far-OOD AUROC (%)")[1].split("###")[0]
    cells = [[c.strip() for c in line.split("|")[1:3]] for line in table.splitlines() if "|" in line]
    assert [c for c in cells if c[1] in ("knn", "msp")] == [
        ["paper", "msp"],
        ["added", "knn"],
    ]  # the paper's detectors first, each row with its set
    assert sorted(p.name for p in (reports / "figures").iterdir()) == [
        "fashion_mnist_auroc_heatmap.png",
        "fashion_mnist_split_auroc_heatmap.png",
    ]
    assert summary["protocols"]["fashion_mnist"]["best_far_auroc"] == {
        "value": 96.0,
        "detector": "mds",
        "group": "ssl_vicreg",
    }
    assert "best_near_auroc" not in summary["protocols"]["fashion_mnist"]
    assert summary["protocols"]["fashion_mnist_split"]["best_near_auroc"]["value"] == 60.0
    on_disk = json.loads((reports / "summary.json").read_text())  # strict JSON: no NaN
    assert on_disk["protocols"]["fashion_mnist"]["ood"][0]["near_AUROC_mean"] is None


def test_report_names_the_missing_stage(tmp_path: Path) -> None:
    results, reports = write_inputs(tmp_path)
    (reports / "fashion_mnist_split" / "ood" / "ood_report.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"fmnist_ood_report@fashion_mnist_split"):
        make_fashion_mnist_report(results, reports)
    with pytest.raises(FileNotFoundError, match="fmnist_pretrain"):
        make_fashion_mnist_report(tmp_path / "nothing", reports)


def test_report_script_writes_the_dvc_metrics_per_protocol(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """fashion_mnist_report.py (the fmnist_report stage): the report, then metrics/ and curves/ per protocol."""
    from src.experiments.scripts import fashion_mnist_report

    results, reports = write_inputs(tmp_path)
    log = results / "fashion_mnist" / "runs" / "ssl_vicreg_seed_1" / "csv/lightning_logs/version_0/metrics.csv"
    log.parent.mkdir(parents=True)
    log.write_text("epoch,step,val_online_acc,train_epoch\n0,5,0.5,\n0,5,,0.0\n")
    fashion_mnist_report.main(["--results-dir", str(results), "--reports-dir", str(reports)])
    assert capsys.readouterr().out.startswith("# Fashion-MNIST report")
    metrics = reports / "metrics"
    assert sorted(p.name for p in metrics.iterdir()) == ["fashion_mnist", "fashion_mnist_split"]
    assert sorted(p.name for p in (metrics / "fashion_mnist").iterdir()) == ["ood_far", "runs"]  # no near-OOD
    assert sorted(p.name for p in (metrics / "fashion_mnist_split").iterdir()) == ["ood_far", "ood_near", "runs"]
    run = json.loads((metrics / "fashion_mnist" / "runs" / "ssl_vicreg_seed_2.json").read_text())
    assert run == {"val_online_acc": pytest.approx(0.8), "test_offline_acc": 0.9}
    far = json.loads((metrics / "fashion_mnist_split" / "ood_far" / "ssl_vicreg.json").read_text())
    assert far == {"knn": 61.0, "msp": 71.0, "mds": 96.0}
    assert (reports / "curves" / "fashion_mnist" / "ssl_vicreg_seed_1.csv").read_text() == (
        "epoch,step,val_online_acc\n0,5,0.5\n"
    )
    assert list((reports / "curves" / "fashion_mnist_split").iterdir()) == []
