"""The OOD study end to end on runs produced by run_pipeline on the demo data: all nine detectors,
the per-run JSON schema, resume, runs.json and the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from src.data.prepare.demo_data import prepare_demo_data
from src.ood.detectors import DETECTORS, STUDY_ORDER, build_detector
from src.ood.study import run_study
from src.reports.ood import make_report
from src.train.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[2]
ROWS = ["digits89", "nearood", "photos", "noise", "farood"]
RUNS = [
    ("ssl_barlow", "ssl", "barlow_twins"),
    ("ssl_bayes_h_barlow_seed_1", "ssl_bayes_h", "mc_barlow_twins"),
    ("ssl_bayes_z_vicreg_seed_1", "ssl_bayes_z", "mc_vicreg"),
]


@pytest.fixture(scope="module")
def study_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("study")
    data_root = prepare_demo_data(base / "demo", image_size=8)
    runs_dir = base / "runs"
    for run, model_name, loss in RUNS:
        overrides = [
            "dataset=demo",
            f"dataset.data_dir={data_root}",
            "dataset.input_height=8",
            f"+model/task/ssl@train={model_name}",
            f"model/loss={loss}",
            "+model/task@finetune=finetune",
            f"output_path={runs_dir / run}",
            "dataset.batch_size=64",
            "model.backbone.hidden_dim=32",
            "model.backbone.z_dim=32",
            "train.trainer.max_epochs=1",
            "+train.trainer.limit_train_batches=2",
            "+train.trainer.limit_val_batches=1",
            "finetune.trainer.max_epochs=2",
            "train.trainer.accelerator=cpu",
            "finetune.trainer.accelerator=cpu",
        ]
        if model_name != "ssl":
            overrides.append("train.mc_samples=2")
        with initialize_config_dir(version_base=None, config_dir=str(ROOT / "src/experiments/conf")):
            run_pipeline(compose(config_name="config", overrides=overrides))
    (runs_dir / ".gitignore").write_text("*\n")  # dot-entries are not runs
    return data_root, runs_dir


def test_registry_matches_the_study() -> None:
    assert set(DETECTORS) == set(STUDY_ORDER)
    for name in STUDY_ORDER:
        detector = build_detector(name)
        assert detector.name == name
        assert detector.preprocessor in ("default", "barlowtwins")
        assert detector.probabilistic == (name in {"sigmamean", "logpprior", "kldivsimk"})
        assert bool(detector.sweep) == (name in {"gram", "odin", "kldivsimk", "edsimk"})


def test_all_detectors_on_demo_runs_with_resume_and_report(study_setup, tmp_path: Path) -> None:
    data_root, runs_dir = study_setup
    results = tmp_path / "ood" / "demo"
    for name in STUDY_ORDER:
        out = results / name
        records = run_study(runs_dir, "demo", data_root, name, out, batch_size=128, seed=0, progress=False)
        assert [r["run_name"] for r in records] == sorted(r for r, _, _ in RUNS)
        for record in records:
            cached = json.loads((out / f"{record['run_name']}.json").read_text())
            assert cached == record
            assert set(record) == {"run_name", "model_path", "finetuner_path", "model_name", "ood_scores"}
            assert record["model_path"].endswith("checkpoints/model.ckpt")
            assert record["finetuner_path"].endswith("finetune/checkpoints/last.ckpt")
            if record["model_name"] == "ssl" and DETECTORS[name].probabilistic:
                assert record["ood_scores"] is None
                continue
            rows = record["ood_scores"]
            assert [r["Dataset"] for r in rows] == ROWS
            for r in rows:
                assert set(r) == {"Dataset", "FPR@95", "AUROC", "AUPR_IN", "AUPR_OUT", "ACC"}
                assert all(0.0 <= r[k] <= 100.0 for k in ("FPR@95", "AUROC", "AUPR_IN", "AUPR_OUT", "ACC")), r
            assert len({r["ACC"] for r in rows}) == 1  # one ID accuracy pass for every row
            near = next(r for r in rows if r["Dataset"] == "nearood")
            assert near["AUROC"] == pytest.approx(rows[0]["AUROC"])  # mean of one near set
            far = next(r for r in rows if r["Dataset"] == "farood")
            assert far["AUROC"] == pytest.approx((rows[2]["AUROC"] + rows[3]["AUROC"]) / 2)
            scores = np.load(out / "scores" / f"{record['run_name']}.npz")
            assert set(scores.files) == {"id", "digits89", "photos", "noise"}
        assert json.loads((out / "runs.json").read_text()) == records

    # resume: cached runs are not recomputed (a model file is not even opened)
    msp = results / "msp"
    stamps = {p.name: p.stat().st_mtime_ns for p in msp.glob("*.json") if p.name != "runs.json"}
    moved = runs_dir.parent / "moved_ckpt"
    shutil.move(runs_dir / RUNS[1][0] / "checkpoints", moved)
    try:
        again = run_study(runs_dir, "demo", data_root, "msp", msp, progress=False)
    finally:
        shutil.move(moved, runs_dir / RUNS[1][0] / "checkpoints")
    assert {p.name: p.stat().st_mtime_ns for p in msp.glob("*.json") if p.name != "runs.json"} == stamps
    assert again == json.loads((msp / "runs.json").read_text())

    report = make_report(results, tmp_path / "reports")
    table = report["table"]
    assert set(table["detector"]) == set(STUDY_ORDER)
    assert set(table["group"]) == {"ssl_barlow", "ssl_bayes_h_barlow", "ssl_bayes_z_vicreg"}
    assert (table["seeds"] == 1).all()
    for ext in ("csv", "md", "tex"):
        assert (tmp_path / "reports" / f"ood_report.{ext}").stat().st_size > 0
    pngs = {p.name for p in (tmp_path / "reports").glob("*.png")}
    assert {"auroc_heatmap.png", f"roc_{report['run']}.png", f"scores_{report['run']}.png"} <= pngs
    for png in pngs:
        assert (tmp_path / "reports" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_driver_errors(study_setup, tmp_path: Path) -> None:
    data_root, runs_dir = study_setup
    with pytest.raises(ValueError, match="not a known detector"):
        run_study(runs_dir, "demo", data_root, "energy", tmp_path / "x", progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no run folders"):
        run_study(empty, "demo", data_root, "msp", tmp_path / "x", progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_study(tmp_path / "nope", "demo", data_root, "msp", tmp_path / "x", progress=False)


def test_several_detectors_share_each_model_and_the_inputs(
    study_setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from src.ood import study

    data_root, runs_dir = study_setup
    names = ["msp", "mds", "sigmamean"]
    loads: list[str] = []
    real_load = study.load_ood_network

    def counting_load(model_path, *args, **kwargs):  # type: ignore[no-untyped-def]
        loads.append(str(model_path))
        return real_load(model_path, *args, **kwargs)

    monkeypatch.setattr(study, "load_ood_network", counting_load)
    shared = study.run_studies(
        runs_dir, "demo", data_root, {n: tmp_path / "shared" / n for n in names}, batch_size=128, progress=False
    )
    assert sorted(loads) == sorted(set(loads)) and len(loads) == len(RUNS)  # one load per run
    for name in names:
        assert json.loads((tmp_path / "shared" / name / "runs.json").read_text()) == shared[name]
        assert len(shared[name]) == len(RUNS)
    # the deterministic model's scores do not depend on sharing
    for name in ("msp", "mds"):
        out = tmp_path / "single" / name
        single = run_study(runs_dir, "demo", data_root, name, out, batch_size=128, progress=False)
        pick = {r["run_name"]: r for r in single if r["model_name"] == "ssl"}
        for record in shared[name]:
            if record["model_name"] == "ssl":
                assert record == pick[record["run_name"]]
    assert all(r["ood_scores"] is None for r in shared["sigmamean"] if r["model_name"] == "ssl")


def test_shared_encodings_change_no_score_and_run_the_encoder_once_per_batch(
    study_setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The encoder output memo (OODNetwork.share_encodings) against the same study without it:
    identical records for every run, stochastic ones included (the encoder draws no random
    numbers, so the heads' draws are unchanged), and one encoder pass per input batch and run."""
    from src.ood import study
    from src.ood.wrapper import OODNetwork

    data_root, runs_dir = study_setup
    names = ["mds", "kldivsimk"]  # a deterministic-feature detector, and a stochastic one with an APS sweep
    calls: list[list[int]] = []  # per loaded network: the id of every tensor the encoder saw
    real_load = study.load_ood_network

    def counting_load(*args, **kwargs):  # type: ignore[no-untyped-def]
        net = real_load(*args, **kwargs)
        encoder = net.model.encoder
        forward = encoder.forward
        seen: list[int] = []
        calls.append(seen)

        def counted(x):  # type: ignore[no-untyped-def]
            seen.append(id(x))
            return forward(x)

        encoder.forward = counted
        return net

    monkeypatch.setattr(study, "load_ood_network", counting_load)
    kwargs = dict(batch_size=128, progress=False, seed=5)
    shared = study.run_studies(runs_dir, "demo", data_root, {n: tmp_path / "a" / n for n in names}, **kwargs)
    shared_calls = list(calls)
    calls.clear()
    monkeypatch.setattr(OODNetwork, "share_encodings", lambda self, reusable: None)
    plain = study.run_studies(runs_dir, "demo", data_root, {n: tmp_path / "b" / n for n in names}, **kwargs)
    assert shared == plain
    # with sharing, each input batch (a tensor kept by the InputCache) is encoded once per run
    assert len(shared_calls) == len(calls) == len(RUNS)
    for with_memo, without in zip(shared_calls, calls):
        assert len(with_memo) == len(set(with_memo)) > 0
        assert len(without) > len(with_memo)
