"""Progress of an OOD study: one bar per level in a terminal, plain lines otherwise.

In a terminal (stdout and stderr both terminals) the study shows two bars: the runs, and below
it the current run's detectors; log records are written above the bars (``logging_redirect_tqdm``),
so bars and log lines do not interleave. Otherwise (CI, ``nohup``, ``dvc queue logs``, a file) it
writes plain log lines: one when the study starts, one per run it evaluates (with the run's
detectors and time), one at the end. Runs whose records are all reused (or null: a probabilistic
detector on the deterministic model) print nothing of their own; the last line counts them.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from src.utils.terminal import output_is_terminal

log = logging.getLogger(__name__)
T = TypeVar("T")


def _took(since: float) -> str:
    return str(timedelta(seconds=round(time.monotonic() - since)))


class StudyProgress:
    """The study's progress display; ``mode`` is ``bar``, ``lines`` or ``none``.

    Loop over the runs with :meth:`over`; call :meth:`start_run` when a run needs its network,
    :meth:`detector_done` after each of its detectors and :meth:`run_finished` after each run.
    """

    def __init__(self, runs: int, detectors: list[str], mode: str = "lines") -> None:
        if mode not in ("bar", "lines", "none"):
            raise ValueError(f"progress mode {mode!r}: use bar, lines or none")
        self.mode = mode
        self.runs = runs
        self.detectors = detectors
        self._outer: Any = None
        self._inner: Any = None
        self._run_started = self._started = time.monotonic()
        self._index = 0
        self._computed = 0

    @classmethod
    def auto(cls, runs: int, detectors: list[str], enabled: bool = True) -> StudyProgress:
        """Bars in a terminal, lines otherwise; nothing when not ``enabled``."""
        mode = "none" if not enabled else "bar" if output_is_terminal() else "lines"
        return cls(runs, detectors, mode)

    def over(self, runs: Iterable[T]) -> Iterator[T]:
        """Iterate ``runs`` with the display on: bars (and log records written above them) or lines.

        The display is closed when the loop ends, also by an exception or a ``break``; the closing
        line (lines mode) is written only when every run was seen.
        """
        self._started = time.monotonic()
        what = f"{self.runs} runs × {len(self.detectors)} detector{'s' if len(self.detectors) != 1 else ''}"
        with contextlib.ExitStack() as stack:
            if self.mode == "bar":
                stack.enter_context(logging_redirect_tqdm())
                self._outer = stack.enter_context(tqdm(total=self.runs, desc="runs", unit="run", position=0))
                stack.callback(self._close_inner)
            elif self.mode == "lines":
                log.info("OOD study: %s (%s)", what, ", ".join(self.detectors))
            for run in runs:
                self._index += 1
                if self._outer is not None:
                    self._outer.set_postfix_str(str(run.get("run_name", "")) if isinstance(run, dict) else "")
                yield run
        self._outer = None
        if self.mode == "lines":
            log.info("OOD study done: %d runs (%d evaluated) in %s", self._index, self._computed, _took(self._started))

    def _close_inner(self) -> None:
        if self._inner is not None:
            self._inner.close()
            self._inner = None

    def start_run(self, run_name: str, detectors: list[str]) -> None:
        """The run's network is loaded for ``detectors``."""
        self._run_started = time.monotonic()
        self._computed += 1
        if self.mode == "bar":
            self._inner = tqdm(total=len(detectors), desc=run_name, unit="detector", position=1, leave=False)

    def detector_done(self, name: str) -> None:
        if self._inner is not None:
            self._inner.set_postfix_str(name, refresh=False)
            self._inner.update(1)

    def run_finished(self, run_name: str, detectors: list[str]) -> None:
        """The run is done: ``detectors`` computed (none: every record reused)."""
        self._close_inner()
        if self.mode == "lines" and detectors:
            log.info(
                "OOD run %d/%d %s: %s in %s",
                self._index,
                self.runs,
                run_name,
                ", ".join(detectors),
                _took(self._run_started),
            )
        if self._outer is not None:
            self._outer.update(1)
