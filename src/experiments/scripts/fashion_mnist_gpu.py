"""Fashion-MNIST on one GPU: a short but real run of the whole chain, then the report's tables.

    python src/experiments/scripts/fashion_mnist_gpu.py                 # 20 epochs, both protocols, 2,000/class
    python src/experiments/scripts/fashion_mnist_gpu.py --epochs 10 --protocols fashion_mnist_split
    python src/experiments/scripts/fashion_mnist_gpu.py --dry-run       # print the commands only

The same commands as the DVC stages (``fmnist_*`` in dvc.yaml), with GPU-sized settings and without
DVC (GPU machines often lack it): 2,000 training images per class (``--train-per-class all`` for the
full 6,000) and the full test set, the six model × loss combinations (``ssl``,
``ssl_bayes_h``, ``ssl_bayes_z`` × Barlow Twins, VICReg; β = 0.001, 12 MC samples, one seed) per
protocol, every detector, and the report, all under ``--output-root`` (``data/gpu/fashion_mnist``).
It prints the report at the end with the card, date and wall time of each phase. Finished runs are
reused on a rerun (each run folder's ``results.json`` marks it done).

The files come from ``--source-dir`` (a folder with the four original files, e.g. a copy of
``/usr/share/datasets/fashion-mnist`` carried to the machine) or Debian's package.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

#: the repository root: the subprocesses run there, with it on PYTHONPATH (a GPU machine may have the
#: project copied but not installed)
ROOT = Path(__file__).resolve().parents[3]
PROTOCOLS = ("fashion_mnist", "fashion_mnist_split")
COMBINATIONS = [(model, loss) for model in ("ssl", "ssl_bayes_h", "ssl_bayes_z") for loss in ("barlow_twins", "vicreg")]


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
    parser.add_argument("--epochs", type=int, default=20, help="pretraining epochs")
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--finetune-lr", type=float, default=0.01, help="the linear head's lr (few epochs)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--num-workers", type=int, default=12)
    parser.add_argument("--beta-scale", type=float, default=0.001)
    parser.add_argument("--mc-samples", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1997)
    parser.add_argument(
        "--channels-last",
        choices=["auto", "true", "false"],
        default="auto",
        help="NHWC encoder, faster under GPU autocast (auto: on when CUDA is available)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return parser.parse_args(argv)


def run_name(model: str, loss: str, args: argparse.Namespace) -> str:
    """The DVC stages' run folder names (their prefix tells the OOD study the model kind)."""
    if model == "ssl":
        return f"ssl_{loss}_seed_{args.seed}"
    return f"{model}_{loss}_beta_{args.beta_scale:g}_mc_{args.mc_samples}_seed_{args.seed}"


def commands(args: argparse.Namespace) -> list[tuple[str, list[str], Path | None]]:
    """(phase, argv, done-marker) in order; a step whose marker exists is skipped."""
    py = sys.executable
    out = args.output_root
    data = out / "data"
    channels_last = args.channels_last
    if channels_last == "auto":
        import torch

        channels_last = "true" if torch.cuda.is_available() else "false"
    steps: list[tuple[str, list[str], Path | None]] = []
    prepare = [
        py,
        "src/experiments/scripts/prepare_fashion_mnist.py",
        "--output-root",
        str(data),
        "--train-per-class",
        args.train_per_class,
        "--test-per-class",
        args.test_per_class,
    ]
    if args.source_dir is not None:
        prepare += ["--source-dir", str(args.source_dir)]
    steps.append(("data", prepare, None))  # itself skips an up-to-date build
    for protocol in args.protocols:
        runs = out / "results" / protocol / "runs"
        for model, loss in COMBINATIONS:
            name = run_name(model, loss, args)
            argv = [
                py,
                "src/experiments/scripts/run_pipeline.py",
                f"dataset={protocol}",
                f"dataset.data_dir={data}",
                f"dataset.num_workers={args.num_workers}",
                f"dataset.batch_size={args.batch_size}",
                f"dataset.train_per_class={args.train_per_class}",
                f"dataset.test_per_class={args.test_per_class}",
                f"+model/task/ssl@train={model}",
                f"model/loss={loss if model == 'ssl' else 'mc_' + loss}",
                "+model/task@finetune=finetune",
                f"train.trainer.max_epochs={args.epochs}",
                f"finetune.trainer.max_epochs={args.finetune_epochs}",
                f"finetune.offline_learning_rate={args.finetune_lr}",
                f"train.channels_last={channels_last}",
                f"seed={args.seed}",
                f"output_path={runs / name}",
                f"hydra.run.dir={runs / name / '.hydra_run'}",
            ]
            if model != "ssl":
                argv += [f"train.beta_scale={args.beta_scale}", f"train.mc_samples={args.mc_samples}"]
            steps.append((f"pretrain {protocol}", argv, runs / name / "results.json"))
        ood = out / "results" / "ood" / protocol
        steps.append(
            (
                f"ood {protocol}",
                [
                    py,
                    "src/experiments/scripts/run_ood_study.py",
                    "--runs-dir",
                    str(runs),
                    "--in-dataset",
                    protocol,
                    "--data-root-dir",
                    str(data),
                    "--postprocessor-name",
                    "all",
                    "--output-dir",
                    str(ood),
                    "--batch-size",
                    "1024",
                    "--num-workers",
                    str(args.num_workers),
                    "--seed",
                    "1997",
                    "--no-progress",
                ],
                None,  # the study itself reuses finished <run>.json files
            )
        )
        steps.append(
            (
                f"ood report {protocol}",
                [
                    py,
                    "src/experiments/scripts/summarize_ood.py",
                    "--results-dir",
                    str(ood),
                    "--output-dir",
                    str(out / "reports" / protocol / "ood"),
                ],
                None,
            )
        )
    return steps


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (no CUDA device)"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    steps = commands(args)
    if args.dry_run:
        for phase, cmd, _ in steps:
            print(f"# {phase}\n{shlex.join(cmd)}")
        return 0
    os.chdir(ROOT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log_dir = args.output_root / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    for i, (phase, cmd, done) in enumerate(steps):
        if done is not None and done.is_file():
            print(f"[{phase}] reused {done.parent.name}", flush=True)
            continue
        start = time.monotonic()
        log = log_dir / f"{i:02d}_{phase.replace(' ', '_')}.log"
        print(f"[{phase}] {shlex.join(cmd[1:3])} ... (log: {log})", flush=True)
        with log.open("w") as f:
            rc = subprocess.call(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
        timings[phase] = timings.get(phase, 0.0) + time.monotonic() - start
        if rc != 0:
            print(f"[{phase}] failed with exit code {rc}; the last lines of {log}:", file=sys.stderr)
            print("".join(log.read_text().splitlines(keepends=True)[-30:]), file=sys.stderr)
            return rc
    if set(args.protocols) != set(PROTOCOLS):
        print("(the combined report needs both protocols; see reports/<protocol>/ood/ood_report.md)")
        for protocol in args.protocols:
            print((args.output_root / "reports" / protocol / "ood" / "ood_report.md").read_text())
    else:
        from src.reports.fashion_mnist import make_fashion_mnist_report

        make_fashion_mnist_report(args.output_root / "results", args.output_root / "reports", args.output_root / "data")
        print((args.output_root / "reports" / "README.md").read_text())
    print(f"device: {device_name()}; date: {dt.date.today().isoformat()}; pretraining epochs: {args.epochs}")
    for phase, seconds in timings.items():
        print(f"  {phase}: {seconds:.0f} s")
    print(f"  total: {sum(timings.values()):.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
