"""The OOD study end to end on runs trained on the demo data (slow).

One ``--postprocessor-name all`` study over every registered detector, including a throw-away
detector that this test defines and registers, with its config in a temporary config folder:
one module and one config are all a new detector needs. Checked: the per-run JSON schema and the
null records, ``runs.json``, the raw scores, the new detector's scores against its formula, one
model load per run, resume, a detector run alone giving the records of the shared study, and the
report.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from src.ood import study
from src.ood.detectors import CONFIG_DIR, DETECTORS, PAPER_DETECTORS, build_detector, register, study_order
from src.ood.detectors.base import Detector
from src.ood.detectors.umds import import_faiss
from src.ood.features import Features
from src.ood.protocol import get_protocol
from src.ood.study import run_ood_study, run_studies, run_study
from src.ood.wrapper import load_ood_network
from src.reports.ood import CORRECTED, make_report
from tests.ood.fakes import DEMO_RUNS

ROWS = ["digits89", "nearood", "photos", "noise", "farood"]
NEW = "energy_test"


class EnergyTest(Detector):
    """A throw-away detector: the free energy ``conf = T · logsumexp(f / T)`` of the logits [B, C]."""

    name = NEW
    reads = frozenset({"logits"})

    def __init__(
        self, temperature: float = 1.0, sweep: dict[str, list[Any]] | None = None, corrected_sign: bool = False
    ):
        super().__init__(sweep=sweep, corrected_sign=corrected_sign)
        self.temperature = float(temperature)

    def score(self, features: Features) -> tuple[Tensor, Tensor]:
        logits = features.logits
        return logits.argmax(1), self.temperature * torch.logsumexp(logits / self.temperature, dim=1)


@pytest.fixture
def new_detector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Registers ``EnergyTest`` (for this test only) and returns a config folder holding its config
    next to copies of the real ones."""
    monkeypatch.setattr(DETECTORS, "_entries", dict(DETECTORS._entries))
    monkeypatch.setattr(DETECTORS, "_targets", dict(DETECTORS._targets))
    register(EnergyTest)
    conf = tmp_path / "conf_ood"
    shutil.copytree(CONFIG_DIR, conf)
    (conf / f"{NEW}.yaml").write_text("# free energy of the logits\naps_mode: false\nargs:\n  temperature: 2.0\n")
    return conf


def check_record(record: dict[str, Any], out: Path, name: str, config_dir: Path) -> None:
    keys = {
        "run_name", "model_path", "finetuner_path", "model_name", "hyperparam", "hyperparam_fixed",
        "corrected_sign", "ood_scores",
    }  # fmt: skip
    if name == "umds":  # which k-means ran (faiss when installed)
        assert set(record) == keys | {"detector_info"}
        assert record["detector_info"]["kmeans"] == ("torch" if import_faiss() is None else "faiss")
    elif name == "vim":  # the principal subspace's size (dim, capped at E // 2 on narrow features)
        assert set(record) == keys | {"detector_info"}
        assert 0 < record["detector_info"]["principal_dim"] < record["detector_info"]["feature_dim"]
    elif name == "knn":  # the rank used: min(K, N)
        assert set(record) == keys | {"detector_info"}
        info = record["detector_info"]
        assert info["K_used"] == min(record["hyperparam"]["K"], info["train_features"])
    else:
        assert set(record) == keys
    assert record["hyperparam_fixed"] == {} and record["corrected_sign"] is False
    assert json.loads((out / f"{record['run_name']}.json").read_text()) == record
    assert record["model_path"].endswith("checkpoints/model.ckpt")
    assert record["finetuner_path"].endswith("finetune/checkpoints/last.ckpt")
    if record["model_name"] == "ssl" and DETECTORS[name].probabilistic:
        assert record["ood_scores"] is None and record["hyperparam"] is None
        return
    searched = [k.removesuffix("_list") for k in build_detector(name, config_dir=config_dir).sweep]
    assert list(record["hyperparam"]) == searched  # the values the search chose, by name
    rows = record["ood_scores"]
    assert [r["Dataset"] for r in rows] == ROWS
    for r in rows:
        assert set(r) == {"Dataset", "FPR@95", "AUROC", "AUPR_IN", "AUPR_OUT", "ACC"}
        assert all(0.0 <= r[k] <= 100.0 for k in ("FPR@95", "AUROC", "AUPR_IN", "AUPR_OUT", "ACC")), r
    assert len({r["ACC"] for r in rows}) == 1  # one ID accuracy for every row
    assert rows[1]["AUROC"] == pytest.approx(rows[0]["AUROC"])  # nearood: the mean of one near set
    assert rows[4]["AUROC"] == pytest.approx((rows[2]["AUROC"] + rows[3]["AUROC"]) / 2)
    scores = np.load(out / "scores" / f"{record['run_name']}.npz")
    sets = ["digits89", "photos", "noise"]
    assert set(scores.files) == {"id", "id_pred", "id_label", "ood_sets", "ood_groups"} | {
        f"{s}{suffix}" for s in sets for suffix in ("", "_pred", "_label")
    }
    assert list(scores["ood_sets"]) == sets and list(scores["ood_groups"]) == ["near", "far", "far"]


