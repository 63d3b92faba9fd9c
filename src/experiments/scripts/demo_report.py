r"""Write the demo's report (data/reports/demo/README.md, summary.json, figures/).

    python src/experiments/scripts/demo_report.py --runs-dir data/results/demo/runs \
        --ood-report-dir data/reports/demo/ood --probe-report-dir data/demo/reports --output-dir data/reports/demo
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-dir", type=Path, required=True)
    parser.add_argument("--ood-report-dir", type=Path, required=True)
    parser.add_argument("--probe-report-dir", type=Path, required=True)
    parser.add_argument("--output-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    from src.reports.demo import make_demo_report  # after parsing, so --help is quick

    summary = make_demo_report(args.runs_dir, args.ood_report_dir, args.probe_report_dir, args.output_dir)
    bars = summary["sanity_bars"]
    print(f"demo report: {args.output_dir / 'README.md'}; sanity bars {'passed' if bars['passed'] else 'FAILED'}")


if __name__ == "__main__":
    main()
