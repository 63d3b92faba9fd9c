"""Atomic file output: write to a temporary name in the same folder, then rename.

An interrupted stage therefore never leaves a file that a rerun or a later stage would take
as complete. The file gets the mode a plain ``open(path, "w")`` would give it (``0o666`` less the
process umask, e.g. ``0o644`` under umask 022), not the ``0o600`` of a temporary file, so results
stay readable for a group on a shared machine. A folder that refuses the write (read-only, full,
over quota) is reported with the folder and the fix, never as an ``OSError`` naming the temporary file.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process umask, read without changing it where Linux reports it (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: the classic read-by-setting (not thread-safe; a brief window)
    os.umask(mask)
    return mask


#: errno values of a folder that is full or over quota
_FULL = {errno.ENOSPC, errno.EDQUOT}
#: errno values of a folder (or filesystem) that refuses writes
_REFUSED = {errno.EACCES, errno.EPERM, errno.EROFS}


def output_error(folder: Path, err: OSError) -> OSError:
    """An ``OSError`` naming ``folder`` and the fix for ``err`` (full, read-only, other), same errno."""
    if err.errno in _FULL:
        fix = "free space there (or raise the quota) or choose another output path on a disk with room"
        what = "the disk is full" if err.errno == errno.ENOSPC else "the disk quota is exceeded"
    elif err.errno in _REFUSED:
        fix = f"make it writable (e.g. `chmod u+w {folder}`) or choose another output path"
        what = err.strerror or "permission denied"
    else:
        fix = "check the folder and the disk, or choose another output path"
        what = err.strerror or str(err)
    return OSError(err.errno, f"cannot write into the output folder {folder} ({what}); {fix}")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and rename the result to ``path`` (same filesystem).

    Raises:
        OSError: the folder of ``path`` cannot be created (e.g. a regular file is in the way) or
            written into (read-only, full, over quota); the message names the folder and the fix, and
            ``errno`` is the original one.
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
        raise output_error(path.parent, err) from err
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    finally:
        os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if err.errno in _FULL | _REFUSED:
            raise output_error(path.parent, err) from err
        raise
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
        raise ValueError(
            f"{path} is not valid JSON ({err}); delete it and run the stage that writes it again (under DVC, "
            "`dvc repro` the stage: DVC removes a stage's outputs before it runs the stage)"
        ) from err


class _WriteErrorRecorder:
    """A binary file that keeps the ``OSError`` of a failed write (torch turns it into a RuntimeError)."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.file.flush()


def save_torch(path: str | Path, obj: Any) -> Path:
    """``torch.save(obj)`` to ``path`` atomically; a full or read-only disk raises the folder's ``OSError``.

    torch reports a failed write as a ``RuntimeError`` of its zip writer ("unexpected pos ..."); the
    bytes go through a Python file here so that the disk's own error (ENOSPC, EDQUOT, EROFS) is what
    the caller sees, with the folder and the fix (:func:`atomic_write`).
    """
    import torch  # here, so that importing this module stays cheap for the command-line help

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            recorder = _WriteErrorRecorder(f)
            try:
                torch.save(obj, recorder)
            except RuntimeError as err:
                if recorder.error is not None:
                    raise recorder.error from err
                raise

    return atomic_write(path, write)
