"""The demo's linear-probe chain in one process: for every demo run, pre-embed the demo splits and
train/test the probe, then write the probe report (src/reports/linear_probing.py).

    python src/experiments/scripts/demo_linear_probing.py --runs-dir data/demo/runs

One process instead of 13 saves the repeated start-up of torch and Lightning, which dominates on
the small demo. Each step still skips work whose output exists.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

CONFIG = "src/experiments/conf/linear_probing/demo.yaml"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-dir", type=Path, required=True)
    parser.add_argument("--config-path", default=CONFIG)
    parser.add_argument("--embeddings-dir", type=Path, default=Path("data/demo/embeddings/demo"))
    parser.add_argument("--probes-dir", type=Path, default=Path("data/demo/linear_probing"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from src.reports.linear_probing import run_linear_probing  # torch: after parsing, so --help is quick

    run_linear_probing(args.runs_dir, args.config_path, args.embeddings_dir, args.probes_dir)


if __name__ == "__main__":
    main()
