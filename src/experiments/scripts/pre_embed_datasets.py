r"""Embed a transfer dataset with a frozen pretrained backbone (src/downstream/embed.py).

The DVC stage command:

    python src/experiments/scripts/pre_embed_datasets.py \
        --experiment-dir data/results/imagenet/ssl/<model> \
        --config-path src/experiments/conf/linear_probing/<dataset>.yaml \
        --target-dir data/embeddings/<dataset>/<model>

writes ``<target-dir>/<split>.pt`` for each official split of the dataset (SUN397: train, test;
flowers-102 and imagenet: train, val; demo: train, val, test), each the dict
``{"reps": float32 [N, D] | [N, M, D], "labels": int64 [N]}``: the backbone features of ``ssl`` and
``ssl_bayes_z`` runs (D-Q11), the 12 MC samples of h of ``ssl_bayes_h`` runs (D-Q10), or the
features of a torchvision baseline (``--pre-trained-model``). A split whose file exists is not
embedded again. ``NUM_WORKERS`` (env) sets the DataLoader workers (default 0).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

#: the torchvision baselines (``src.task.evaluation.PRETRAINED_BASELINES``), named here so that
#: ``--help`` does not import torch; tests/experiments/test_script_help.py keeps the two equal
PRETRAINED_BASELINES = ("resnet-50", "resnet-18")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment-dir", type=Path, default=None, help="SSL pretraining run directory")
    parser.add_argument(
        "--pre-trained-model", default=None, help=f"torchvision baseline instead: {', '.join(PRETRAINED_BASELINES)}"
    )
    parser.add_argument("--config-path", type=Path, required=True, help="a linear-probing YAML")
    parser.add_argument("--target-dir", type=Path, required=True, help="output dir (data/embeddings/<dataset>/<model>)")
    args = parser.parse_args(argv)
    if (args.experiment_dir is None) == (args.pre_trained_model is None):
        parser.error("give exactly one of --experiment-dir and --pre-trained-model")
    return args


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    from src.downstream.embed import pre_embed  # torch: after parsing, so --help is quick

    pre_embed(args.config_path, args.target_dir, args.experiment_dir, args.pre_trained_model)


if __name__ == "__main__":
    main()
