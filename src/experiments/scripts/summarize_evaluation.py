"""Collect every linear-probe ``metrics.json`` into one report (src/reports/linear_probing.py).

    python src/experiments/scripts/summarize_evaluation.py --root-dir data/linear_probing/

finds ``<root>/<model_id>/<dataset>/lightning_logs/version_<n>/metrics.json`` files and writes
``<root parent>/reports/linear_probing_report.{csv,tex,md}`` (``data/reports``), one row per probe
with the columns ``dataset | model_id | model_name | epoch | test/accuracy | test/ece``, sorted by
``dataset`` then ``model_name`` in code-point order (``SUN397`` < ``flowers-102`` < ``imagenet``).
CSV with ``%.4f`` floats; Markdown as a tabulate pipe table; LaTeX (booktabs) with ``%.3f`` floats
and no escaping, as in the reference (D-Q19). The report is rewritten only when a ``metrics.json``
is newer than it.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root-dir", type=Path, required=True, help="the probes' root (data/linear_probing/)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from src.reports.linear_probing import summarize  # torch: after parsing, so --help is quick

    summarize(args.root_dir)


if __name__ == "__main__":
    main()
