r"""Report of the OOD study: tables (csv, md, tex) and PNG figures.

    python src/experiments/scripts/summarize_ood.py --results-dir data/results/ood/cifar10 \
        --output-dir data/reports/ood/cifar10 [--run <run name for the ROC/histogram figures>]
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results-dir", type=Path, required=True, help="data/results/ood/<in_dataset>")
    parser.add_argument("--output-dir", type=Path, required=True, help="data/reports/ood/<in_dataset>")
    parser.add_argument("--run", default=None, help="run shown in the ROC and score figures")
    args = parser.parse_args(argv)
    from src.reports.ood import summarize  # torch: after parsing, so --help is quick

    print(summarize(args.results_dir, args.output_dir, args.run))


if __name__ == "__main__":
    main()
