"""The OOD study's per-detector stages run one after another, as DVC runs them, with and without the store.

Each stage is a separate process (``run_ood_study.py --postprocessor-name <detector>``), as the paper's
``ood_detection_study@<protocol>-<detector>`` stages. Two passes over the nine paper detectors:

* ``no_cache``: ``--no-cache`` (every stage decodes its inputs and runs the encoder itself);
* ``cache``: one fresh ``--cache-dir`` for all nine stages; before them, one process decodes every list of
  the protocol into the store (``inputs``, timed apart: a one-time cost of the study).

Per stage: wall seconds of the process, images decoded through PIL and images through the encoder (every
encoder pass: the features, ODIN's two passes, Gram's maps, logpprior's views), counted in the process.
``startup``: the wall time of a process that imports the study and exits (paid once per stage, not per run).
The records and score files of the two passes are compared (identical, scores bit for bit).

Projection to a study of ``--project-runs`` runs from the ``R`` runs measured (linear in the runs):

    T(study) = inputs + 9 · startup + Σ_stages (T_stage − startup) · project_runs / R

(``inputs`` = 0 without the store). Usage (repository root)::

    python -m benchmarks.ood_stages --runs-dir data/demo/runs --in-dataset demo \\
        --data-root-dir data/demo/dataset --batch-size 256 --seed 1997 --work-dir /tmp/ood_stages
    # on the device, with a few CIFAR-10 runs, projected to the paper's 180:
    python -m benchmarks.ood_stages --runs-dir <R runs> --in-dataset cifar10 --data-root-dir data/datasets \\
        --device cuda --num-workers 8 --project-runs 180 --work-dir /tmp/ood_stages
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PAPER = ("msp", "mds", "sigmamean", "logpprior", "umds", "gram", "odin", "kldivsimk", "edsimk")


def stage_main(argv: list[str]) -> None:
    """The child: ``run_ood_study.main(argv)`` with decode and encoder counters; prints one JSON line."""
    from src.data.dataset.imglist import ImageListDataset
    from src.experiments.scripts import run_ood_study
    from src.ood.wrapper import OODNetwork

    counts = {"decoded": 0, "encoded": 0}
    decode, encode, feature_list = ImageListDataset.__getitem__, OODNetwork.encode, OODNetwork.feature_list

    def counting_decode(self: Any, i: int) -> Any:
        counts["decoded"] += 1
        return decode(self, i)

    def counting_encode(self: Any, x: Any) -> Any:
        counts["encoded"] += int(x.shape[0])
        return encode(self, x)

    def counting_feature_list(self: Any, x: Any) -> Any:
        counts["encoded"] += int(x.shape[0])
        return feature_list(self, x)

    ImageListDataset.__getitem__ = counting_decode  # type: ignore[method-assign]
    OODNetwork.encode = counting_encode  # type: ignore[method-assign]
    OODNetwork.feature_list = counting_feature_list  # type: ignore[method-assign]
    if argv and argv[0] == "--inputs-only":
        fill_inputs(*argv[1:])
    else:
        run_ood_study.main(argv)
    print("STAGE-COUNTS " + json.dumps(counts), flush=True)


def fill_inputs(in_dataset: str, data_root: str, cache_dir: str, batch_size: str, num_workers: str) -> None:
    """Decode every list of the protocol into the store (the study's one-time input cost)."""
    from src.ood.cache import CachedInputs, OODCache
    from src.ood.protocol import get_protocol

    protocol = get_protocol(in_dataset, data_root)
    inputs = CachedInputs(protocol, OODCache(cache_dir), int(batch_size), int(num_workers))
    for split in protocol.all_lists():
        inputs.images(split)


def run_child(args: list[str], threads: int | None) -> tuple[float, dict[str, int]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.ood_stages", "--stage", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"stage {args} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    line = next(x for x in out.stdout.splitlines() if x.startswith("STAGE-COUNTS "))
    return wall, json.loads(line.removeprefix("STAGE-COUNTS "))


def same_outputs(a: Path, b: Path) -> bool:
    if json.loads((a / "runs.json").read_text()) != json.loads((b / "runs.json").read_text()):
        return False
    for path in sorted((a / "scores").glob("*.npz")):
        with np.load(path) as x, np.load(b / "scores" / path.name) as y:
            if x.files != y.files or any(not np.array_equal(x[k], y[k]) for k in x.files):
                return False
    return True


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--stage":
        stage_main(argv[1:])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs-dir", required=True)
    p.add_argument("--in-dataset", required=True)
    p.add_argument("--data-root-dir", required=True)
    p.add_argument("--work-dir", type=Path, required=True, help="outputs and the store (emptied first)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=1997)
    p.add_argument("--detectors", default=",".join(PAPER))
    p.add_argument("--project-runs", type=int, default=180)
    p.add_argument("--threads", type=int, default=None, help="OMP/MKL threads of each stage process")
    p.add_argument(
        "--output", type=Path, default=None, help="JSON of the results (default: <work-dir>/ood_stages.json)"
    )
    args = p.parse_args(argv)
    detectors = args.detectors.split(",")
    if args.work_dir.exists():
        shutil.rmtree(args.work_dir)
    runs = sum(1 for e in Path(args.runs_dir).iterdir() if e.is_dir() and not e.name.startswith("."))
    common = ["--runs-dir", args.runs_dir, "--in-dataset", args.in_dataset, "--data-root-dir", args.data_root_dir]
    common += ["--device", args.device, "--batch-size", str(args.batch_size), "--num-workers", str(args.num_workers)]
    common += ["--seed", str(args.seed), "--no-progress"]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import src.ood.study"], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    startup = time.perf_counter() - start
    result: dict[str, Any] = {"runs": runs, "startup_s": startup, "modes": {}}
    store = args.work_dir / "cache"
    for mode in ("no_cache", "cache"):
        stages: dict[str, Any] = {}
        inputs = 0.0
        if mode == "cache":
            fill = [args.in_dataset, args.data_root_dir, str(store), str(args.batch_size), str(args.num_workers)]
            inputs, counts = run_child(["--inputs-only", *fill], args.threads)
            stages["inputs"] = {"wall_s": inputs, **counts}
        for name in detectors:
            out = args.work_dir / mode / name
            extra = ["--no-cache"] if mode == "no_cache" else ["--cache-dir", str(store)]
            wall, counts = run_child(
                [*common, "--postprocessor-name", name, "--output-dir", str(out), *extra], args.threads
            )
            stages[name] = {"wall_s": wall, **counts}
            print(f"{mode:9s} {name:10s} {wall:8.1f} s  decoded {counts['decoded']:8d}  encoded {counts['encoded']:9d}")
        total = sum(s["wall_s"] for s in stages.values())
        per_stage = sum(stages[n]["wall_s"] - startup for n in detectors)
        projected = inputs + len(detectors) * startup + per_stage * args.project_runs / runs
        result["modes"][mode] = {
            "stages": stages,
            "total_s": total,
            "decoded": sum(s["decoded"] for s in stages.values()),
            "encoded": sum(s["encoded"] for s in stages.values()),
            "projected_s": projected,
        }
    result["identical"] = {
        n: same_outputs(args.work_dir / "no_cache" / n, args.work_dir / "cache" / n) for n in detectors
    }
    result["project_runs"] = args.project_runs
    nc, c = result["modes"]["no_cache"], result["modes"]["cache"]
    print(f"startup {startup:.1f} s; runs {runs}")
    for mode, r in (("no cache", nc), ("cache", c)):
        print(
            f"{mode:9s} total {r['total_s']:8.1f} s  decoded {r['decoded']:9d}  encoded {r['encoded']:10d}  "
            f"projected to {args.project_runs} runs {r['projected_s'] / 3600:8.2f} h"
        )
    print("identical records and scores:", all(result["identical"].values()), result["identical"])
    output = args.output or args.work_dir / "ood_stages.json"
    from src.utils.io import write_json

    write_json(output, result, indent=2)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
