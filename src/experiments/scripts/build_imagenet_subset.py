r"""Build an ImageNet 1 % / 10 % subset root from a SimCLR subset list (``src/data/prepare/imagenet_subset.py``).

Usage::

    python -m src.experiments.scripts.build_imagenet_subset \
        --imagenet-root data/datasets/imagenet --split-file 1percent.txt --output-root data/datasets/imagenet1pct
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 on success, 1 on a build error)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--imagenet-root", type=Path, default=Path("data/datasets/imagenet"), help="full ImageNet root")
    parser.add_argument("--split-file", type=Path, required=True, help="SimCLR list, e.g. 1percent.txt")
    parser.add_argument(
        "--output-root",
        type=Path,
        default=None,
        help="subset root (default for <N>percent.txt: data/datasets/imagenet<N>pct)",
    )
    parser.add_argument("--copy", action="store_true", help="copy the files instead of creating relative symlinks")
    args = parser.parse_args(argv)
    from src.data.prepare.imagenet_subset import SubsetBuildError, build_subset, default_output_root

    output_root = args.output_root or default_output_root(args.split_file)
    if output_root is None:
        parser.error(f"--output-root is required for split file {args.split_file.name}")
    try:
        report = build_subset(args.imagenet_root, args.split_file, output_root, copy=args.copy)
    except SubsetBuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(
        f"{report.output_root}: {report.images} images in {report.classes} classes "
        f"({len(report.empty_classes)} without images); "
        f"{report.created} entries written, {report.skipped} already present"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
