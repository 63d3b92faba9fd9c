"""The OOD report from hand-written study outputs: the table (mean over seeds, ± only for n ≥ 2, `–` for
cells without a value, one decimal), both orientations of a sign-inverted detector recomputed from the
raw scores, its csv/md/tex files, the figures of every run group, the text summarize_ood.py prints and
its error for an unknown --run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src.experiments.scripts import summarize_ood
from src.ood.metrics import METRIC_NAMES, compute_all_metrics
from src.reports.ood import (
    CORRECTED,
    comparison_section,
    comparison_table,
    detector_set,
    formatted_comparison,
    heatmap,
    heatmap_rows,
    make_report,
    percent_table,
    read_scores,
    summarize,
    summary_table,
    write_comparison,
)

SETS = {"a": "near", "b": "far", "c": "far"}


def scores_of(seed: int, shift: float) -> dict[str, np.ndarray]:
    """Raw scores as the study writes them: ID above the OOD sets by ``shift`` (negative: inverted)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {"id": rng.normal(shift, 1, 50), "id_label": np.arange(50) % 3}
    out["id_pred"] = np.where(np.arange(50) % 5 == 0, 0, out["id_label"])
    for k, name in enumerate(SETS):
        n = 30 + 5 * k
        # a heavy tail in "c": a few huge scores must not squash the histogram
        out[name] = rng.standard_cauchy(n) * 0.2 if name == "c" else rng.normal(0, 1, n)
        out[f"{name}_pred"], out[f"{name}_label"] = rng.integers(0, 3, n), -np.ones(n, dtype=np.int64)
    out["ood_sets"], out["ood_groups"] = np.array(list(SETS)), np.array(list(SETS.values()))
    return out


def rows_of(s: dict[str, np.ndarray], sign: float = 1.0) -> list[dict[str, float | str]]:
    """The metric rows of ``sign * conf`` computed independently of the report (the evaluator's layout)."""
    rows: list[dict[str, float | str]] = []
    for group in ("near", "far"):
        vecs = []
        for name in [n for n, g in SETS.items() if g == group]:
            conf = sign * np.concatenate([s["id"], s[name]])
            label = np.concatenate([s["id_label"], s[f"{name}_label"]])
            vec = compute_all_metrics(conf, label, np.concatenate([s["id_pred"], s[f"{name}_pred"]]))
            vecs.append(vec)
            rows.append({"Dataset": name, **dict(zip(METRIC_NAMES, (100 * v for v in vec)))})
        rows.append({"Dataset": f"{group}ood", **dict(zip(METRIC_NAMES, 100 * np.mean(vecs, axis=0)))})
    return rows


def write_results(root: Path) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """msp and kldivsimk (sign-inverted: its ID scores below the OOD ones) on a group of two seeds
    (ssl_bayes_z_x), a group of one seed (ssl_bayes_z_y_seed_3) and a deterministic group for which
    kldivsimk has no score (null record); folders in reverse study order on disk."""
    written = {}
    runs = {"ssl_bayes_z_x_seed_1": 2.0, "ssl_bayes_z_x_seed_2": 1.0, "ssl_bayes_z_y_seed_3": 1.5, "ssl_d": 0.5}
    for detector in ("msp", "kldivsimk"):
        out = root / detector
        (out / "scores").mkdir(parents=True)
        records = []
        for k, (run, shift) in enumerate(runs.items()):
            model = "ssl" if run == "ssl_d" else "ssl_bayes_z"
            if detector == "kldivsimk" and model == "ssl":
                records.append({"run_name": run, "model_name": model, "ood_scores": None})
                continue
            s = scores_of(k, -shift if detector == "kldivsimk" else shift)
            np.savez(out / "scores" / f"{run}.npz", **s)
            written[(detector, run)] = s
            records.append({"run_name": run, "model_name": model, "ood_scores": rows_of(s), "corrected_sign": False})
        (out / "runs.json").write_text(json.dumps(records[::-1]))
    return written