@pytest.mark.slow
def test_all_detectors_with_a_new_one_on_demo_runs(
    demo_root: Path, demo_runs: Path, new_detector: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert study_order()[: len(PAPER_DETECTORS)] == list(PAPER_DETECTORS) and NEW in study_order()
    loads: list[str] = []
    real_load = study.load_ood_network
    monkeypatch.setattr(
        study, "load_ood_network", lambda path, *a, **k: loads.append(str(path)) or real_load(path, *a, **k)
    )
    results = tmp_path / "ood" / "demo"
    common: dict[str, Any] = dict(batch_size=128, seed=0, progress=False, config_dir=new_detector)
    records = run_ood_study(demo_runs, "demo", demo_root, "all", results, **common)
    assert sorted(loads) == sorted(set(loads)) and len(loads) == len(DEMO_RUNS)  # one load per run
    assert list(records) == study_order()
    for name, recs in records.items():
        out = results / name
        assert [r["run_name"] for r in recs] == sorted(r for r, _, _ in DEMO_RUNS)
        for record in recs:
            check_record(record, out, name, new_detector)
        assert json.loads((out / "runs.json").read_text()) == recs

    # the new detector's scores are its formula on the network's logits (T = 2 from its config)
    protocol = get_protocol("demo", demo_root)
    for run, model_name, _ in DEMO_RUNS:
        if model_name == "ssl_bayes_h":
            continue  # stochastic logits: the formula is checked on the deterministic ones
        net = load_ood_network(
            demo_runs / run / "checkpoints" / "model.ckpt",
            demo_runs / run / "finetune/checkpoints/last.ckpt",
            model_name,
        )
        with torch.no_grad():
            logits = torch.cat([net.logits(x) for x, _ in protocol.loader("id/test", "default", 128)])
        expected = 2.0 * torch.logsumexp(logits / 2.0, dim=1)
        torch.testing.assert_close(torch.from_numpy(np.load(results / NEW / "scores" / f"{run}.npz")["id"]), expected)

    # one detector alone (its own features, no shared inputs) gives the records of the shared study
    for name in ("mds", "logpprior", "odin"):
        alone = run_study(demo_runs, "demo", demo_root, name, tmp_path / "alone" / name, **common)
        assert alone == records[name], name

    # resume: cached runs are not recomputed (a model file is not even opened)
    msp = results / "msp"
    stamps = {p.name: p.stat().st_mtime_ns for p in msp.glob("*.json") if p.name != "runs.json"}
    moved = demo_runs.parent / "moved_ckpt"
    shutil.move(demo_runs / DEMO_RUNS[1][0] / "checkpoints", moved)
    try:
        again = run_study(demo_runs, "demo", demo_root, "msp", msp, progress=False)
    finally:
        shutil.move(moved, demo_runs / DEMO_RUNS[1][0] / "checkpoints")
    assert {p.name: p.stat().st_mtime_ns for p in msp.glob("*.json") if p.name != "runs.json"} == stamps
    assert again == json.loads((msp / "runs.json").read_text())

    # fixed hyper-parameters: no search, recorded; a cached record with other fixed values is refused
    fixed_dir = tmp_path / "fixed"
    fixed = run_study(demo_runs, "demo", demo_root, "edsimk", fixed_dir, hyperparam={"K": 3}, **common)
    assert [r["hyperparam"] for r in fixed] == [{"K": 3}] * len(DEMO_RUNS)
    assert [r["hyperparam_fixed"] for r in fixed] == [{"K": 3}] * len(DEMO_RUNS)
    assert json.loads((fixed_dir / f"{DEMO_RUNS[0][0]}.json").read_text())["hyperparam"] == {"K": 3}
    with pytest.raises(ValueError, match=r"was computed with --hyperparam \{'K': 3\}, not \{'K': 4\}"):
        run_study(demo_runs, "demo", demo_root, "edsimk", fixed_dir, hyperparam={"K": 4}, **common)
    with pytest.raises(ValueError, match=r"was computed with --hyperparam \{\}, not \{'K': 3\}"):
        run_study(demo_runs, "demo", demo_root, "edsimk", results / "edsimk", hyperparam={"K": 3}, **common)

    report = make_report(results, tmp_path / "reports")
    table = report["table"]
    # the report's order; each sign-inverted detector followed by its corrected orientation
    inverted = {d: DETECTORS[d].reference_sign_inverted for d in study_order()}
    expected = [x for d in study_order() for x in ([d, f"{d}{CORRECTED}"] if inverted[d] else [d])]
    assert list(dict.fromkeys(table["detector"])) == expected
    assert set(table["group"]) == {"ssl_barlow", "ssl_bayes_h_barlow", "ssl_bayes_z_vicreg"}
    no_score = table["detector"].str.replace(CORRECTED, "").map(lambda d: DETECTORS[d].probabilistic)
    no_score &= table["group"] == "ssl_barlow"
    assert (table["seeds"] == np.where(no_score, 0, 1)).all()  # one seed per run; none where no score
    assert table.loc[no_score, "far_AUROC_mean"].isna().all() and table.loc[~no_score, "far_AUROC_mean"].notna().all()
    for ext in ("csv", "md", "tex"):
        assert (tmp_path / "reports" / f"ood_report.{ext}").stat().st_size > 0
    pngs = {p.name for p in (tmp_path / "reports").glob("*.png")}
    assert pngs == {"auroc_heatmap.png"} | {f"{k}_{r}.png" for k in ("roc", "scores") for r, _, _ in DEMO_RUNS}
    for png in pngs:
        assert (tmp_path / "reports" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_driver_errors(demo_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a known detector"):
        run_study(tmp_path, "demo", demo_root, "energy", tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match=r"--postprocessor-name 'energy' is not a known detector.*`all`"):
        run_ood_study(tmp_path, "demo", demo_root, "energy", tmp_path / "x", progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no run folders"):
        run_study(empty, "demo", demo_root, "msp", tmp_path / "x", progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_study(tmp_path / "nope", "demo", demo_root, "msp", tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


#: every detector with the MC option (``mc``)
MC_DETECTORS = ("ash", "ebo", "gen", "knn", "mls", "react", "rmds", "vim")


@pytest.mark.slow
def test_mc_options_change_only_bayes_h_and_are_recorded(demo_root: Path, demo_runs: Path, tmp_path: Path) -> None:
    """``--hyperparam mc=true`` through the whole study (features, head, fit, search): every detector with
    the option gets Bayes-H's samples and the head; ssl and Bayes-Z keep their records and scores exactly,
    Bayes-H's scores change, and the records say the option was fixed."""
    assert all("mc" in build_detector(d).__dict__ for d in MC_DETECTORS)
    assert {d for d in DETECTORS if "mc" in build_detector(d).__dict__} == set(MC_DETECTORS)
    common: dict[str, Any] = dict(batch_size=128, seed=0, progress=False)
    default = run_studies(demo_runs, "demo", demo_root, {d: tmp_path / "default" / d for d in MC_DETECTORS}, **common)
    outputs = {d: tmp_path / "mc" / d for d in MC_DETECTORS}
    mc = run_studies(demo_runs, "demo", demo_root, outputs, hyperparam={"mc": True}, **common)
    for d in MC_DETECTORS:
        for off, on in zip(default[d], mc[d], strict=True):
            assert on["hyperparam_fixed"] == {"mc": True} and off["hyperparam_fixed"] == {}
            run = on["run_name"]
            off_scores = np.load(tmp_path / "default" / d / "scores" / f"{run}.npz")
            on_scores = np.load(tmp_path / "mc" / d / "scores" / f"{run}.npz")
            if "bayes_h" in run:
                assert not np.array_equal(off_scores["id"], on_scores["id"]), d
            else:
                assert on["ood_scores"] == off["ood_scores"], (d, run)
                assert np.array_equal(off_scores["id"], on_scores["id"]), (d, run)
