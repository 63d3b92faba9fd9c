"""Install Fashion-MNIST's original files and write its two OOD protocols (src/data/prepare/fashion_mnist_data.py).

Usage (from the repository root)::

    python src/experiments/scripts/prepare_fashion_mnist.py --output-root data/datasets/fashion_mnist
    # small settings: a per-class subset and capped OOD sets
    python src/experiments/scripts/prepare_fashion_mnist.py --train-per-class 100 --test-per-class 50 --ood-count 200

The files come from Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``)
when it is installed, from ``--source-dir`` when given, or from torchvision's download with
``--download``; otherwise the script stops and says how to get them. Nothing is rewritten when the
output is already up to date.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _optional_int(text: str) -> int | None:
    """An int, or None for ``null`` / ``none`` / ``all`` (the params.yaml spelling of "everything")."""
    if text.lower() in ("null", "none", "all", ""):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither an integer nor null") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-root", type=Path, default=Path("data/datasets/fashion_mnist"))
    parser.add_argument("--source-dir", type=Path, default=None, help="folder with the four original files")
    parser.add_argument("--download", action="store_true", help="let torchvision download missing files")
    parser.add_argument("--train-per-class", type=_optional_int, default=None, help="ID train subset (null: all)")
    parser.add_argument("--test-per-class", type=_optional_int, default=None, help="ID test subset (null: all)")
    parser.add_argument("--ood-count", type=_optional_int, default=None, help="cap of each OOD set (null: all)")
    parser.add_argument("--seed", type=int, default=1997, help="seed of the subsets, splits, noise and crops")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    from src.data.prepare.fashion_mnist_data import prepare_fashion_mnist  # torchvision: after parsing

    try:
        return prepare_fashion_mnist(
            args.output_root,
            args.source_dir,
            args.download,
            args.train_per_class,
            args.test_per_class,
            args.ood_count,
            args.seed,
        )
    except FileNotFoundError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
