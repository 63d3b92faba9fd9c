"""Shared benchmark machinery: devices, timing, peak memory, environment, tables and JSON output.

Timing rules used by every benchmark:

* every timed callable runs ``warmup`` times first (CUDA context, cuDNN autotuning, allocator
  growth, lazy initialisation), untimed;
* a timed region is bracketed by ``torch.cuda.synchronize()`` on a GPU, so kernels queued
  before it are not charged to it and kernels it queued are;
* each callable is timed ``repeats`` times and summarised by the median (min and max are
  kept to show the spread); competing callables are timed *interleaved* (A, B, A, B, ...), so
  slow drifts of a shared machine hit both paths alike and their ratio stays meaningful.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from src.utils.io import write_json

# kineto (the profiler used for CPU peak memory) otherwise logs device-probe errors on CPU-only machines
os.environ.setdefault("KINETO_LOG_LEVEL", "5")

#: the three size presets every benchmark accepts
SIZES: tuple[str, ...] = ("tiny", "small", "full")
#: where results go by default: ``benchmarks/results/<name>-<device>.json``
RESULTS_DIR: Path = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------------------- CLI


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--device``, ``--size``, ``--output`` and ``--seed`` to ``parser`` and return it."""
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto = cuda when available, else cpu",
    )
    parser.add_argument(
        "--size",
        choices=SIZES,
        default="small",
        help="tiny: seconds (smoke test); small: CPU-friendly, under a minute on 2 cores; full: GPU sizes",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="JSON result path (default: benchmarks/results/<name>-<device>.json)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op CPU threads (default: torch's choice); 1 is often faster on a loaded machine",
    )
    return parser


def apply_threads(threads: int | None) -> None:
    """When given: ``torch.set_num_threads(threads)`` and the same limit for the BLAS/OpenMP pools of
    numpy/scipy (through ``threadpoolctl``, when installed); recorded by :func:`environment`."""
    if threads is None:
        return
    if threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(threads)


def resolve_device(choice: str) -> torch.device:
    """``auto`` → cuda if available, else cpu; ``cuda`` without a GPU is an error.

    Raises:
        SystemExit: ``cuda`` was asked for on a machine without CUDA.
    """
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine (use --device cpu or auto)")
    return torch.device(choice)


def default_output(name: str, device: torch.device) -> Path:
    """``benchmarks/results/<name>-<cpu|cuda>.json``."""
    return RESULTS_DIR / f"{name}-{device.type}.json"


# ------------------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    """Wait for all queued work on ``device`` (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], Any], device: torch.device, number: int = 1) -> float:
    """Seconds per call of ``fn`` over ``number`` back-to-back calls, synchronised on both ends."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(number):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / number


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    device: torch.device,
    warmup: int,
    repeats: int,
    number: int = 1,
) -> dict[str, list[float]]:
    """Seconds per call of each callable: ``warmup`` untimed calls each, then ``repeats`` rounds.

    In every round each callable is timed once (``number`` calls, synchronised), in the order
    of ``fns``, so a drifting machine load affects all callables alike.

    Returns:
        ``{name: [seconds per call, one per round]}``.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(time_once(fn, device, number))
    return times


def summarize(times: Sequence[float]) -> dict[str, Any]:
    """``{"median_s", "min_s", "max_s", "repeats_s"}`` of a list of per-call times."""
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "repeats_s": list(times),
    }


def ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator``, or None when the denominator is 0 (nothing measured)."""
    return numerator / denominator if denominator else None


# ------------------------------------------------------------------------------------- memory


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 inside the block (the profiler's C++ start/stop log lines)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _peak_of_allocations(prof: Any) -> int | None:
    """Peak of the running sum of the CPU allocator's events recorded by ``prof`` (bytes), or None."""
    try:
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        events.sort(key=lambda e: e.start_ns())
        current = peak = 0
        for event in events:
            if event.device_type() == torch.autograd.DeviceType.CPU:
                current += event.nbytes()
                peak = max(peak, current)
    except (AttributeError, RuntimeError):  # a torch without these (semi-internal) accessors
        return None
    return peak


