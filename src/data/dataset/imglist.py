"""OpenOOD-style image lists and the dataset that reads them (the OOD study's data layout, see docs/ood.md).

A list file holds one sample per line, ``<relative image path><single space><label>``, the path
being relative to ``<data_root>/images_classic/`` (never absolute) and the label an integer
(class index for in-distribution lists, ``-1`` for OOD lists). OpenOOD parses the label as a
Python literal and would merge a dict into the sample; no list of this project uses that, so
only integers are accepted here and anything else is reported as a malformed line.

Every check that can be done without decoding an image (list present and non-empty, line
format, every image file present) runs when the dataset is built, so a broken list fails
before training starts rather than minutes into an epoch. Decoding errors can only be seen
when an image is loaded and are raised then, naming the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from src.utils.io import atomic_write

# Integer labels only (see the module docstring); a sign is allowed for the OOD label -1.
_LABEL_RE = re.compile(r"[+-]?\d+")
# Missing images reported by name in one error; the rest are only counted.
_MAX_REPORTED = 5


class ImageListError(ValueError):
    """An image list, or an image it names, is malformed or unreadable."""


def _parse_image_list(list_file: str | os.PathLike[str]) -> list[tuple[int, str, int]]:
    """``(line number, relative path, label)`` for every non-blank line of ``list_file``.

    Raises:
        FileNotFoundError: ``list_file`` does not exist.
        ImageListError: the list is empty or a line is malformed.
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise FileNotFoundError(
            f"image list {str(list_file)!r} does not exist; create it (e.g. run "
            "`python -m src.experiments.scripts.prepare_demo_data` for the demo data) or fix the path in the config"
        )
    records: list[tuple[int, str, int]] = []
    with list_file.open(encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.rstrip("\r\n")
            # Blank lines (typically a trailing one) carry no sample; OpenOOD would choke on them,
            # but skipping them is harmless and keeps hand-edited lists usable.
            if not line.strip():
                continue
            path, sep, label_text = line.partition(" ")
            where = f"{str(list_file)!r}, line {lineno}"
            if not sep or not path:
                raise ImageListError(
                    f"{where}: expected '<relative image path> <label>' separated by a single space, got {line!r}; "
                    "add the integer label after one space (use -1 for OOD images)"
                )
            label_text = label_text.strip()
            if not _LABEL_RE.fullmatch(label_text):
                raise ImageListError(
                    f"{where}: label {label_text!r} is not an integer; the text after the first space must be an "
                    "integer class index (or -1 for OOD images) — note that image paths may not contain spaces"
                )
            if path.startswith("/"):
                raise ImageListError(
                    f"{where}: image path {path!r} is absolute; paths must be relative to the images_classic "
                    "directory (e.g. 'demo/test/3/0042.png'), so drop the leading '/' and the root prefix"
                )
            records.append((lineno, path, int(label_text)))
    if not records:
        raise ImageListError(
            f"image list {str(list_file)!r} is empty; it must hold at least one '<relative image path> <label>' line "
            "— regenerate it or remove the split from the protocol"
        )
    return records


def read_image_list(list_file: str | os.PathLike[str]) -> list[tuple[str, int]]:
    """The ``(relative path, label)`` entries of an OpenOOD-style image list, in file order.

    Args:
        list_file: The list to read.

    Returns:
        One entry per non-blank line.

    Raises:
        FileNotFoundError: ``list_file`` does not exist.
        ImageListError: the list is empty, or a line lacks a space-separated label, has a
            non-integer label, or names an absolute path. The message names the line.
    """
    return [(path, label) for _, path, label in _parse_image_list(list_file)]


def write_image_list(list_file: str | os.PathLike[str], entries: Iterable[tuple[str, int]]) -> Path:
    """Write ``entries`` as an OpenOOD-style image list, atomically.

    The text goes to a temporary file in the destination directory, which is then renamed over
    ``list_file``, so a reader never sees a half-written list (rename is atomic within a file
    system). Lines end with ``\\n``, including the last one.

    Args:
        list_file: Destination; its parent directory is created if needed.
        entries: ``(relative path, integer label)`` pairs.

    Returns:
        ``list_file`` as a ``Path``.

    Raises:
        ImageListError: an entry could not be read back (absolute path, whitespace in the path,
            non-integer label), or there are no entries.
    """
    list_file = Path(list_file)
    lines = []
    for i, (path, label) in enumerate(entries):
        if not path or path.startswith("/") or any(c.isspace() for c in path):
            raise ImageListError(
                f"entry {i} for {str(list_file)!r}: path {path!r} must be non-empty, relative and free of whitespace"
            )
        # bool is an int subclass but would be written as 'True'.
        if not isinstance(label, int) or isinstance(label, bool):
            raise ImageListError(f"entry {i} for {str(list_file)!r}: label {label!r} must be an int")
        lines.append(f"{path} {label}\n")
    if not lines:
        raise ImageListError(f"refusing to write an empty image list to {str(list_file)!r}")
    atomic_write(list_file, lambda tmp: tmp.write_text("".join(lines), encoding="utf-8", newline="\n"))
    return list_file


class ImageListDataset(Dataset):
    """Images and integer labels named by an OpenOOD-style image list.

    Each item is ``(transform(image), label)`` where ``image`` is the file opened with PIL and
    converted to RGB (so grey images become 3-channel, as in OpenOOD) and ``label`` is the
    list's integer. Labels come only from the list: there is no ``classes`` attribute and no
    folder-name inference as in ``ImageFolder``, because OOD lists carry ``-1`` and ID lists
    may cover a subset of the class folders.

    Args:
        root: The ``images_classic`` directory the list's paths are relative to.
        list_file: The image list.
        transform: Applied to the PIL RGB image; ``None`` returns the image itself.

    Attributes:
        root: ``root`` as a ``Path``.
        list_file: ``list_file`` as a ``Path``.
        samples: ``(absolute image path, label)`` per item.
        targets: The label of each item, in list order.

    Raises:
        FileNotFoundError: ``root``, ``list_file`` or an image named by the list is missing.
        ImageListError: the list is empty or malformed (see :func:`read_image_list`).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        list_file: str | os.PathLike[str],
        transform: Callable[[Image.Image], Any] | None = None,
    ) -> None:
        self.root = Path(root)
        self.list_file = Path(list_file)
        self.transform = transform
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"image root {str(self.root)!r} (for list {str(self.list_file)!r}) is not a directory; "
                "point it at <data_root>/images_classic"
            )
        records = _parse_image_list(self.list_file)
        missing = [(lineno, path) for lineno, path, _ in records if not os.path.exists(self.root / path)]
        if missing:
            shown = "; ".join(f"line {lineno}: {str(self.root / path)!r}" for lineno, path in missing[:_MAX_REPORTED])
            more = f" (and {len(missing) - _MAX_REPORTED} more)" if len(missing) > _MAX_REPORTED else ""
            raise FileNotFoundError(
                f"image list {str(self.list_file)!r} names {len(missing)} missing image file(s): {shown}{more}; "
                "check that root points at the images_classic directory the list was written for, "
                "or regenerate the data"
            )
        self._linenos = [lineno for lineno, _, _ in records]
        self.samples: list[tuple[Path, int]] = [(self.root / path, label) for _, path, label in records]
        self.targets: list[int] = [label for _, _, label in records]

    def __len__(self) -> int:
        """Number of lines (samples) in the list."""
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        """``(transform(RGB image), label)`` of item ``index``.

        Raises:
            ImageListError: the image file cannot be decoded; the message names the file and
                the list line.
        """
        path, label = self.samples[index]
        try:
            with Image.open(path) as img:
                # convert() forces a full decode, so truncated files fail here, inside the try.
                image = img.convert("RGB")
        except (OSError, SyntaxError, ValueError) as err:
            raise ImageListError(
                f"cannot decode image {str(path)!r} (list {str(self.list_file)!r}, line {self._linenos[index]}): "
                f"{err}; the file is corrupted or not an image — regenerate or replace it"
            ) from err
        if self.transform is not None:
            return self.transform(image), label
        return image, label
