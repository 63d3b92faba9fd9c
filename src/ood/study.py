"""The OOD study driver: every run of a runs folder, one or more detectors (spec: ood.md §1, §2, §12).

For each run (sorted folder listing; dot-entries and non-folders skipped): if
``<output_dir>/<run>.json`` exists its ``ood_scores`` are reused (resume); otherwise the model
and finetuner are loaded, the protocol is evaluated and the record is written atomically. The
deterministic ``ssl`` model gets ``ood_scores: null`` from the probabilistic detectors. The raw
scores behind each table go to ``<output_dir>/scores/<run>.npz`` for the report's figures.
Finally ``runs.json`` (the list of all records) is rewritten. Several detectors in one call
(``run_studies``, the script's ``--postprocessor-name all``) load each model once and share the
decoded input batches and, per model, the encoder's outputs for them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from src.ood.detectors import build_detector
from src.ood.evaluator import InputCache, evaluate
from src.ood.protocol import get_protocol
from src.ood.wrapper import load_ood_network, model_name_from_run
from src.utils.io import atomic_write, read_json, write_text

log = logging.getLogger(__name__)


def discover_runs(runs_dir: Path) -> list[dict[str, Any]]:
    """Run records (without scores) for the run folders in ``runs_dir``, sorted by name."""
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"--runs-dir {runs_dir} does not exist (run the pretraining stages first)")
    runs = []
    for entry in sorted(runs_dir.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        runs.append(
            {
                "run_name": entry.name,
                "model_path": str(runs_dir / entry.name / "checkpoints" / "model.ckpt"),
                "finetuner_path": str(runs_dir / entry.name / "finetune" / "checkpoints" / "last.ckpt"),
                "model_name": model_name_from_run(entry.name),
            }
        )
    if not runs:
        raise FileNotFoundError(
            f"--runs-dir {runs_dir} holds no run folders; expected <run>/checkpoints/model.ckpt and "
            "<run>/finetune/checkpoints/last.ckpt as written by run_pipeline.py with +model/task@finetune=finetune"
        )
    return runs


def save_scores(path: Path, scores: dict[str, np.ndarray]) -> None:
    """The detector's confidences per split (id, then each OOD set), atomically as .npz."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **scores)

    atomic_write(path, write)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def run_study(
    runs_dir: str | Path,
    in_dataset: str,
    data_root_dir: str | Path,
    detector_name: str,
    output_dir: str | Path,
    *,
    device: str = "auto",
    batch_size: int = 200,
    num_workers: int = 0,
    corrected_sign: bool = False,
    seed: int | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate every run with one detector; returns the records written to ``runs.json``."""
    return run_studies(
        runs_dir,
        in_dataset,
        data_root_dir,
        {detector_name: output_dir},
        device=device,
        batch_size=batch_size,
        num_workers=num_workers,
        corrected_sign=corrected_sign,
        seed=seed,
        progress=progress,
        share_inputs=False,
    )[detector_name]


def run_studies(
    runs_dir: str | Path,
    in_dataset: str,
    data_root_dir: str | Path,
    outputs: dict[str, str | Path],
    *,
    device: str = "auto",
    batch_size: int = 200,
    num_workers: int = 0,
    corrected_sign: bool = False,
    seed: int | None = None,
    progress: bool = True,
    share_inputs: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """Evaluate every run with every detector of ``outputs`` ({detector name: output folder}).

    Each run's model is loaded once for all its detectors; with ``share_inputs`` the decoded,
    preprocessed deterministic input batches are computed once for the whole study
    (:class:`~src.ood.evaluator.InputCache`) and each run's encoder output for each of them
    once (``OODNetwork.share_encodings``; the stochastic heads still sample on every call).
    Every detector folder gets the same files as a one-detector study (records, scores,
    ``runs.json``), and finished records are reused.
    """
    runs_dir = Path(runs_dir)
    dirs = {name: Path(out) for name, out in outputs.items()}
    for name in dirs:
        build_detector(name)  # fail on an unknown name before touching anything
    runs = discover_runs(runs_dir)
    protocol = get_protocol(in_dataset, data_root_dir)
    for out in dirs.values():
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OSError(f"--output-dir {out} cannot be created ({err.strerror}); choose a writable path") from err
    dev = resolve_device(device)
    inputs = InputCache(protocol, batch_size, num_workers, device=dev) if share_inputs else None
    records: dict[str, list[dict[str, Any]]] = {name: [] for name in dirs}
    for run in tqdm(runs, desc=f"{', '.join(dirs)} runs", disable=not progress):
        net = None  # loaded on first need, then shared by the run's detectors
        for name, output_dir in dirs.items():
            record = dict(run)
            records[name].append(record)
            cache = output_dir / f"{run['run_name']}.json"
            if cache.is_file():
                cached = read_json(cache)  # invalid JSON: a ValueError naming the file
                if not isinstance(cached, dict) or "ood_scores" not in cached:
                    raise ValueError(
                        f"{cache} is not a run record of this study (no 'ood_scores' entry); "
                        "delete it to recompute the run"
                    )
                record["ood_scores"] = cached["ood_scores"]
                continue
            detector = build_detector(name, corrected_sign=corrected_sign)
            if detector.probabilistic and run["model_name"] == "ssl":
                log.info("%s: %s needs a stochastic model; recorded as null", run["run_name"], name)
                record["ood_scores"] = None
            else:
                if seed is not None:
                    torch.manual_seed(seed)
                    np.random.seed(seed)
                if net is None:
                    net = load_ood_network(run["model_path"], run["finetuner_path"], run["model_name"], dev)
                    if inputs is not None:  # each shared input batch goes through the encoder once per run
                        net.share_encodings(inputs.holds)
                result = evaluate(net, detector, protocol, batch_size, num_workers, progress, inputs=inputs)
                record["ood_scores"] = result.rows
                save_scores(output_dir / "scores" / f"{run['run_name']}.npz", result.scores)
            write_text(cache, json.dumps(record))
    for name, output_dir in dirs.items():
        runs_json = output_dir / "runs.json"
        runs_json.unlink(missing_ok=True)
        write_text(runs_json, json.dumps(records[name]))
    return records
