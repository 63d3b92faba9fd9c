"""Run the benchmarks for one device and size; write ``all-<device>.json`` and a combined markdown table.

Each benchmark also writes its own JSON (``<output-dir>/<name>-<device>.json``). Sized so that
``--size full --device cuda`` finishes within about eight minutes on one H100/H200 (the per-sample
paths of the OOD benchmark run on a subset of test points and are extrapolated; not yet timed on one).

Needs only torch, torchvision, Lightning, timm and scikit-learn (no Hydra, OmegaConf or DVC: the
benchmarks read the pipeline's YAML configs with PyYAML). Each benchmark module is imported when it
runs; one that cannot be imported is skipped with a line naming the missing module, and the others run.

Usage (repository root)::

    python -m benchmarks.run_all --device cuda --size full
    python -m benchmarks.run_all --device cpu --size small --threads 1
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks._timing import RESULTS_DIR, SIZES, apply_threads, environment, resolve_device, write_result

#: benchmark name -> module (``benchmarks.<module>``) with ``NAME``, ``main(argv) -> dict`` and ``table(result) -> str``
BENCHMARKS: dict[str, str] = {
    "train_step": "train_step",
    "pipeline": "pipeline_throughput",
    "ood_detectors": "ood_detectors",
}


def load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks.<module>`` of benchmark ``name`` (ImportError: a dependency is missing)."""
    module = importlib.import_module(f"benchmarks.{BENCHMARKS[name]}")
    if module.NAME != name:
        raise RuntimeError(f"benchmarks.{BENCHMARKS[name]}.NAME is {module.NAME!r}, registered as {name!r}")
    return module


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
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), default=None, help="default: all")
    return parser.parse_args(argv)


def combined_markdown(results: dict[str, dict[str, Any]], env: dict[str, Any], size: str) -> str:
    """One markdown document: a header line and every benchmark's table."""
    parts = [
        f"# Benchmarks ({size}) on {env['device_type']}: {env['device_name']} "
        f"(torch {env['torch_version']}, {env['date']})"
    ]
    for name, result in results.items():
        table: Callable[[dict[str, Any]], str] = load_benchmark(name).table
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
    skipped: dict[str, str] = {}
    for name in BENCHMARKS:
        if args.only is not None and name not in args.only:
            continue
        try:
            module = load_benchmark(name)
        except ImportError as err:
            skipped[name] = f"needs {err.name or err} ({err})"
            print(f"[run_all] skipped {name}: it needs the module {err.name!r}, not installed here", file=sys.stderr)
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
        "skipped": skipped,
        "results": results,
    }
    output = args.output_dir / f"all-{device.type}.json"
    write_result(output, combined)
    print("\n" + combined_markdown(results, env, args.size))
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    print("wall time per benchmark: " + ", ".join(f"{k} {v:.1f} s" for k, v in wall.items()), file=sys.stderr)
    print(f"written to {output}")
    return combined


if __name__ == "__main__":
    main()
