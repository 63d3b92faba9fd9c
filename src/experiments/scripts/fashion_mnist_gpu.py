"""Fashion-MNIST on one GPU: a short but real run of the whole chain in one process, then the report's tables
(src/reports/fashion_mnist_study.py).

    python src/experiments/scripts/fashion_mnist_gpu.py                 # 20 epochs, both protocols, 2,000/class
    python src/experiments/scripts/fashion_mnist_gpu.py --epochs 10 --protocols fashion_mnist_split
    python src/experiments/scripts/fashion_mnist_gpu.py --dry-run       # print the equivalent commands only

The same work as the DVC stages (``fmnist_*`` in dvc.yaml), with GPU-sized settings and without
DVC (GPU machines often lack it): 2,000 training images per class (``--train-per-class all`` for the
full 6,000) and the full test set, the six model × loss combinations (``ssl``,
``ssl_bayes_h``, ``ssl_bayes_z`` × Barlow Twins, VICReg; β = 0.001, 12 MC samples, one seed) per
protocol, every detector, and the report, all under ``--output-root`` (``data/gpu/fashion_mnist``).
Every step runs in this one process (the library functions of the stages' scripts; each run's config
composed with the overrides its ``run_pipeline.py`` command would pass, plus ``--override``), with a
log per step under ``<output-root>/logs/``. It prints the report at the end with the card, date,
epochs and wall time of each phase (also in ``<output-root>/study.json``). Finished runs are reused
on a rerun (each run folder's ``results.json`` marks it done), as are the OOD study's records.

The files come from ``--source-dir`` (a folder with the four original files, e.g. a copy of
``/usr/share/datasets/fashion-mnist`` carried to the machine) or Debian's package.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

#: ``src.reports.fashion_mnist_study.PROTOCOLS``, named here so that ``--help`` does not import torch;
#: tests/experiments/test_script_help.py keeps the two equal
PROTOCOLS = ("fashion_mnist", "fashion_mnist_split")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-root", type=Path, default=Path("data/gpu/fashion_mnist"))
    parser.add_argument("--source-dir", type=Path, default=None, help="folder with the four original files")
    parser.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    parser.add_argument(
        "--train-per-class",
        default="2000",
        help="training images per class (a seeded subset, also the OOD fit list); `all` for the 6,000",
    )
    parser.add_argument("--test-per-class", default="all", help="test images per class; `all` for the 1,000")
    parser.add_argument(
        "--ood-count", default="all", help="cap of each OOD set; `all`: 1,797 digits, 1,000 noise, 1,000 photo patches"
    )
    parser.add_argument("--epochs", type=int, default=20, help="pretraining epochs")
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--finetune-lr", type=float, default=0.01, help="the linear head's lr (few epochs)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--num-workers", type=int, default=12)
    parser.add_argument("--ood-batch-size", type=int, default=1024, help="the OOD study's batch size")
    parser.add_argument("--beta-scale", type=float, default=0.001)
    parser.add_argument("--mc-samples", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1997)
    parser.add_argument(
        "--channels-last",
        choices=["auto", "true", "false"],
        default="auto",
        help="NHWC encoder, faster under GPU autocast (auto: on when CUDA is available)",
    )
    parser.add_argument(
        "--override",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one more Hydra override for every run, after the study's own (repeatable), "
        "e.g. --override model.backbone.hidden_dim=256",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the equivalent commands, run nothing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = vars(parse_args(argv))
    dry_run = args.pop("dry_run")
    from src.reports.fashion_mnist_study import StudySettings, run_study  # torch: after parsing

    settings = StudySettings(**{**args, "protocols": tuple(args["protocols"]), "overrides": tuple(args["overrides"])})
    return run_study(settings, dry_run=dry_run)


if __name__ == "__main__":
    sys.exit(main())
