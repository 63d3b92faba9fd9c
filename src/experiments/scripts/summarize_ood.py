r"""Report of the OOD study: tables (csv, md, tex) and PNG figures.

    python src/experiments/scripts/summarize_ood.py --results-dir data/results/ood/cifar10 \
        --output-dir data/reports/ood/cifar10 [--run <one run for the ROC/histogram figures>]

Without --run, the ROC curves and score histograms are drawn for the first seed of every run group.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results-dir", type=Path, required=True, help="data/results/ood/<in_dataset>")
    parser.add_argument("--output-dir", type=Path, required=True, help="data/reports/ood/<in_dataset>")
    parser.add_argument(
        "--run",
        default=None,
        help="the one run shown in the ROC and score figures (default: every run group's first seed)",
    )
    args = parser.parse_args(argv)
    from src.reports.ood import summarize  # torch: after parsing, so --help is quick

    try:
        text = summarize(args.results_dir, args.output_dir, args.run)
    except ValueError as err:  # an unknown --run (the message lists the known runs) or no scores
        parser.error(str(err))
    print(text)


if __name__ == "__main__":
    main()