def test_table_seeds_missing_cells_and_both_orientations(tmp_path: Path) -> None:
    written = write_results(tmp_path / "results")
    report = make_report(tmp_path / "results", tmp_path / "report")
    table = report["table"].set_index(["detector", "group"])
    detectors = list(dict.fromkeys(report["table"]["detector"]))
    assert detectors == ["msp", "kldivsimk", f"kldivsimk{CORRECTED}"]  # study order, corrected after its detector
    assert table.loc[("msp", "ssl_bayes_z_x"), "seeds"] == 2 and table.loc[("msp", "ssl_bayes_z_y"), "seeds"] == 1
    # reference orientation: the stored rows; corrected: compute_all_metrics on the negated raw scores
    for label, sign in (("kldivsimk", 1.0), (f"kldivsimk{CORRECTED}", -1.0)):
        for metric in ("AUROC", "FPR@95"):
            for split in ("near", "far"):
                per_seed = [
                    next(r[metric] for r in rows_of(written[("kldivsimk", run)], sign) if r["Dataset"] == f"{split}ood")
                    for run in ("ssl_bayes_z_x_seed_1", "ssl_bayes_z_x_seed_2")
                ]
                row = table.loc[(label, "ssl_bayes_z_x")]
                assert row[f"{split}_{metric}_mean"] == pytest.approx(np.mean(per_seed), abs=1e-9), (label, metric)
                assert row[f"{split}_{metric}_std"] == pytest.approx(np.std(per_seed, ddof=1), abs=1e-9)
    ref, cor = table.loc[("kldivsimk", "ssl_bayes_z_y")], table.loc[(f"kldivsimk{CORRECTED}", "ssl_bayes_z_y")]
    assert ref["far_AUROC_mean"] < 50 < cor["far_AUROC_mean"]  # the inverted detector below chance, corrected above
    assert ref["far_AUROC_mean"] + cor["far_AUROC_mean"] == pytest.approx(100.0)  # AUROC mirrors (FPR@95 does not)
    assert np.isnan(ref["far_AUROC_std"])  # one seed: no std
    assert (
        np.isnan(table.loc[("kldivsimk", "ssl_d"), "far_AUROC_mean"])
        and table.loc[("kldivsimk", "ssl_d"), "seeds"] == 0
    )

    md = (tmp_path / "report" / "ood_report.md").read_text()
    lines = {tuple(c.strip() for c in line.strip("|").split("|")[1:3]): line for line in md.splitlines() if "|" in line}
    assert all(line.startswith("| paper ") for key, line in lines.items() if key[0] in detectors)
    x = table.loc[("msp", "ssl_bayes_z_x")]
    assert f"| {x['near_AUROC_mean']:.1f} ± {x['near_AUROC_std']:.1f} " in lines[("msp", "ssl_bayes_z_x")]
    one = lines[("msp", "ssl_bayes_z_y")]
    assert "±" not in one and f"| {table.loc[('msp', 'ssl_bayes_z_y'), 'far_AUROC_mean']:.1f} " in one
    assert lines[("kldivsimk", "ssl_d")].count("–") == 4 and "nan" not in md.lower()
    assert "corrected sign" in md and "n ≥ 2" in md
    assert r"$\pm$" in (tmp_path / "report" / "ood_report.tex").read_text()
    csv = pd.read_csv(tmp_path / "report" / "ood_report.csv")
    assert list(dict.fromkeys(csv["detector"])) == detectors and csv["far_AUROC_std"].isna().sum() == 6


def test_figures_for_every_group(tmp_path: Path) -> None:
    write_results(tmp_path / "results")
    report = make_report(tmp_path / "results", tmp_path / "report")
    assert report["runs"] == ["ssl_bayes_z_x_seed_1", "ssl_bayes_z_y_seed_3", "ssl_d"]  # first seed of each group
    names = {Path(p).name for p in report["figures"]}
    assert names == {"auroc_heatmap.png"} | {f"{k}_{r}.png" for k in ("roc", "scores") for r in report["runs"]}
    for path in report["figures"]:
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "report" / "ood_report.md").read_text()
    assert "ssl_bayes_z_x_seed_1 (first seed of its group)" in md and "ssl_d (the group's only run)" in md
    one = make_report(tmp_path / "results", tmp_path / "one", run="ssl_bayes_z_x_seed_2")
    assert {Path(p).name for p in one["figures"]} == {
        "auroc_heatmap.png",
        "roc_ssl_bayes_z_x_seed_2.png",
        "scores_ssl_bayes_z_x_seed_2.png",
    }


