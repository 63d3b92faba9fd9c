"""Atomic file output and JSON reading (src/utils/io.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from src.utils.io import atomic_write, read_json, write_json


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out" / "results.json"

    def fail(path: Path) -> None:
        path.write_text("{partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_write(target, fail)
    assert not target.exists() and os.listdir(target.parent) == []
    write_json(target, {"a": 1.5})
    assert target.read_text() == '{\n\t"a": 1.5\n}\n' and read_json(target) == {"a": 1.5}


def test_read_json_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_json(bad)


def test_unwritable_output_folder_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match="cannot create the output folder"):
        write_json(blocker / "sub" / "results.json", {})
