r"""OOD-detection study over a folder of finetuned runs: one detector per call, or `all`.

    python src/experiments/scripts/run_ood_study.py --runs-dir data/results/ablation/cifar10 \
        --in-dataset cifar10 --data-root-dir data/datasets --postprocessor-name msp \
        --output-dir data/results/ood/cifar10/msp

Writes ``<output-dir>/<run>.json`` per run (reused when present), ``<output-dir>/runs.json`` and
``<output-dir>/scores/<run>.npz`` (confidences, predictions and labels per split). A one-detector study
keeps decoded inputs and every run's encoder outputs in ``--cache-dir`` (default ``data/cache/ood``), where
the next study process (another detector's stage) reuses them; ``--no-cache`` computes them in the process.
``all`` shares them in memory and uses a store only when ``--cache-dir`` is given.

Fixed hyper-parameters instead of the search on the validation sets (repeatable; DETECTOR.NAME for
one detector of an `all` study; values are YAML: 50, 0.0014, [1, 2, 3]):

    python src/experiments/scripts/run_ood_study.py ... --postprocessor-name kldivsimk --hyperparam K=50
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

#: the store of a one-detector study (``src.ood.cache.DEFAULT_CACHE_DIR``; not imported: --help stays torch-free)
DEFAULT_CACHE_DIR = Path("data/cache/ood")

#: one config per detector (``src/ood/detectors/__init__.py``): the names without importing torch
DETECTOR_CONFIGS = Path(__file__).resolve().parents[1] / "conf" / "ood"
#: ``src.ood.protocol.PROTOCOLS`` and the detectors with ``reference_sign_inverted``, named here so that
#: ``--help`` does not import torch; tests/experiments/test_script_help.py keeps them equal to the library's
PROTOCOLS = ("cifar10", "demo", "fashion_mnist", "fashion_mnist_split")
SIGN_INVERTED = ("gram", "kldivsimk", "sigmamean")


def detector_names() -> list[str]:
    """The detectors that have a config, by name (``--help`` lists them)."""
    return sorted(p.stem for p in DETECTOR_CONFIGS.glob("*.yaml"))


def hyperparam_arg(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` (or ``DETECTOR.NAME=VALUE``) with the value read as YAML."""
    import yaml

    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE (e.g. K=50, odin.temperature=10)")
    try:
        return name.strip(), yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: the value is not valid YAML ({err})") from err


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-dir", type=Path, required=True, help="folder of run folders (run_pipeline outputs)")
    parser.add_argument(
        "--in-dataset", required=True, help=f"ID dataset of the protocol: one of {', '.join(sorted(PROTOCOLS))}"
    )
    parser.add_argument(
        "--data-root-dir", type=Path, required=True, help="root of benchmark_imglist/ and images_classic/"
    )
    parser.add_argument(
        "--postprocessor-name",
        required=True,
        help=f"detector: one of {', '.join(detector_names())}; or `all`: every detector in one process, "
        "each into <output-dir>/<detector>",
    )
    parser.add_argument("--output-dir", type=Path, required=True, help="where <run>.json and runs.json go")
    parser.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument(
        "--corrected-sign",
        action="store_true",
        help="negate the scores of the detectors whose reference sign looks inverted: " + ", ".join(SIGN_INVERTED),
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed torch/numpy before each (run, detector), and each split's MC draws from "
        "(seed, preprocessor, split); the reference seeds nothing",
    )
    parser.add_argument(
        "--hyperparam",
        type=hyperparam_arg,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="fix a hyper-parameter instead of searching it (repeatable): a searched one (K, temperature, noise, "
        "powers) or a constructor argument of the detector; DETECTOR.NAME=VALUE for one detector of `all`",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="on-disk store of decoded inputs and encoder outputs shared by every study process (the nine "
        "per-detector stages); content-addressed, safe to delete (default: data/cache/ood for one detector; "
        "none for `all`, which shares them in memory)",
    )
    parser.add_argument(
        "--no-cache", action="store_true", help="compute every input and encoder output in this process (no store)"
    )
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def store_dir(args: argparse.Namespace) -> Path | None:
    """The store of this call: none with --no-cache; --cache-dir when given; else the default folder for one
    detector (the per-detector stages share through it) and none for `all` (one process shares in memory)."""
    if args.no_cache:
        return None
    if args.cache_dir is not None:
        return Path(args.cache_dir)
    return None if args.postprocessor_name == "all" else DEFAULT_CACHE_DIR


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    from src.ood.study import run_ood_study  # torch: after parsing, so --help is quick

    run_ood_study(
        args.runs_dir,
        args.in_dataset,
        args.data_root_dir,
        args.postprocessor_name,
        args.output_dir,
        device=args.device,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        corrected_sign=args.corrected_sign,
        seed=args.seed,
        progress=not args.no_progress,
        hyperparam=dict(args.hyperparam),
        cache_dir=store_dir(args),
    )


if __name__ == "__main__":
    main()
