"""Run the three benchmarks for one device and size; write ``all-<device>.json`` and a combined markdown table.

Each benchmark also writes its own JSON (``<output-dir>/<name>-<device>.json``). Sized so that
``--size full --device cuda`` finishes within about five minutes on one H100 (the per-sample
paths of the OOD benchmark run on a subset of test points and are extrapolated).

Usage (repository root)::

    python -m benchmarks.run_all --device cuda --size full
    python -m benchmarks.run_all --device cpu --size small --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks import epoch_throughput, ood_detectors, train_step
from benchmarks._timing import RESULTS_DIR, SIZES, apply_threads, environment, resolve_device, write_result

#: benchmark name -> module with ``main(argv) -> dict`` and ``table(result) -> str``
BENCHMARKS: dict[str, ModuleType] = {
    train_step.NAME: train_step,
    epoch_throughput.NAME: epoch_throughput,
    ood_detectors.NAME: ood_detectors,
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line arguments (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch/BLAS CPU threads (default: torch's choice)")
    parser.add_argument(
        "--output-dir", type=Path, default=RESULTS_DIR, help="folder of the JSON files (default: benchmarks/results)"
    )
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), default=None, help="default: all three")
    return parser.parse_args(argv)


def combined_markdown(results: dict[str, dict[str, Any]], env: dict[str, Any], size: str) -> str:
    """One markdown document: a header line and every benchmark's table."""
    parts = [
        f"# Benchmarks ({size}) on {env['device_type']}: {env['device_name']} "
        f"(torch {env['torch_version']}, {env['date']})"
    ]
    for name, result in results.items():
        table: Callable[[dict[str, Any]], str] = BENCHMARKS[name].table
        parts.append(f"## {name}\n\n{table(result)}")
    return "\n\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the selected benchmarks in this process; returns the combined result dict."""
    args = parse_args(argv)
    apply_threads(args.threads)
    device = resolve_device(args.device)
    common = ["--device", device.type, "--size", args.size, "--seed", str(args.seed)]
    if args.threads is not None:
        common += ["--threads", str(args.threads)]
    results: dict[str, dict[str, Any]] = {}
    wall: dict[str, float] = {}
    for name, module in BENCHMARKS.items():
        if args.only is not None and name not in args.only:
            continue
        start = time.perf_counter()
        output = args.output_dir / f"{name}-{device.type}.json"
        results[name] = module.main([*common, "--output", str(output)])
        wall[name] = time.perf_counter() - start
    env = environment(device)
    combined = {
        "benchmark": "all",
        "environment": env,
        "size": args.size,
        "wall_s": wall,
        "results": results,
    }
    output = args.output_dir / f"all-{device.type}.json"
    write_result(output, combined)
    print("\n" + combined_markdown(results, env, args.size))
    print("wall time per benchmark: " + ", ".join(f"{k} {v:.1f} s" for k, v in wall.items()), file=sys.stderr)
    print(f"written to {output}")
    return combined


if __name__ == "__main__":
    main()
