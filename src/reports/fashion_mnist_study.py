"""The Fashion-MNIST study on one GPU (``fashion_mnist_gpu.py``): the chain of stages in one process, then the report.

The same work as the DVC stages (``fmnist_*`` in dvc.yaml), with GPU-sized settings and without
DVC (GPU machines often lack it): 2,000 training images per class (``train_per_class="all"`` for the
full 6,000) and the full test set, the six model × loss combinations (``ssl``, ``ssl_bayes_h``,
``ssl_bayes_z`` × Barlow Twins, VICReg; β = 0.001, 12 MC samples, one seed) per protocol, every
detector, and the report, all under ``output_root`` (``data/gpu/fashion_mnist``).

Every step runs in this process, through the library functions the stages' scripts call: the data
(:func:`~src.data.prepare.fashion_mnist_data.prepare_fashion_mnist`), each run
(:func:`~src.train.pipeline.run_pipeline` on a config composed by Hydra's Compose API from
``src/experiments/conf`` with the overrides of the run's ``run_pipeline.py`` command line), the OOD
study with every detector (:func:`~src.ood.study.run_ood_study` with ``all``: one model load and one
feature pass per run for every registered detector) and the reports. Torch, CUDA and the config tree are
loaded once instead of once per step. ``--dry-run`` prints each step as the equivalent command.

Each step writes its log to ``<output_root>/logs/<NN>_<phase>.log`` (its log records and what it
prints); finished runs are reused on a rerun (a run folder's ``results.json`` marks it done; an
interrupted run resumes from its checkpoints, checked against its ``run_config.json``), as are the
OOD study's finished records. GPU memory is released after each run. The report is printed at the
end with the card, date, epochs and wall time of each phase, which also go to
``<output_root>/study.json``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import logging
import multiprocessing as mp
import os
import shlex
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir

from src.data.prepare.fashion_mnist_data import PROTOCOL_NAMES, prepare_fashion_mnist
from src.ood.study import run_ood_study
from src.reports.fashion_mnist import make_fashion_mnist_report
from src.reports.ood import summarize
from src.train.pipeline import run_pipeline
from src.utils.io import write_json

#: the repository root: the study runs there (relative paths are read from it, as the DVC stages do)
ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "src" / "experiments" / "conf"
SCRIPTS = "src/experiments/scripts"
PROTOCOLS = PROTOCOL_NAMES
COMBINATIONS = [(model, loss) for model in ("ssl", "ssl_bayes_h", "ssl_bayes_z") for loss in ("barlow_twins", "vicreg")]
#: the OOD study's seed (the fmnist_ood stages')
OOD_SEED = 1997
#: the data seed of prepare_fashion_mnist.py's default (the stages' fashion_mnist.data_seed)
DATA_SEED = 1997
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudySettings:
    """The study's settings (the options of ``fashion_mnist_gpu.py``, same names and defaults).

    Attributes:
        output_root: where data, results, reports and logs go.
        source_dir: a folder with the four original files (default: Debian's package).
        protocols: the OOD protocols to run.
        train_per_class: training images per class (a seeded subset, also the OOD fit list); ``all`` for 6,000.
        test_per_class: test images per class; ``all`` for 1,000.
        ood_count: the cap of each OOD set; ``all`` for every image (1,797 digits, 1,000 noise, 1,000 photo patches).
        epochs: pretraining epochs.
        finetune_epochs, finetune_lr: the linear head's epochs and learning rate.
        batch_size, num_workers: the loaders'.
        ood_batch_size: the OOD study's batch size.
        beta_scale, mc_samples: the Bayes models' β and MC samples.
        seed: the run seed.
        channels_last: ``auto`` (on when CUDA is available), ``true`` or ``false``.
        overrides: more Hydra overrides for every run (``key=value``), after the study's own.
    """

    output_root: Path = Path("data/gpu/fashion_mnist")
    source_dir: Path | None = None
    protocols: tuple[str, ...] = field(default=PROTOCOLS)
    train_per_class: str = "2000"
    test_per_class: str = "all"
    ood_count: str = "all"
    epochs: int = 20
    finetune_epochs: int = 5
    finetune_lr: float = 0.01
    batch_size: int = 512
    num_workers: int = 12
    ood_batch_size: int = 1024
    beta_scale: float = 0.001
    mc_samples: int = 12
    seed: int = 1997
    channels_last: str = "auto"
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Step:
    """One step of the study: what runs in this process, and the equivalent command (``--dry-run``).

    Attributes:
        phase: the phase it counts towards (``data``, ``pretrain <protocol>``, ``ood <protocol>``,
            ``ood report <protocol>``).
        name: what it works on (the run folder's name for a run).
        script: the script of the equivalent command (the DVC stage's).
        args: its arguments; for a run, the Hydra overrides the config is composed with.
        done: a file whose existence marks the step finished (it is then skipped), or None.
        call: the library function the step calls (``prepare``, ``pipeline``, ``ood``, ``summarize``).
        kwargs: that function's keyword arguments (none for ``pipeline``: the config comes from ``args``).
    """

    phase: str
    name: str
    script: str
    args: tuple[str, ...]
    done: Path | None
    call: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def command(self) -> list[str]:
        return [sys.executable, f"{SCRIPTS}/{self.script}", *self.args]


def run_name(model: str, loss: str, settings: StudySettings) -> str:
    """The DVC stages' run folder names (their prefix tells the OOD study the model kind)."""
    if model == "ssl":
        return f"ssl_{loss}_seed_{settings.seed}"
    return f"{model}_{loss}_beta_{settings.beta_scale:g}_mc_{settings.mc_samples}_seed_{settings.seed}"


def per_class(text: str) -> int | None:
    """A subset size as the prepare script reads it: an int, or None for ``all`` / ``null`` / ``none``."""
    if text.strip().lower() in ("null", "none", "all", ""):
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither an integer nor `all` (a per-class or OOD count)") from None


def resolved_channels_last(settings: StudySettings) -> str:
    if settings.channels_last == "auto":
        return "true" if torch.cuda.is_available() else "false"
    return settings.channels_last


def steps(settings: StudySettings) -> list[Step]:
    """The study's steps in order; a step whose ``done`` file exists is skipped."""
    out = settings.output_root
    data = out / "data"
    channels_last = resolved_channels_last(settings)
    prepare = {
        "output_root": data,
        "source_dir": settings.source_dir,
        "train_per_class": per_class(settings.train_per_class),
        "test_per_class": per_class(settings.test_per_class),
        "ood_count": per_class(settings.ood_count),
        "seed": DATA_SEED,
    }
    prepare_args = [
        "--output-root",
        str(data),
        "--train-per-class",
        settings.train_per_class,
        "--test-per-class",
        settings.test_per_class,
        "--ood-count",
        settings.ood_count,
    ]
    if settings.source_dir is not None:
        prepare_args += ["--source-dir", str(settings.source_dir)]
    # the prepare step itself skips an up-to-date build
    result = [Step("data", "fashion_mnist", "prepare_fashion_mnist.py", tuple(prepare_args), None, "prepare", prepare)]
    for protocol in settings.protocols:
        runs = out / "results" / protocol / "runs"
        for model, loss in COMBINATIONS:
            name = run_name(model, loss, settings)
            overrides = [
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
                f"hydra.run.dir={runs / name / '.hydra_run'}",  # the command's; a composed config has no run dir
            ]
            if model != "ssl":
                overrides += [f"train.beta_scale={settings.beta_scale}", f"train.mc_samples={settings.mc_samples}"]
            overrides += list(settings.overrides)
            done = runs / name / "results.json"
            result.append(Step(f"pretrain {protocol}", name, "run_pipeline.py", tuple(overrides), done, "pipeline"))
        ood = out / "results" / "ood" / protocol
        ood_kwargs = {
            "runs_dir": runs,
            "in_dataset": protocol,
            "data_root_dir": data,
            "postprocessor_name": "all",
            "output_dir": ood,
            "batch_size": settings.ood_batch_size,
            "num_workers": settings.num_workers,
            "seed": OOD_SEED,
            "progress": False,
        }
        ood_args = [
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
            str(settings.ood_batch_size),
            "--num-workers",
            str(settings.num_workers),
            "--seed",
            str(OOD_SEED),
            "--no-progress",
        ]
        # the study itself reuses finished <run>.json records
        result.append(Step(f"ood {protocol}", protocol, "run_ood_study.py", tuple(ood_args), None, "ood", ood_kwargs))
        report = out / "reports" / protocol / "ood"
        result.append(
            Step(
                f"ood report {protocol}",
                protocol,
                "summarize_ood.py",
                ("--results-dir", str(ood), "--output-dir", str(report)),
                None,
                "summarize",
                {"results_dir": ood, "output_dir": report},
            )
        )
    return result


def commands(settings: StudySettings) -> list[tuple[str, list[str], Path | None]]:
    """(phase, equivalent command, done-marker) of every step, in order (what ``--dry-run`` prints)."""
    return [(step.phase, step.command(), step.done) for step in steps(settings)]


def compose_run(overrides: tuple[str, ...] | list[str]) -> Any:
    """The pipeline config of one run: ``conf/config.yaml`` composed with the run's overrides, as
    ``run_pipeline.py`` composes it (Hydra's own ``hydra.*`` keys set nothing a composed config keeps)."""
    with initialize_config_dir(version_base=None, config_dir=str(CONFIG_DIR), job_name="run_pipeline"):
        return compose(config_name="config", overrides=[o for o in overrides if not o.startswith("hydra.")])


@contextlib.contextmanager
def phase_log(path: Path) -> Iterator[None]:
    """Send the log records and the printed output of a step to ``path`` (and nowhere else) while it runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    handler = logging.FileHandler(path, mode="a")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    # loggers that do not pass records on to the root (Lightning's own, when it was imported first)
    own = [
        lg
        for lg in logging.root.manager.loggerDict.values()
        if isinstance(lg, logging.Logger) and not lg.propagate and lg.handlers
    ]
    saved = [(lg, lg.handlers[:]) for lg in (root, *own)]
    level = root.level
    with path.open("a", buffering=1) as stream:
        try:
            for lg, _ in saved:
                lg.handlers = [handler]
            root.setLevel(logging.INFO)
            with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
                yield
        finally:
            for lg, handlers in saved:
                lg.handlers = handlers
            root.setLevel(level)
            handler.close()


@contextlib.contextmanager
def own_process_state(start_method: str | None = None) -> Iterator[None]:
    """Run a step as if in a process of its own: the global settings a step may change (float32 matmul
    precision, cuDNN flags, deterministic algorithms, Lightning's seed variables, the start method of
    worker processes) are restored afterwards, and the memory it held on the GPU is released."""
    precision = torch.get_float32_matmul_precision()
    cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    env = {key: os.environ.get(key) for key in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")}
    method = mp.get_start_method(allow_none=True)
    if start_method is not None:
        mp.set_start_method(start_method, force=True)
    try:
        yield
    finally:
        if start_method is not None:
            mp.set_start_method(method, force=True)
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def execute(step: Step) -> None:
    """Run one step in this process."""
    if step.call == "prepare":
        prepare_fashion_mnist(**step.kwargs)
    elif step.call == "pipeline":
        # run_pipeline.py's start method: DataLoader workers are spawned, not forked from a process with CUDA
        with own_process_state(start_method="spawn"):
            run_pipeline(compose_run(step.args))
    elif step.call == "ood":
        with own_process_state():
            run_ood_study(**step.kwargs)
    elif step.call == "summarize":
        print(summarize(**step.kwargs))
    else:
        raise ValueError(f"unknown step call {step.call!r}")


def device_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (no CUDA device)"


def run_study(settings: StudySettings, dry_run: bool = False) -> int:
    """Run every step of ``steps(settings)`` not yet done, in this process, then write and print the report.

    With ``dry_run`` the equivalent commands are printed and nothing runs.

    Returns:
        0, or 1 when a step failed (its log's last lines go to stderr; the steps after it do not run).
    """
    todo = steps(settings)
    if dry_run:
        for step in todo:
            print(f"# {step.phase}\n{shlex.join(step.command())}")
        return 0
    with contextlib.chdir(ROOT):
        return _run(settings, todo)


def _run(settings: StudySettings, todo: list[Step]) -> int:
    out = settings.output_root
    log_dir = out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    reused: list[str] = []
    failed: str | None = None
    start_all = time.monotonic()

    def record() -> dict[str, Any]:
        """``study.json``, rewritten after every step (a study stopped from outside leaves its phase times)."""
        data = {
            "device": device_name(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "date": dt.date.today().isoformat(),
            "pretraining_epochs": settings.epochs,
            "finetune_epochs": settings.finetune_epochs,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
            "phases_s": {phase: round(seconds, 1) for phase, seconds in timings.items()},
            "total_s": round(time.monotonic() - start_all, 1),
            "reused_runs": reused,
            "failed_phase": failed,
        }
        write_json(out / "study.json", data, indent=2)
        return data

    for i, step in enumerate(todo):
        if step.done is not None and step.done.is_file():
            print(f"[{step.phase}] reused {step.name}", flush=True)
            reused.append(step.name)
            continue
        log_file = log_dir / f"{i:02d}_{step.phase.replace(' ', '_')}.log"
        print(f"[{step.phase}] {step.name} ... (log: {log_file})", flush=True)
        start = time.monotonic()
        error: Exception | None = None
        with phase_log(log_file):
            try:
                execute(step)
            except Exception as err:  # logged, then the study stops (as a failed stage stops `dvc repro`)
                error = err
                traceback.print_exc()
        timings[step.phase] = timings.get(step.phase, 0.0) + time.monotonic() - start
        if error is not None:
            failed = step.phase
            print(f"[{step.phase}] failed: {type(error).__name__}: {error}", file=sys.stderr)
            print(f"the last lines of {log_file}:", file=sys.stderr)
            print("".join(log_file.read_text().splitlines(keepends=True)[-30:]), file=sys.stderr)
            break
        record()
    if failed is None:
        start = time.monotonic()
        if set(settings.protocols) != set(PROTOCOLS):
            print("(the combined report needs both protocols; see reports/<protocol>/ood/ood_report.md)")
            for protocol in settings.protocols:
                print((out / "reports" / protocol / "ood" / "ood_report.md").read_text())
        else:
            make_fashion_mnist_report(out / "results", out / "reports", out / "data")
            print((out / "reports" / "README.md").read_text())
        timings["report"] = time.monotonic() - start
    data = record()
    print(
        f"device: {data['device']}; torch {data['torch']}, CUDA {data['cuda']}; date: {data['date']}; "
        f"pretraining epochs: {settings.epochs}, finetuning epochs: {settings.finetune_epochs}"
    )
    for phase, seconds in timings.items():
        print(f"  {phase}: {seconds:.0f} s")
    print(f"  total: {data['total_s']:.0f} s")
    return 0 if failed is None else 1
