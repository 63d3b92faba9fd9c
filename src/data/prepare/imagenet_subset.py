"""Build an ImageNet 1 % / 10 % subset root from a SimCLR subset list (D-Q2).

The reference has no code for the subsets; its datamodule expects a ready root. ``build_subset``
builds one from the standard lists of SimCLR (github.com/google-research/simclr, folder
``imagenet_subsets/``): ``1percent.txt`` (12,811 lines) and ``10percent.txt`` (128,116 lines).
Each line is a training image file name such as ``n01440764_10026.JPEG``; the class wnid is
the part before the first ``_``. The lists are not shipped and never downloaded here: fetch
them yourself (e.g. from a checkout of the SimCLR repository) and pass one with ``--split-file``.

Result (what ``SubsetImageNetDataModule`` reads)::

    <output-root>/train/<wnid>/<file>   relative symlink (or copy, --copy) to <imagenet-root>/train/<wnid>/<file>
    <output-root>/train/<wnid>/         for EVERY wnid of the full train folder, even one with no listed
                                        image, so the class indices match val/ (D-Q3)
    <output-root>/val                   symlink (or copy) of <imagenet-root>/val (the full validation set)
    <output-root>/meta.bin              symlink (or copy) of <imagenet-root>/meta.bin, if that exists

Every check (list format, classes, every listed file present) runs before anything is written.
A new root is built in a temporary sibling directory and renamed into place at the end, so a
failed run leaves nothing behind. Rerunning on a finished root is safe: entries that already
point at the right file are skipped, missing ones are added, and anything unexpected (a link
to another file, a file not on the list) is an error rather than silently replaced.

From the command line::

    python -m src.experiments.scripts.build_imagenet_subset \\
        --imagenet-root data/datasets/imagenet --split-file 1percent.txt --output-root data/datasets/imagenet1pct
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Names listed in an error message; the rest are counted.
_MAX_LISTED = 10
_PERCENT_RE = re.compile(r"^(\d+)percent\.txt$")


class SubsetBuildError(Exception):
    """A problem with the inputs or the existing output; nothing was written when it is raised."""


@dataclass(frozen=True)
class BuildReport:
    """What a build did.

    Attributes:
        output_root: the subset root.
        images: number of listed training images.
        classes: number of class folders (all wnids of the full train folder).
        empty_classes: wnids with no listed image (their folders exist but are empty).
        created: entries written by this run (image links/copies, val, meta.bin).
        skipped: entries that were already in place.
    """

    output_root: Path
    images: int
    classes: int
    empty_classes: tuple[str, ...]
    created: int
    skipped: int


def _preview(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", … ({len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else "")


def read_split_file(path: Path) -> list[tuple[str, str]]:
    """Parse a SimCLR subset list into ``(wnid, file name)`` pairs, in file order, duplicates dropped.

    Raises:
        SubsetBuildError: the file is missing, empty, or has a line that is not ``<wnid>_<id>.<ext>``.
    """
    if not path.is_file():
        raise SubsetBuildError(
            f"split file {path} not found; use the SimCLR list imagenet_subsets/1percent.txt or 10percent.txt "
            "from github.com/google-research/simclr"
        )
    entries: dict[str, str] = {}
    bad: list[str] = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        name = raw.strip()
        if not name:
            continue
        wnid, sep, _ = name.partition("_")
        if not sep or not wnid or "/" in name or "\\" in name:
            bad.append(f"line {number}: {raw!r}")
            continue
        entries.setdefault(name, wnid)
    if bad:
        raise SubsetBuildError(f"{path}: {len(bad)} malformed line(s), expected '<wnid>_<id>.JPEG': {_preview(bad)}")
    if not entries:
        raise SubsetBuildError(f"{path} lists no image")
    return [(wnid, name) for name, wnid in entries.items()]


def _class_folders(folder: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


def _link_target(source: Path, link: Path) -> str:
    """The relative path from ``link``'s directory to ``source``.

    The start is the link directory's real location (the kernel resolves ``..`` physically);
    the source keeps its given absolute form, so a symlinked ImageNet root stays symbolic.
    """
    return os.path.relpath(os.path.abspath(source), os.path.realpath(link.parent))


def _in_place(dest: Path, source: Path) -> bool:
    """Whether ``dest`` already provides ``source``: a link to it, or a copy (a file of the same size / a folder)."""
    if not os.path.lexists(dest):
        return False
    if dest.is_symlink():
        return dest.exists() and os.path.samefile(dest, source)
    if source.is_dir():
        return dest.is_dir()
    return dest.is_file() and dest.stat().st_size == source.stat().st_size


def _place(source: Path, dest: Path, final_dest: Path, copy: bool) -> None:
    """Link (relative to ``final_dest``, where it will live after the rename) or copy ``source`` to ``dest``."""
    if copy:
        if source.is_dir():
            shutil.copytree(source, dest)
        else:
            shutil.copy2(source, dest)
    else:
        os.symlink(_link_target(source, final_dest), dest, target_is_directory=source.is_dir())


def build_subset(imagenet_root: Path, split_file: Path, output_root: Path, copy: bool = False) -> BuildReport:
    """Build (or complete) the subset root ``output_root``; see the module docstring for the layout.

    Args:
        imagenet_root: the full ImageNet root with ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``.
        split_file: a SimCLR subset list.
        output_root: where the subset root goes.
        copy: copy files instead of creating relative symlinks.

    Returns:
        A ``BuildReport``.

    Raises:
        SubsetBuildError: bad inputs or an inconsistent existing output; raised before any write.
    """
    train_dir, val_dir = imagenet_root / "train", imagenet_root / "val"
    for folder in (train_dir, val_dir):
        if not folder.is_dir():
            raise SubsetBuildError(
                f"{folder} not found: the full ImageNet root must hold train/<wnid>/*.JPEG and val/<wnid>/*.JPEG "
                "(ImageNet needs a login at image-net.org; extract the archives there first)"
            )
    if os.path.realpath(output_root) == os.path.realpath(imagenet_root):
        raise SubsetBuildError(f"--output-root {output_root} is the ImageNet root itself; choose another folder")
    classes = _class_folders(train_dir)
    if not classes:
        raise SubsetBuildError(f"{train_dir} holds no class folder")
    val_classes = _class_folders(val_dir)
    if val_classes != classes:
        diff = sorted(set(classes) ^ set(val_classes))
        raise SubsetBuildError(f"{train_dir} and {val_dir} hold different class folders: {_preview(diff)}")

    entries = read_split_file(split_file)
    unknown = sorted({wnid for wnid, _ in entries} - set(classes))
    if unknown:
        raise SubsetBuildError(f"{split_file} names classes that {train_dir} lacks: {_preview(unknown)}")
    present = {wnid: set(os.listdir(train_dir / wnid)) for wnid in {wnid for wnid, _ in entries}}
    missing = [f"{wnid}/{name}" for wnid, name in entries if name not in present[wnid]]
    if missing:
        raise SubsetBuildError(
            f"{len(missing)} of the {len(entries)} images listed in {split_file} are missing from {train_dir}: "
            f"{_preview(missing)}. Is --imagenet-root the complete, extracted ImageNet training set?"
        )

    # (source, path relative to the output root), in a fixed order.
    plan = [(train_dir / wnid / name, Path("train", wnid, name)) for wnid, name in sorted(entries)]
    plan.append((val_dir, Path("val")))
    if os.path.lexists(imagenet_root / "meta.bin"):
        plan.append((imagenet_root / "meta.bin", Path("meta.bin")))
    listed = {wnid for wnid, _ in entries}
    empty = tuple(wnid for wnid in classes if wnid not in listed)

    if os.path.lexists(output_root):
        created, skipped = _complete_existing(output_root, plan, classes, copy)
    else:
        created, skipped = _build_new(output_root, plan, classes, copy), 0
    return BuildReport(output_root, len(entries), len(classes), empty, created, skipped)


def _build_new(output_root: Path, plan: list[tuple[Path, Path]], classes: list[str], copy: bool) -> int:
    """Write the whole root into a temporary sibling, then rename it to ``output_root``."""
    output_root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_root.name}.partial-", dir=output_root.parent))
    try:
        for wnid in classes:
            (staging / "train" / wnid).mkdir(parents=True)
        for source, rel in plan:
            _place(source, staging / rel, output_root / rel, copy)
        staging.chmod(0o755)  # mkdtemp creates 0700
        os.rename(staging, output_root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return len(plan)


def _complete_existing(
    output_root: Path, plan: list[tuple[Path, Path]], classes: list[str], copy: bool
) -> tuple[int, int]:
    """Check an existing root against the plan, then add what is missing. Returns (created, skipped)."""
    if not output_root.is_dir():
        raise SubsetBuildError(f"--output-root {output_root} exists and is not a folder")
    remedy = f"remove {output_root} (or choose another --output-root) and rerun"
    wrong = [
        str(rel)
        for source, rel in plan
        if os.path.lexists(output_root / rel) and not _in_place(output_root / rel, source)
    ]
    if wrong:
        raise SubsetBuildError(
            f"{output_root} holds entries that do not match the sources: {_preview(wrong)}; {remedy}"
        )
    train_out = output_root / "train"
    if train_out.is_dir():
        expected = {rel for _, rel in plan}
        extra: list[str] = []
        for wnid in sorted(os.listdir(train_out)):
            folder = train_out / wnid
            if wnid not in classes or not folder.is_dir():
                extra.append(f"train/{wnid}")
                continue
            extra += [
                f"train/{wnid}/{name}"
                for name in sorted(os.listdir(folder))
                if Path("train", wnid, name) not in expected
            ]
        if extra:
            raise SubsetBuildError(f"{output_root} holds entries that are not on the list: {_preview(extra)}; {remedy}")
    created = skipped = 0
    for wnid in classes:
        (train_out / wnid).mkdir(parents=True, exist_ok=True)
    for source, rel in plan:
        if os.path.lexists(output_root / rel):
            skipped += 1
        else:
            _place(source, output_root / rel, output_root / rel, copy)
            created += 1
    return created, skipped


def default_output_root(split_file: Path) -> Path | None:
    """``data/datasets/imagenet<N>pct`` for a list named ``<N>percent.txt``."""
    match = _PERCENT_RE.match(split_file.name)
    return Path("data", "datasets", f"imagenet{match.group(1)}pct") if match else None
