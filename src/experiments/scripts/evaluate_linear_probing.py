r"""Train and test a linear probe on a frozen backbone (src/downstream/linear_probe.py).

The DVC stage command, on stored embeddings and in test mode:

    python src/experiments/scripts/evaluate_linear_probing.py \
        --backbone-experiment-dir data/results/imagenet/ssl/<model> \
        --config-path src/experiments/conf/linear_probing/<dataset>.yaml \
        --pre-embedded-root-dir data/embeddings/<dataset>/<model> --test-mode

Outputs, in ``<config.experiment_dir>/<model>/<dataset>/lightning_logs/version_0/``: the
TensorBoard event file, ``hparams.yaml``, ``checkpoints/epoch=E-step=S.ckpt`` and
``metrics.json`` = ``{"test/accuracy": …, "test/ece": …}`` (macro accuracy, D-Q8). A probe whose
``metrics.json`` exists is finished and is not trained again. ``--test-mode``: no validation, the
last epoch's checkpoint is tested (D-Q16); without it, val is a stratified 20 % of train and the
best ``val/accuracy`` checkpoint is tested. Without ``--pre-embedded-root-dir`` the probe runs on
images through the frozen encoder. ``NUM_WORKERS`` (env) sets the DataLoader workers (default 0).
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
    parser.add_argument("--backbone-experiment-dir", type=Path, default=None, help="SSL pretraining run directory")
    parser.add_argument(
        "--pre-trained-model", default=None, help=f"torchvision baseline instead: {', '.join(PRETRAINED_BASELINES)}"
    )
    parser.add_argument("--config-path", type=Path, required=True, help="a linear-probing YAML")
    parser.add_argument(
        "--pre-embedded-root-dir", type=Path, default=None, help="embedding dir data/embeddings/<dataset>/<model>"
    )
    parser.add_argument(
        "--test-mode",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="no validation; test the last epoch (the DVC stages)",
    )
    args = parser.parse_args(argv)
    if (args.backbone_experiment_dir is None) == (args.pre_trained_model is None):
        parser.error("give exactly one of --backbone-experiment-dir and --pre-trained-model")
    return args


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    from src.downstream.linear_probe import evaluate  # torch: after parsing, so --help is quick

    evaluate(
        args.config_path,
        backbone_experiment_dir=args.backbone_experiment_dir,
        pre_trained_model=args.pre_trained_model,
        pre_embedded_root_dir=args.pre_embedded_root_dir,
        test_mode=args.test_mode,
    )


if __name__ == "__main__":
    main()
