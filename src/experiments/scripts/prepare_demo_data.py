"""Write the embedded demo dataset (digits ID, held-out digits near-OOD, photo/noise far-OOD).

Usage (from the repository root)::

    python src/experiments/scripts/prepare_demo_data.py --output-root data/demo/dataset --image-size 16 --seed 1997

Does nothing if the output is already up to date; see :mod:`src.data.prepare.demo_data` for the protocol.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-root", type=Path, default=Path("data/demo/dataset"), help="data root to write")
    parser.add_argument("--image-size", type=int, default=16, help="side of the square images (>= 8)")
    parser.add_argument("--seed", type=int, default=1997, help="seed of splits, photo crops and noise")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    """Prepare the demo data and return its root."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    from src.data.prepare.demo_data import prepare_demo_data  # after parsing, so --help is quick

    return prepare_demo_data(args.output_root, image_size=args.image_size, seed=args.seed)


if __name__ == "__main__":
    main()
