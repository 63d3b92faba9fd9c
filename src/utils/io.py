"""Atomic file output: write to a temporary name in the same folder, then rename.

An interrupted stage therefore never leaves a file that a rerun or a later stage would take
as complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and rename the result to ``path`` (same filesystem).

    Raises:
        OSError: the folder of ``path`` cannot be created (e.g. a regular file is in the way) or
            written into (e.g. read-only); the message names the folder.
        IsADirectoryError: ``path`` is an existing folder.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        blocker = next((p for p in (path.parent, *path.parent.parents) if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a regular file, not a folder" if blocker is not None else err.strerror
        raise OSError(
            f"cannot create the output folder {path.parent}: {why}; choose a writable output path"
            + (f" or move {blocker} away" if blocker is not None else "")
        ) from err
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: a folder of that name exists; remove it or choose another path")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise OSError(
            f"cannot write into the output folder {path.parent} ({err.strerror}); make it writable "
            f"(e.g. `chmod u+w {path.parent}`) or choose another output path"
        ) from err
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def write_json(path: str | Path, data: Any, indent: int | str = "\t") -> Path:
    """JSON, tab-indented by default (the reference's results.json format)."""
    return write_text(path, json.dumps(data, indent=indent) + "\n")


def read_json(path: str | Path) -> Any:
    """The parsed JSON file at ``path``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not valid UTF-8 JSON (e.g. truncated); the message names it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (did the stage that writes it finish?)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete it and rerun the stage that writes it") from err
