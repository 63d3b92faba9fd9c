"""The OOD study's progress display on the demo runs (slow): plain lines when the output is not a
terminal (a fixed, small number: one per study start, evaluated run and study end; no bar
fragments), bars in a terminal (one for the runs, one for a run's detectors, none per batch), and
the display unit on its own."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import pytest

from src.ood.progress import StudyProgress
from src.ood.study import run_studies
from tests.ood.fakes import DEMO_RUNS

DETECTORS = ["msp", "sigmamean", "edsimk"]  # a plain one, a probabilistic one (null on ssl), one with a search


def set_terminal(monkeypatch: pytest.MonkeyPatch, is_terminal: bool) -> None:
    for stream in (sys.stdout, sys.stderr):
        monkeypatch.setattr(stream, "isatty", lambda: is_terminal)


def study_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "src.ood.progress"]


@pytest.mark.slow
def test_lines_when_the_output_is_not_a_terminal(
    demo_root: Path,
    demo_runs: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    set_terminal(monkeypatch, False)
    outputs = {name: tmp_path / name for name in DETECTORS}
    with caplog.at_level(logging.INFO):
        run_studies(demo_runs, "demo", demo_root, outputs, batch_size=128, seed=0)
    lines = study_lines(caplog)
    runs = sorted(r for r, _, _ in DEMO_RUNS)
    assert lines[0] == f"OOD study: 3 runs × 3 detectors ({', '.join(DETECTORS)})"
    for i, (run, line) in enumerate(zip(runs, lines[1:-1], strict=True), start=1):
        done = "msp, edsimk" if run == "ssl_barlow" else "msp, sigmamean, edsimk"
        assert re.fullmatch(rf"OOD run {i}/3 {run}: {done} in \d+:\d\d:\d\d", line), line
    assert re.fullmatch(r"OOD study done: 3 runs \(3 evaluated\) in \d+:\d\d:\d\d", lines[-1])
    assert len(lines) == 5
    # the search logs its choice once per (run, detector), not every candidate
    chosen = [r.getMessage() for r in caplog.records if "hyper-parameters" in r.getMessage()]
    assert len(chosen) == 3 and all(m.startswith("edsimk: hyper-parameters [") for m in chosen)
    assert "validation AUROC" not in " ".join(r.getMessage() for r in caplog.records if r.levelno < logging.INFO)
    err = capsys.readouterr().err
    assert "\r" not in err and "it/s" not in err  # no bar fragments

    # a rerun reuses every record: two lines
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run_studies(demo_runs, "demo", demo_root, outputs, batch_size=128, seed=0)
    assert study_lines(caplog)[1:] == [study_lines(caplog)[-1]]
    assert re.fullmatch(r"OOD study done: 3 runs \(0 evaluated\) in \d+:\d\d:\d\d", study_lines(caplog)[-1])


@pytest.mark.slow
def test_bars_in_a_terminal(
    demo_root: Path,
    demo_runs: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    set_terminal(monkeypatch, True)
    with caplog.at_level(logging.INFO):
        run_studies(demo_runs, "demo", demo_root, {"msp": tmp_path / "msp"}, batch_size=128, seed=0)
    assert study_lines(caplog) == []  # bars instead of lines
    err = capsys.readouterr().err
    assert "runs: 100%" in err and "3/3" in err
    descs = set(re.findall(r"(?:^|\r|\n)([\w ]+?): +\d+%", err))
    assert descs <= {"runs", *(r for r, _, _ in DEMO_RUNS)}, descs  # no per-batch or per-split bars


def test_the_display_unit(caplog: pytest.LogCaptureFixture) -> None:
    shown = StudyProgress(2, ["msp"], mode="lines")
    with caplog.at_level(logging.INFO, logger="src.ood.progress"):
        for run in shown.over([{"run_name": "a"}, {"run_name": "b"}]):
            if run["run_name"] == "a":
                shown.start_run("a", ["msp"])
                shown.detector_done("msp")
                shown.run_finished("a", ["msp"])
            else:
                shown.run_finished("b", [])
    lines = study_lines(caplog)
    assert lines[0] == "OOD study: 2 runs × 1 detector (msp)"
    assert re.fullmatch(r"OOD run 1/2 a: msp in 0:00:0\d", lines[1])
    assert re.fullmatch(r"OOD study done: 2 runs \(1 evaluated\) in 0:00:0\d", lines[2]) and len(lines) == 3
    # an exception ends the display without the closing line
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="src.ood.progress"), pytest.raises(KeyError):
        for run in StudyProgress(2, ["msp"], mode="lines").over([{"run_name": "a"}]):
            run["missing"]
    assert study_lines(caplog) == ["OOD study: 2 runs × 1 detector (msp)"]
    with pytest.raises(ValueError, match="progress mode 'fancy'"):
        StudyProgress(1, [], mode="fancy")