def test_scores_written_before_predictions_were_stored(tmp_path: Path) -> None:
    """A score file holding only confidences: near/far from the run's rows, corrected rows still computed."""
    s = scores_of(0, 1.0)
    path = tmp_path / "old.npz"
    np.savez(path, **{k: s[k] for k in ("id", *SETS)})
    old = read_scores(path, rows_of(s))
    assert old.groups == SETS and old.pred == {} and list(old.conf) == ["id", *SETS]
    np.savez(tmp_path / "new.npz", **s)
    new = read_scores(tmp_path / "new.npz")
    assert new.groups == SETS and set(new.pred) == set(new.label) == {"id", *SETS}


def test_summarize_prints_the_table_and_an_unknown_run_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_results(tmp_path / "results")
    text = summarize(tmp_path / "results", tmp_path / "report", run="ssl_bayes_z_x_seed_2")
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["set", "detector", "group", "n"]
    assert lines[-1].endswith("scores_ssl_bayes_z_x_seed_2.png") and lines[-3].endswith("auroc_heatmap.png")
    summarize_ood.main(["--results-dir", str(tmp_path / "results"), "--output-dir", str(tmp_path / "all")])
    assert capsys.readouterr().out.rstrip().endswith("scores_ssl_d.png")
    args = ["--results-dir", str(tmp_path / "results"), "--output-dir", str(tmp_path / "bad"), "--run", "ssl_x_seed_9"]
    with pytest.raises(SystemExit) as exit_info:
        summarize_ood.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert (
        "--run 'ssl_x_seed_9' is not a run" in err and "known runs: ssl_bayes_z_x_seed_1, ssl_bayes_z_x_seed_2" in err
    )
    assert not (tmp_path / "bad").exists()  # nothing written


