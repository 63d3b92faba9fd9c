"""The demo's linear-probe chain in one process: for every demo run, pre-embed the demo splits and
train/test the probe, then write the probe report (the paper's three scripts, called in turn).

    python src/experiments/scripts/demo_linear_probing.py --runs-dir data/results/demo/runs

One process instead of 13 saves the repeated start-up of torch and Lightning, which dominates on
the small demo. Each step still skips work whose output exists.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from src.experiments.scripts import evaluate_linear_probing, pre_embed_datasets, summarize_evaluation

CONFIG = "src/experiments/conf/linear_probing/demo.yaml"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-dir", type=Path, required=True)
    parser.add_argument("--config-path", default=CONFIG)
    parser.add_argument("--embeddings-dir", type=Path, default=Path("data/embeddings/demo"))
    parser.add_argument("--probes-dir", type=Path, default=Path("data/demo/linear_probing"))
    args = parser.parse_args(argv)
    if not args.runs_dir.is_dir():
        raise FileNotFoundError(
            f"--runs-dir {args.runs_dir} does not exist or is not a folder; run the demo pretraining first "
            "(`dvc repro demo_pretrain`) or pass the folder that holds the demo's run folders"
        )
    runs = sorted(p for p in args.runs_dir.iterdir() if (p / "results.json").is_file())
    if not runs:
        raise FileNotFoundError(
            f"--runs-dir {args.runs_dir} holds no finished run (no <run>/results.json); run the demo pretraining "
            "first (`dvc repro demo_pretrain`) or pass the folder that holds the demo's run folders"
        )
    for run in runs:
        target = args.embeddings_dir / run.name
        pre_embed_datasets.main(
            ["--experiment-dir", str(run), "--config-path", args.config_path, "--target-dir", str(target)]
        )
        evaluate_linear_probing.main(
            [
                "--backbone-experiment-dir",
                str(run),
                "--config-path",
                args.config_path,
                "--pre-embedded-root-dir",
                str(target),
                "--test-mode",
            ]
        )
    summarize_evaluation.main(["--root-dir", str(args.probes_dir)])


if __name__ == "__main__":
    main()
