"""A bad detector name, runs folder or study file gets an error naming it and the fix."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from src.experiments.scripts import run_ood_study
from src.ood.detectors import build_detector
from src.ood.study import discover_runs, run_study
from src.reports.ood import make_report


def _q(path: Path | str) -> str:
    """``path`` as a regex that matches it literally."""
    return re.escape(str(path))


# ============================================================================ 5. unknown OOD detector
def test_unknown_detector_name() -> None:
    with pytest.raises(
        ValueError, match=r"--postprocessor-name: .msq. is not a known detector; known: ash, ebo, edsimk, .*, msp, "
    ):
        build_detector("msq")


def test_run_ood_study_unknown_postprocessor_name(tmp_path: Path) -> None:
    argv = ["--runs-dir", str(tmp_path), "--in-dataset", "demo", "--data-root-dir", str(tmp_path)]
    argv += ["--postprocessor-name", "mahalanobis", "--output-dir", str(tmp_path / "out")]
    with pytest.raises(ValueError, match=r"--postprocessor-name 'mahalanobis' is not a known detector.*`all`"):
        run_ood_study.main(argv)
    assert not (tmp_path / "out").exists()  # refused before anything was written


# ============================================================================ 12. runs folders with no runs
def test_discover_runs_in_an_empty_or_missing_folder(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / ".gitignore").write_text("*\n")  # dot-entries are not runs
    with pytest.raises(FileNotFoundError, match=rf"--runs-dir {_q(tmp_path / 'runs')} holds no run folders; expected"):
        discover_runs(tmp_path / "runs")
    with pytest.raises(FileNotFoundError, match=rf"--runs-dir {_q(tmp_path / 'nope')} does not exist \(run the"):
        discover_runs(tmp_path / "nope")


def test_run_study_with_no_runs_writes_nothing(tmp_path: Path, demo_root: Path) -> None:
    (tmp_path / "runs").mkdir()
    with pytest.raises(FileNotFoundError, match=r"holds no run folders"):
        run_study(tmp_path / "runs", "demo", demo_root, "msp", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_ood_runs_json_that_is_not_json(tmp_path: Path) -> None:
    runs_json = tmp_path / "msp" / "runs.json"
    runs_json.parent.mkdir()
    runs_json.write_bytes(b"\x00\xff binary")
    with pytest.raises(ValueError, match=rf"{_q(runs_json)} is not valid JSON"):
        make_report(tmp_path, tmp_path / "report")
    runs_json.write_text('{"run_name": "a"}')  # JSON, but not a list of run records
    with pytest.raises(ValueError, match=rf"{_q(runs_json)} is not a runs\.json of run_ood_study\.py"):
        make_report(tmp_path, tmp_path / "report")


def test_ood_study_cache_that_is_not_json(tmp_path: Path, demo_root: Path) -> None:
    (tmp_path / "runs" / "ssl_barlow").mkdir(parents=True)
    cache = tmp_path / "out" / "ssl_barlow.json"
    cache.parent.mkdir()
    cache.write_text('{"run_name": "ssl_barlow", "ood_sc')
    with pytest.raises(ValueError, match=rf"{_q(cache)} is not valid JSON .*delete it"):
        run_study(tmp_path / "runs", "demo", demo_root, "msp", tmp_path / "out", progress=False)


def test_ood_study_cache_made_with_other_settings(tmp_path: Path, demo_root: Path) -> None:
    """A cached record made with other --hyperparam values or another sign is refused, not reused."""
    (tmp_path / "runs" / "ssl_bayes_z_x").mkdir(parents=True)
    cache = tmp_path / "out" / "ssl_bayes_z_x.json"
    cache.parent.mkdir()
    record = {"run_name": "ssl_bayes_z_x", "ood_scores": [], "hyperparam_fixed": {"K": 3}, "corrected_sign": False}
    cache.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=rf"{_q(cache)} was computed with --hyperparam \{{'K': 3\}}, not \{{\}}"):
        run_study(tmp_path / "runs", "demo", demo_root, "kldivsimk", tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match=rf"{_q(cache)} was computed without --corrected-sign.*--output-dir"):
        run_study(
            tmp_path / "runs", "demo", demo_root, "kldivsimk", tmp_path / "out", progress=False,
            corrected_sign=True, hyperparam={"K": 3},
        )  # fmt: skip
    # the same settings: reused (no model is loaded: the run folder has no checkpoint)
    again = run_study(
        tmp_path / "runs", "demo", demo_root, "kldivsimk", tmp_path / "out", progress=False, hyperparam={"K": 3}
    )
    assert again[0]["hyperparam_fixed"] == {"K": 3} and again[0]["ood_scores"] == []


def test_ood_study_unknown_hyperparam(tmp_path: Path, demo_root: Path) -> None:
    (tmp_path / "runs" / "ssl_x").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no hyper-parameter 'T' in odin: searched temperature, noise"):
        run_study(tmp_path / "runs", "demo", demo_root, "odin", tmp_path / "out", progress=False, hyperparam={"T": 1})
    assert not (tmp_path / "out").exists()