def test_detector_sets_order_the_tables_and_the_heat_map(tmp_path: Path) -> None:
    """The paper's nine (either orientation) are ``paper``, every other detector ``added``; the tables and
    the heat map list the paper's first, the heat map under a heading per set."""
    assert [detector_set(d) for d in ("msp", f"gram{CORRECTED}", "knn", "vim", "not_registered")] == [
        "paper",
        "paper",
        "added",
        "added",
        "added",
    ]
    detectors = ["knn", "msp", "gram", f"gram{CORRECTED}", "ebo"]
    assert heatmap_rows(detectors) == [
        ("paper's detectors", True),
        ("msp", False),
        ("gram", False),
        (f"gram{CORRECTED}", False),
        ("added detectors", True),
        ("knn", False),
        ("ebo", False),
    ]
    assert heatmap_rows(["msp"]) == [("paper's detectors", True), ("msp", False)]  # no empty heading
    long = pd.DataFrame(
        [
            {"detector": d, "group": "g", "run": "g", "Dataset": ds, "AUROC": auroc, "FPR@95": 10.0}
            for d, auroc in (("knn", 70.0), ("msp", 80.0), ("ebo", 60.0))
            for ds in ("nearood", "farood")
        ]
    )
    table = summary_table(long, ["msp", "ebo", "knn"], ["g"])
    assert list(table["set"]) == ["paper", "added", "added"]
    text = percent_table(table.iloc[[1, 0, 2]], "far_AUROC_mean")  # an added row first: reordered
    assert text.values.tolist() == [["paper", "msp", "80.0"], ["added", "ebo", "60.0"], ["added", "knn", "70.0"]]
    path = heatmap(table, tmp_path, ["msp", "ebo", "knn"], ["g"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stochastic_against_deterministic_is_paired_by_loss_and_seed(tmp_path: Path) -> None:
    """comparison_table against differences computed here by hand: pairs by (loss, seed), wins, n, no std for
    one pair, no row for a detector without deterministic scores, a seed without a partner left out."""
    auroc = {  # (run, model_name) -> {detector: (near, far)}
        ("ssl_barlow_twins_seed_1", "ssl"): {"msp": (60.0, 70.0), "knn": (50.0, 80.0)},
        ("ssl_barlow_twins_seed_2", "ssl"): {"msp": (62.0, 72.0), "knn": (55.0, 81.0)},
        ("ssl_bayes_h_barlow_seed_1", "ssl_bayes_h"): {"msp": (65.0, 69.0), "knn": (52.0, 90.0), "sigmamean": (1, 2)},
        ("ssl_bayes_h_barlow_seed_2", "ssl_bayes_h"): {"msp": (61.0, 75.0), "knn": (58.0, 85.0), "sigmamean": (3, 4)},
        ("ssl_bayes_h_barlow_seed_3", "ssl_bayes_h"): {"msp": (99.0, 99.0)},  # no deterministic seed 3
        ("ssl_bayes_z_vicreg_seed_1", "ssl_bayes_z"): {"msp": (70.0, 70.0)},  # no deterministic VICReg
        ("ssl_vicreg_seed_2", "ssl"): {"msp": (50.0, 60.0)},
        ("ssl_bayes_z_vicreg_seed_2", "ssl_bayes_z"): {"msp": (40.0, 65.0)},
    }
    long = pd.DataFrame(
        [
            {
                "detector": d,
                "run": run,
                "group": run.rsplit("_seed_", 1)[0],
                "model_name": model,
                "Dataset": ds,
                "AUROC": values[k],
                "FPR@95": 5.0,
            }
            for (run, model), per in auroc.items()
            for d, values in per.items()
            for k, ds in enumerate(("nearood", "farood"))
        ]
    )
    table = comparison_table(long, ["msp", "sigmamean", "knn"]).set_index(["detector", "group"])
    assert list(table.index) == [
        ("msp", "ssl_bayes_h_barlow"),
        ("msp", "ssl_bayes_z_vicreg"),
        ("knn", "ssl_bayes_h_barlow"),
    ]  # the given detector order; sigmamean has no deterministic scores
    h = table.loc[("msp", "ssl_bayes_h_barlow")]
    near, far = [65.0 - 60.0, 61.0 - 62.0], [69.0 - 70.0, 75.0 - 72.0]
    assert h["against"] == "ssl_barlow_twins" and h["n"] == 2 and h["set"] == "paper"
    assert h["near_diff_mean"] == pytest.approx(np.mean(near)) and h["near_diff_std"] == pytest.approx(
        np.std(near, ddof=1)
    )
    assert h["far_diff_mean"] == pytest.approx(np.mean(far)) and h["near_wins"] == 1 and h["far_wins"] == 1
    z = table.loc[("msp", "ssl_bayes_z_vicreg")]
    assert z["against"] == "ssl_vicreg" and z["n"] == 1 and z["far_diff_mean"] == pytest.approx(5.0)
    assert np.isnan(z["far_diff_std"]) and z["far_wins"] == 1 and z["near_wins"] == 0
    k = table.loc[("knn", "ssl_bayes_h_barlow")]
    assert k["set"] == "added" and k["far_wins"] == 2 and k["far_diff_mean"] == pytest.approx((10.0 + 4.0) / 2)

    text = formatted_comparison(table.reset_index()[list(comparison_table(long).columns)])
    row = text[(text["detector"] == "msp") & (text["group"] == "ssl_bayes_z_vicreg")].iloc[0]
    assert row["far ΔAUROC (pp)"] == "+5.0" and row["far wins"] == "1/1" and row["near ΔAUROC (pp)"] == "-10.0"
    write_comparison(comparison_table(long), tmp_path)
    md = (tmp_path / "ood_comparison.md").read_text()
    assert "| msp " in md and "+2.0 ± 4.2" in md and "nan" not in md.lower()
    section = comparison_section(tmp_path, "###")  # what the demo and Fashion-MNIST reports include
    assert section[0] == "### OOD detection: stochastic against deterministic, per detector"
    assert "n = 1–2 seeds" in section[2] and "+2.0 ± 4.2" in section[4]
    assert comparison_section(tmp_path / "nothing") == []
    no_deterministic = long[long["model_name"] != "ssl"]
    assert comparison_table(no_deterministic).empty  # e.g. the paper's CIFAR-10 ablation
