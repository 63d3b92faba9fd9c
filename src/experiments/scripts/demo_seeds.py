r"""The demo's six runs over several seeds, then one OOD study of every detector and its report.

    dvc repro demo_data        # the demo's data, once
    python src/experiments/scripts/demo_seeds.py --seeds 1997 1998 1999 --output-dir data/demo_seeds

The commands are the demo's own DVC stages (``demo_pretrain@<run>``, ``demo_ood``, ``demo_ood_report``)
as DVC resolves them from ``dvc.yaml`` and ``params.yaml``, with ``seed=<S>`` added and the output folders
moved under ``--output-dir``: ``runs/<run>_seed_<S>``, ``ood/<detector>``, ``reports/ood`` (the report
groups the seeds of a run: mean ± std over n seeds). Finished runs and finished OOD records are skipped
on a rerun (the pipeline's and the study's own skipping), so adding a seed trains only that seed.
``docs/ood.md`` ("Stochastic against deterministic, per detector") reports what this measured.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def stage_commands() -> dict[str, str]:
    """Resolved command of every ``demo_*`` stage, by DVC address (``demo_pretrain@ssl_vicreg``, …)."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return {st.addressing: st.cmd for st in repo.index.stages if st.addressing.startswith("demo_")}


def _words(cmd: str) -> list[str]:
    """A stage's command as argv: ``PYTHONPATH=. python …`` → ``[sys.executable, …]``."""
    words = shlex.split(cmd)
    if words[:2] != ["PYTHONPATH=.", "python"]:
        raise ValueError(f"unexpected demo stage command (expected 'PYTHONPATH=. python ...'): {cmd}")
    return [sys.executable, *words[2:]]


def _replace_option(words: list[str], option: str, value: str) -> list[str]:
    """``words`` with the value after ``option`` replaced (an argparse option such as ``--runs-dir``)."""
    if option not in words:
        raise ValueError(f"{option} is not in the demo stage command {' '.join(words)}")
    i = words.index(option)
    return [*words[: i + 1], value, *words[i + 2 :]]


def commands(seeds: list[int], output_dir: Path, stages: dict[str, str] | None = None) -> list[list[str]]:
    """The argv of every step: one pretraining (+ finetune) per demo run and seed, the OOD study, the report.

    Raises:
        ValueError: an empty or repeated seed list, or a demo stage command of an unexpected form.
    """
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: give distinct seeds, got {seeds}")
    stages = stage_commands() if stages is None else stages
    runs = sorted(a.partition("@")[2] for a in stages if a.startswith("demo_pretrain@"))
    if not runs:
        raise ValueError("dvc.yaml has no demo_pretrain@<run> stage")
    out: list[list[str]] = []
    for seed in seeds:
        for run in runs:
            target = output_dir / "runs" / f"{run}_seed_{seed}"
            words = []
            for w in _words(stages[f"demo_pretrain@{run}"]):
                if w.startswith("output_path="):
                    w = f"output_path={target}"
                elif w.startswith("hydra.run.dir="):
                    w = f"hydra.run.dir={target}/.hydra_run"
                elif w.startswith("seed="):
                    raise ValueError(f"demo_pretrain@{run} already sets a seed: {w}")
                words.append(w)
            out.append([*words, f"seed={seed}"])
    study = _replace_option(_words(stages["demo_ood"]), "--runs-dir", str(output_dir / "runs"))
    out.append(_replace_option(study, "--output-dir", str(output_dir / "ood")))
    report = _replace_option(_words(stages["demo_ood_report"]), "--results-dir", str(output_dir / "ood"))
    out.append(_replace_option(report, "--output-dir", str(output_dir / "reports" / "ood")))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1997, 1998, 1999], help="one run of each per seed")
    parser.add_argument("--output-dir", type=Path, default=Path("data/demo_seeds"))
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    if not args.dry_run and not (ROOT / "data" / "demo" / "dataset").is_dir():
        parser.error("data/demo/dataset is missing: run `dvc repro demo_data` first")
    try:
        steps = commands(args.seeds, args.output_dir.resolve())  # the steps run in the repository root
    except ValueError as err:
        parser.error(str(err))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for i, argv_ in enumerate(steps, 1):
        print(f"[{i}/{len(steps)}] {shlex.join(argv_[1:])}", flush=True)
        if not args.dry_run:
            subprocess.run(argv_, cwd=ROOT, env=env, check=True)


if __name__ == "__main__":
    main()
