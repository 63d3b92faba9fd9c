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


# ============================================================================ file modes, full and read-only disks
@pytest.fixture
def umask() -> Any:
    """Set the process umask for a test and put the old one back."""
    old = os.umask(0o022)
    os.umask(old)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(old)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664), (0o077, 0o600)])
def test_outputs_keep_the_umask(tmp_path: Path, umask: Any, mask: int, mode: int) -> None:
    """Not the 0600 of a temporary file: what `open(path, "w")` would give (0644 under umask 022)."""
    import torch

    from src.train.checkpoint_io import AtomicCheckpointIO
    from src.utils.io import current_umask, save_torch, write_json

    umask(mask)
    assert current_umask() == mask
    written = [
        write_json(tmp_path / "results.json", {"a": 1}),
        save_torch(tmp_path / "emb.pt", {"reps": torch.zeros(2)}),
    ]
    AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, tmp_path / "checkpoints" / "last.ckpt")
    written.append(tmp_path / "checkpoints" / "last.ckpt")
    plain = tmp_path / "plain.txt"
    plain.write_text("")
    assert (plain.stat().st_mode & 0o777) == mode
    for path in written:
        assert (path.stat().st_mode & 0o777) == mode, path


@pytest.mark.parametrize(
    ("code", "says"),
    [
        (28, r"the disk is full\); free space there .*or choose another output path"),  # ENOSPC
        (122, r"the disk quota is exceeded\); free space there \(or raise the quota\)"),  # EDQUOT
        (30, r"Read-only file system\); make it writable"),  # EROFS
        (13, r"Permission denied\); make it writable \(e\.g\. `chmod u\+w "),  # EACCES
    ],
)
def test_a_full_or_read_only_folder_names_the_folder_and_the_fix(tmp_path: Path, code: int, says: str) -> None:
    """The write itself fails (the temporary file was created): the folder and the fix, never the temp name."""
    import errno as errno_module

    assert code in (errno_module.ENOSPC, errno_module.EDQUOT, errno_module.EROFS, errno_module.EACCES)

    def fail(path: Path) -> None:
        raise OSError(code, os.strerror(code), str(path))

    with pytest.raises(OSError, match=rf"cannot write into the output folder {_q(tmp_path)} \({says}") as info:
        atomic_write(tmp_path / "results.json", fail)
    assert info.value.errno == code and ".tmp" not in str(info.value)
    assert os.listdir(tmp_path) == []  # the temporary file is gone


def test_a_checkpoint_on_a_full_disk_names_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch reports a failed write as a RuntimeError of its zip writer; the disk's own error is what comes out."""
    import errno as errno_module

    import torch

    import src.utils.io as io_module
    from src.train.checkpoint_io import AtomicCheckpointIO

    class FullDisk:
        """The file torch writes through: the third write finds the disk full."""

        def __init__(self, file: Any) -> None:
            self.file, self.calls = file, 0

        def write(self, data: Any) -> int:
            self.calls += 1
            if self.calls > 2:
                raise OSError(errno_module.ENOSPC, "No space left on device")
            return self.file.write(data)

        def flush(self) -> None:
            self.file.flush()

    real_init = io_module._WriteErrorRecorder.__init__
    monkeypatch.setattr(io_module._WriteErrorRecorder, "__init__", lambda self, file: real_init(self, FullDisk(file)))
    folder = tmp_path / "checkpoints"
    with pytest.raises(OSError, match=rf"cannot write into the output folder {_q(folder)} \(the disk is full\)"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(1000)}}, folder / "last.ckpt")
    assert os.listdir(folder) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_a_read_only_run_folder_stops_the_pipeline_with_the_fix(tmp_path: Path) -> None:
    """A real read-only folder (as a non-root user): the checkpoint writer names the folder and the fix."""
    from src.train.checkpoint_io import AtomicCheckpointIO

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OSError, match=rf"cannot write into the output folder {_q(folder)} .*chmod u\+w"):
            AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, folder / "last.ckpt")
    finally:
        folder.chmod(0o700)
