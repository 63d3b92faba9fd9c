r"""Write the Fashion-MNIST report (src/reports/fashion_mnist.py) and, per protocol, the files DVC's metrics
and plots read (metrics/<protocol>/, curves/<protocol>/; src/reports/dvc_metrics.py).

    python src/experiments/scripts/fashion_mnist_report.py --results-dir data/results/fashion_mnist \
        --reports-dir data/reports/fashion_mnist --data-dir data/datasets/fashion_mnist
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results-dir", type=Path, required=True, help="holds <protocol>/runs/<run>/results.json")
    parser.add_argument("--reports-dir", type=Path, required=True, help="holds <protocol>/ood/; README.md goes here")
    parser.add_argument("--data-dir", type=Path, default=None, help="the dataset root, for the list sizes")
    args = parser.parse_args(argv)
    # torch: after parsing, so --help is quick
    from src.data.prepare.fashion_mnist_data import PROTOCOL_NAMES
    from src.reports.dvc_metrics import write_dvc_files
    from src.reports.fashion_mnist import make_fashion_mnist_report

    make_fashion_mnist_report(args.results_dir, args.reports_dir, args.data_dir)
    for protocol in PROTOCOL_NAMES:
        write_dvc_files(
            args.results_dir / protocol / "runs",
            args.reports_dir / protocol / "ood" / "ood_report.csv",
            args.reports_dir / "metrics" / protocol,
            args.reports_dir / "curves" / protocol,
        )
    print((args.reports_dir / "README.md").read_text())


if __name__ == "__main__":
    main()
