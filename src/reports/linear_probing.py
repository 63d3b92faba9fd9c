"""The linear-probe report: every probe's ``metrics.json`` in one table (``summarize_evaluation.py``).

    python src/experiments/scripts/summarize_evaluation.py --root-dir data/linear_probing/

``summarize`` finds ``<root>/<model_id>/<dataset>/lightning_logs/version_<n>/metrics.json`` files and writes
``<root parent>/reports/linear_probing_report.{csv,tex,md}`` (``data/reports``), one row per probe
with the columns ``dataset | model_id | model_name | epoch | test/accuracy | test/ece``, sorted by
``dataset`` then ``model_name`` in code-point order (``SUN397`` < ``flowers-102`` < ``imagenet``).
``epoch`` is parsed from the probe's single ``epoch=E-step=S.ckpt``.

Formats: CSV with ``%.4f`` floats; Markdown as pandas ``to_markdown`` (tabulate pipe table,
tabulate's default ``g`` floats); LaTeX as pandas ``to_latex`` (booktabs) with ``%.3f`` floats and
**no escaping** — underscores in model ids are emitted raw, as in the reference (D-Q19).

Deviations: the reference mapped ten hard-coded W&B run ids to display names, none of which
matches a DVC directory, so ``model_name`` always equalled ``model_id`` (D-Q17); the table is
dropped and ``model_name = model_id``. The report is rewritten only when a ``metrics.json`` is
newer than it (or a report file is missing), and each file is written atomically.

``run_linear_probing`` is the demo's whole chain in one process (``demo_linear_probing.py``):
pre-embedding and a test-mode probe for every finished run (``src/downstream/linear_probe.py``),
then this report.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from src.downstream.linear_probe import probe_runs
from src.utils.io import read_json, write_text

log = logging.getLogger("summarize_evaluation")

REPORT_NAME = "linear_probing_report"
REPORT_SUFFIXES = (".csv", ".tex", ".md")
KEY_COLUMNS = ["dataset", "model_id", "model_name", "epoch"]


def checkpoint_epoch(experiment_dir: Path) -> int:
    """E of the single ``checkpoints/epoch=E-step=S.ckpt`` of a probe run.

    Raises:
        ValueError: not exactly one ``epoch*`` checkpoint (D-Q18), or an unparsable name.
    """
    ckpts = sorted(p for p in (experiment_dir / "checkpoints").glob("*.ckpt") if p.stem.startswith("epoch"))
    if len(ckpts) != 1:
        raise ValueError(
            f"{experiment_dir / 'checkpoints'} holds {len(ckpts)} epoch*.ckpt files; exactly one is expected "
            "(re-run the probe into a clean folder)"
        )
    stem = ckpts[0].stem
    try:
        return int(stem[stem.index("=") + 1 : stem.index("-")])
    except ValueError as err:
        raise ValueError(f"cannot parse the epoch from checkpoint name {ckpts[0].name!r}") from err


def collect_rows(root_dir: Path) -> list[dict[str, Any]]:
    """One row per ``metrics.json`` below ``root_dir`` (paths ``…/<model_id>/<dataset>/<x>/<y>/metrics.json``)."""
    rows = []
    for metrics_file in sorted(root_dir.rglob("metrics.json")):
        experiment_dir = metrics_file.parent
        parts = experiment_dir.parts
        if len(parts) < 4:
            raise ValueError(f"{metrics_file}: expected <model_id>/<dataset>/lightning_logs/version_<n>/metrics.json")
        model_id, dataset = parts[-4], parts[-3]
        metrics = read_json(metrics_file)  # invalid JSON: a ValueError naming the file
        row: dict[str, Any] = {
            "dataset": dataset,
            "model_id": model_id,
            "model_name": model_id,
            "epoch": checkpoint_epoch(experiment_dir),
        }
        row.update(metrics)
        rows.append(row)
    return rows


def build_report(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The report table, sorted by dataset then model_name (code-point order)."""
    if not rows:
        return pd.DataFrame(columns=[*KEY_COLUMNS, "test/accuracy", "test/ece"])
    frame = pd.DataFrame(rows)
    return frame.sort_values(["dataset", "model_name"], kind="stable").reset_index(drop=True)


def report_paths(root_dir: Path) -> dict[str, Path]:
    """``{suffix: <root parent>/reports/linear_probing_report<suffix>}``."""
    reports = root_dir.parent / "reports"
    return {suffix: reports / f"{REPORT_NAME}{suffix}" for suffix in REPORT_SUFFIXES}


def is_up_to_date(root_dir: Path, outputs: dict[str, Path]) -> bool:
    """True when every report file exists and none is older than a ``metrics.json`` below ``root_dir``."""
    if not all(path.is_file() for path in outputs.values()):
        return False
    oldest_output = min(path.stat().st_mtime_ns for path in outputs.values())
    newest_input = max((p.stat().st_mtime_ns for p in root_dir.rglob("metrics.json")), default=0)
    return newest_input <= oldest_output


def summarize(root_dir: str | Path) -> dict[str, Path]:
    """Write the three report files (see the module docstring); returns their paths.

    Raises:
        FileNotFoundError: ``root_dir`` does not exist.
    """
    root = Path(root_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"--root-dir {root} does not exist (run evaluate_linear_probing.py first)")
    outputs = report_paths(root)
    if is_up_to_date(root, outputs):
        log.info("the report in %s is up to date: nothing to do", outputs[".csv"].parent)
        return outputs
    frame = build_report(collect_rows(root))
    if frame.empty:
        log.warning("no metrics.json below %s: the report is empty", root)
    outputs[".csv"].parent.mkdir(exist_ok=True)
    write_text(outputs[".csv"], frame.to_csv(index=False, float_format="%.4f"))
    write_text(outputs[".md"], frame.to_markdown(index=False) + "\n")
    write_text(outputs[".tex"], frame.to_latex(index=False, float_format="%.3f", escape=False))
    log.info("wrote %s", ", ".join(str(p) for p in outputs.values()))
    return outputs


def run_linear_probing(
    runs_dir: str | os.PathLike[str],
    config_path: str | os.PathLike[str],
    embeddings_dir: str | os.PathLike[str],
    probes_dir: str | os.PathLike[str],
) -> dict[str, Path]:
    """Pre-embed and probe every finished run of ``runs_dir`` (``probe_runs``), then ``summarize(probes_dir)``.

    ``probes_dir`` is where the config's probes write (its ``experiment_dir``); the report goes to
    ``<probes_dir parent>/reports``.

    Returns:
        The report files, as ``summarize``.

    Raises:
        FileNotFoundError: ``runs_dir`` is not a folder, or holds no finished run.
    """
    probe_runs(runs_dir, config_path, embeddings_dir)
    return summarize(probes_dir)
