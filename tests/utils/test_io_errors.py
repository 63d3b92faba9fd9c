"""Output folders that cannot be written and JSON files that are not JSON: the path and the fix."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from src.experiments.scripts import demo_report
from src.utils.io import atomic_write, read_json, write_text


def _q(path: Path | str) -> str:
    """``path`` as a regex that matches it literally."""
    return re.escape(str(path))


# ============================================================================ 13. unwritable output folders
def test_output_path_under_a_regular_file(tmp_path: Path) -> None:
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match=rf"cannot create the output folder .*{_q(blocker)} is a regular file.*move"):
        write_text(blocker / "ood" / "runs.json", "[]")


def test_output_path_that_is_a_folder(tmp_path: Path) -> None:
    (tmp_path / "runs.json").mkdir()
    with pytest.raises(IsADirectoryError, match=rf"cannot write {_q(tmp_path / 'runs.json')}: a folder of that name"):
        atomic_write(tmp_path / "runs.json", lambda p: p.write_text("[]"))


def test_output_folder_refusing_new_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a read-only folder does to the temporary file, simulated so that it also runs as root."""
    import src.utils.io as io_module

    def refuse(*args: Any, **kwargs: Any) -> tuple[int, str]:
        raise PermissionError(13, "Permission denied", str(tmp_path / ".x.json.tmp"))

    monkeypatch.setattr(io_module.tempfile, "mkstemp", refuse)
    with pytest.raises(OSError, match=rf"cannot write into the output folder {_q(tmp_path)} \(Permission denied\)"):
        write_text(tmp_path / "x.json", "{}")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_output_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OSError, match=rf"cannot write into the output folder {_q(folder)} .*make it writable"):
            write_text(folder / "x.json", "{}")
    finally:
        folder.chmod(0o700)


def test_results_json_that_is_not_json(tmp_path: Path) -> None:
    results = tmp_path / "runs" / "ssl_barlow" / "results.json"
    results.parent.mkdir(parents=True)
    results.write_text('{"metrics": {"val_online_acc": 0.9')  # cut short
    with pytest.raises(
        ValueError,
        match=rf"{_q(results)} is not valid JSON .*delete it and run the stage that writes it again .*dvc repro",
    ):
        read_json(results)
    argv = ["--runs-dir", str(tmp_path / "runs"), "--ood-report-dir", str(tmp_path)]
    argv += ["--probe-report-dir", str(tmp_path), "--output-dir", str(tmp_path / "report")]
    with pytest.raises(ValueError, match=rf"{_q(results)} is not valid JSON"):
        demo_report.main(argv)
