"""The Fashion-MNIST study on one GPU (``fashion_mnist_gpu.py``): the chain of stages, then the report.

The same commands as the DVC stages (``fmnist_*`` in dvc.yaml), with GPU-sized settings and without
DVC (GPU machines often lack it): 2,000 training images per class (``train_per_class="all"`` for the
full 6,000) and the full test set, the six model × loss combinations (``ssl``, ``ssl_bayes_h``,
``ssl_bayes_z`` × Barlow Twins, VICReg; β = 0.001, 12 MC samples, one seed) per protocol, every
detector, and the report, all under ``output_root`` (``data/gpu/fashion_mnist``). Each stage runs
as a subprocess of its script from the repository root (its log under ``<output_root>/logs``);
finished runs are reused on a rerun (each run folder's ``results.json`` marks it done). The report
is printed at the end with the card, date and wall time of each phase.
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from src.data.prepare.fashion_mnist_data import PROTOCOL_NAMES
from src.reports.fashion_mnist import make_fashion_mnist_report

#: the repository root: the subprocesses run there, with it on PYTHONPATH (a GPU machine may have the
#: project copied but not installed)
ROOT = Path(__file__).resolve().parents[2]
PROTOCOLS = PROTOCOL_NAMES
COMBINATIONS = [(model, loss) for model in ("ssl", "ssl_bayes_h", "ssl_bayes_z") for loss in ("barlow_twins", "vicreg")]


@dataclass(frozen=True)
class StudySettings:
    """The study's settings (the options of ``fashion_mnist_gpu.py``, same names and defaults).

    Attributes:
        output_root: where data, results, reports and logs go.
        source_dir: a folder with the four original files (default: Debian's package).
        protocols: the OOD protocols to run.
        train_per_class: training images per class (a seeded subset, also the OOD fit list); ``all`` for 6,000.
        test_per_class: test images per class; ``all`` for 1,000.
        epochs: pretraining epochs.
        finetune_epochs, finetune_lr: the linear head's epochs and learning rate.
        batch_size, num_workers: the loaders'.
        beta_scale, mc_samples: the Bayes models' β and MC samples.
        seed: the run seed.
        channels_last: ``auto`` (on when CUDA is available), ``true`` or ``false``.
    """

    output_root: Path = Path("data/gpu/fashion_mnist")
    source_dir: Path | None = None
    protocols: tuple[str, ...] = field(default=PROTOCOLS)
    train_per_class: str = "2000"
    test_per_class: str = "all"
    epochs: int = 20
    finetune_epochs: int = 5
    finetune_lr: float = 0.01
    batch_size: int = 512
    num_workers: int = 12
    beta_scale: float = 0.001
    mc_samples: int = 12
    seed: int = 1997
    channels_last: str = "auto"


def run_name(model: str, loss: str, settings: StudySettings) -> str:
    """The DVC stages' run folder names (their prefix tells the OOD study the model kind)."""
    if model == "ssl":
        return f"ssl_{loss}_seed_{settings.seed}"
    return f"{model}_{loss}_beta_{settings.beta_scale:g}_mc_{settings.mc_samples}_seed_{settings.seed}"


def commands(settings: StudySettings) -> list[tuple[str, list[str], Path | None]]:
    """(phase, argv, done-marker) in order; a step whose marker exists is skipped."""
    py = sys.executable
    out = settings.output_root
    data = out / "data"
    channels_last = settings.channels_last
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
        settings.train_per_class,
        "--test-per-class",
        settings.test_per_class,
    ]
    if settings.source_dir is not None:
        prepare += ["--source-dir", str(settings.source_dir)]
    steps.append(("data", prepare, None))  # itself skips an up-to-date build
    for protocol in settings.protocols:
        runs = out / "results" / protocol / "runs"
        for model, loss in COMBINATIONS:
            name = run_name(model, loss, settings)
            argv = [
                py,
                "src/experiments/scripts/run_pipeline.py",
                f"dataset={protocol}",
                f"dataset.data_dir={data}",
                f"dataset.num_workers={settings.num_workers}",
                f"dataset.batch_size={settings.batch_size}",
                f"dataset.train_per_class={settings.train_per_class}",
                f"dataset.test_per_class={settings.test_per_class}",
                f"+model/task/ssl@train={model}",
                f"model/loss={loss if model == 'ssl' else 'mc_' + loss}",
                "+model/task@finetune=finetune",
                f"train.trainer.max_epochs={settings.epochs}",
                f"finetune.trainer.max_epochs={settings.finetune_epochs}",
                f"finetune.offline_learning_rate={settings.finetune_lr}",
                f"train.channels_last={channels_last}",
                f"seed={settings.seed}",
                f"output_path={runs / name}",
                f"hydra.run.dir={runs / name / '.hydra_run'}",
            ]
            if model != "ssl":
                argv += [f"train.beta_scale={settings.beta_scale}", f"train.mc_samples={settings.mc_samples}"]
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
                    str(settings.num_workers),
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


def run_study(settings: StudySettings, dry_run: bool = False) -> int:
    """Run every step of ``commands(settings)`` not yet done, then write and print the report.

    With ``dry_run`` the commands are printed and nothing runs.

    Returns:
        0, or the exit status of the first step that failed (its log's last lines go to stderr).
    """
    steps = commands(settings)
    if dry_run:
        for phase, cmd, _ in steps:
            print(f"# {phase}\n{shlex.join(cmd)}")
        return 0
    os.chdir(ROOT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log_dir = settings.output_root / "logs"
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
    if set(settings.protocols) != set(PROTOCOLS):
        print("(the combined report needs both protocols; see reports/<protocol>/ood/ood_report.md)")
        for protocol in settings.protocols:
            print((settings.output_root / "reports" / protocol / "ood" / "ood_report.md").read_text())
    else:
        out = settings.output_root
        make_fashion_mnist_report(out / "results", out / "reports", out / "data")
        print((settings.output_root / "reports" / "README.md").read_text())
    print(f"device: {device_name()}; date: {dt.date.today().isoformat()}; pretraining epochs: {settings.epochs}")
    for phase, seconds in timings.items():
        print(f"  {phase}: {seconds:.0f} s")
    print(f"  total: {sum(timings.values()):.0f} s")
    return 0