class PeakMemory:
    """Peak memory of the code inside the ``with`` block (run it untimed: it adds overhead on CPU).

    * CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``;
      ``delta_bytes`` = peak − bytes allocated at entry (what the block added on top of the
      weights and optimizer state already held); the caching allocator's reserve is reported
      separately as ``reserved_bytes``.
    * CPU: the torch profiler's allocator events (``profile_memory=True``): ``delta_bytes`` is
      the peak of the running sum of tensor allocations minus frees inside the block, the CPU
      analogue of the CUDA number, independent of how malloc keeps or returns freed pages.
      The process RSS is also sampled every ``interval_s`` by a thread (``rss_delta_bytes`` =
      peak RSS − RSS at entry; it under-counts memory that malloc reuses from earlier steps).
      Without ``psutil`` the RSS number is the growth of ``ru_maxrss`` (0 unless the block
      exceeds every earlier peak of the process).

    After the block, :attr:`result` holds ``{"kind", "peak_bytes", "delta_bytes", ...}``.
    """

    def __init__(self, device: torch.device, interval_s: float = 0.002) -> None:
        self.device = device
        self.interval_s = interval_s
        self.result: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._base = 0
        self._peak = 0
        self._process: Any = None
        self._profiler: Any = None
        self._quiet: contextlib.AbstractContextManager[None] | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        self._start_rss()
        from torch.profiler import ProfilerActivity, profile

        self._quiet = quiet_stderr()
        self._quiet.__enter__()
        self._profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._profiler.__enter__()
        return self

    def _start_rss(self) -> None:
        try:
            import psutil
        except ImportError:
            import resource

            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            return
        self._process = psutil.Process()
        self._base = self._peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._process.memory_info().rss)
            self._stop.wait(self.interval_s)

    def _stop_rss(self) -> dict[str, Any]:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, self._process.memory_info().rss)
            return {"rss_kind": "rss_sampled", "rss_peak_bytes": self._peak, "rss_delta_bytes": self._peak - self._base}
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return {"rss_kind": "ru_maxrss_growth", "rss_peak_bytes": peak, "rss_delta_bytes": peak - self._base}

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            self.result = {
                "kind": "cuda_max_memory_allocated",
                "peak_bytes": peak,
                "delta_bytes": peak - self._base,
                "reserved_bytes": torch.cuda.max_memory_reserved(self.device),
            }
            return
        try:
            self._profiler.__exit__(exc_type, exc, tb)
        finally:
            assert self._quiet is not None
            self._quiet.__exit__(exc_type, exc, tb)
        rss = self._stop_rss()
        allocated = _peak_of_allocations(self._profiler)
        if allocated is not None:
            self.result = {"kind": "cpu_torch_allocations", "peak_bytes": None, "delta_bytes": allocated, **rss}
        else:
            self.result = {
                "kind": "cpu_" + rss["rss_kind"],
                "peak_bytes": rss["rss_peak_bytes"],
                "delta_bytes": rss["rss_delta_bytes"],
                **rss,
            }


# -------------------------------------------------------------------------------- environment


def _git_commit() -> str | None:
    """The checked-out commit (read-only ``git rev-parse``), or None outside a git tree."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo`` on Linux), else ``platform.processor()`` or the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on: device name, versions, CPU count, threads, date."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {
        "device_type": device.type,
        "device_name": name,
        "cpu_name": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
    }


# ------------------------------------------------------------------------------ output, tables


def write_result(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (``src.utils.io.write_json``)."""
    return write_json(path, data, indent=2)


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats with ``digits`` significant digits, None as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 10 ** (digits + 2) or abs(value) < 10 ** -(digits + 1):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:.0f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-markdown table of ``rows`` (cells formatted by :func:`fmt`)."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join(lines)


def mib(n_bytes: int | None) -> float | None:
    """Bytes → MiB (None stays None)."""
    return None if n_bytes is None else n_bytes / 2**20
