r"""Write the demo's report (data/demo/reports/README.md, summary.json, figures/) and the files DVC's metrics
and plots read (metrics/, curves/; src/reports/dvc_metrics.py).

    python src/experiments/scripts/demo_report.py --runs-dir data/demo/runs \
        --ood-report-dir data/demo/reports/ood --probe-report-dir data/demo/reports --output-dir data/demo/reports
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
    from src.reports.dvc_metrics import write_dvc_files

    summary = make_demo_report(args.runs_dir, args.ood_report_dir, args.probe_report_dir, args.output_dir)
    write_dvc_files(
        args.runs_dir, args.ood_report_dir / "ood_report.csv", args.output_dir / "metrics", args.output_dir / "curves"
    )
    bars = summary["sanity_bars"]
    print(f"demo report: {args.output_dir / 'README.md'}; sanity bars {'passed' if bars['passed'] else 'FAILED'}")


if __name__ == "__main__":
    main()
