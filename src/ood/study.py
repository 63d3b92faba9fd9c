"""The OOD study driver: every run of a runs folder, one or more detectors.

For each run (sorted folder listing; dot-entries and non-folders skipped, O-Q24): if
``<output_dir>/<run>.json`` exists its ``ood_scores`` are reused (resume); otherwise the model
and finetuner are loaded, the protocol is evaluated and the record is written atomically. The
deterministic ``ssl`` model gets ``ood_scores: null`` from the probabilistic detectors (O-Q6).
The raw scores behind each table go to ``<output_dir>/scores/<run>.npz`` (confidences,
predictions and labels per split: any metric can be recomputed from them). Finally ``runs.json``
(the list of all records) is rewritten.

Per run, the network runs once per (preprocessor, split, batch) for all the run's detectors (a
:class:`~src.ood.features.FeatureStore` computing the union of what they read); several
detectors in one call (``run_studies``, the script's ``--postprocessor-name all``) also load each
model once and share the decoded input batches across runs (:class:`~src.ood.evaluator.InputCache`).
With ``cache_dir`` (the script's default ``data/cache/ood``) the decoded inputs and every run's encoder
outputs are kept on disk and shared by every study process, e.g. the paper's nine per-detector stages
(:mod:`src.ood.cache`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from src.ood.cache import CachedInputs, OODCache, RunEncodings
from src.ood.detectors import DETECTORS, build_detector, fixed_hyperparams, study_order
from src.ood.detectors.base import Detector
from src.ood.evaluator import InputCache, evaluate, protocol_loader
from src.ood.features import FeatureStore
from src.ood.progress import StudyProgress
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
    """The raw scores of one (run, detector), atomically as .npz: per split the confidences (``id``,
    ``<set>``), the predictions (``*_pred``) and the labels (``*_label``), and the OOD sets in table
    order (``ood_sets``, ``ood_groups``); see :class:`~src.ood.evaluator.StudyResult`."""

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
    config_dir: str | Path | None = None,
    hyperparam: dict[str, Any] | None = None,
    cache_dir: str | Path | None = None,
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
        config_dir=config_dir,
        hyperparam=hyperparam,
        cache_dir=cache_dir,
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
    config_dir: str | Path | None = None,
    hyperparam: dict[str, Any] | None = None,
    cache_dir: str | Path | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Evaluate every run with every detector of ``outputs`` ({detector name: output folder}).

    Each run's model is loaded once for all its detectors, and its features are computed once
    per (preprocessor, split, batch) for all of them (what the union of their ``reads`` needs).
    With ``share_inputs`` the decoded, preprocessed deterministic input batches are kept for the
    whole study (:class:`~src.ood.evaluator.InputCache`). Every detector folder gets the same
    files as a one-detector study (records, scores, ``runs.json``), and finished records are reused.

    With ``seed``, torch and numpy are seeded before each (run, detector), and each split's
    stochastic features are drawn from a seed derived from (seed, preprocessor, split): a
    detector's records do not depend on which other detectors share the study. Detector configs
    are read from ``config_dir`` (default ``src/experiments/conf/ood``).

    ``hyperparam`` fixes hyper-parameters instead of searching them (``{"K": 50}``, or
    ``{"kldivsimk.K": 50}`` for one detector; :func:`~src.ood.detectors.fixed_hyperparams`). Each
    record holds ``hyperparam`` (the values used, searched or fixed), ``hyperparam_fixed`` (what
    was fixed) and ``corrected_sign`` (whether its scores are negated); a cached record computed
    with other fixed values or another sign is an error, not reused.

    ``cache_dir``: the on-disk store of decoded inputs and encoder outputs (:mod:`src.ood.cache`),
    shared by every study process that names it; None computes everything here (``share_inputs``
    then keeps the decoded batches in memory for this call). The records and scores are the same.
    """
    runs_dir = Path(runs_dir)
    dirs = {name: Path(out) for name, out in outputs.items()}
    for name in dirs:
        build_detector(name, config_dir=config_dir)  # fail on an unknown name or config before touching anything
    fixed = fixed_hyperparams(dict(hyperparam or {}), list(dirs), config_dir)
    for name in dirs:
        if fixed[name]:
            build_detector(name, config_dir=config_dir, hyperparam=fixed[name])  # a rejected value: before anything
    runs = discover_runs(runs_dir)
    protocol = get_protocol(in_dataset, data_root_dir)
    for out in dirs.values():
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OSError(f"--output-dir {out} cannot be created ({err.strerror}); choose a writable path") from err
    dev = resolve_device(device)
    ood_cache = OODCache(cache_dir) if cache_dir is not None else None
    if ood_cache is not None:
        inputs: CachedInputs | None = CachedInputs(protocol, ood_cache, batch_size, num_workers, device=dev)
        loader: Any = inputs
    else:
        inputs = None
        loader = (
            InputCache(protocol, batch_size, num_workers, device=dev).loader
            if share_inputs
            else protocol_loader(protocol, batch_size, num_workers)
        )
    records: dict[str, list[dict[str, Any]]] = {name: [] for name in dirs}
    shown = StudyProgress.auto(len(runs), list(dirs), enabled=progress)
    for run in shown.over(runs):
        todo: dict[str, Detector] = {}  # the run's detectors that need the network
        for name, output_dir in dirs.items():
            record = dict(run)
            records[name].append(record)
            cache = output_dir / f"{run['run_name']}.json"
            if cache.is_file():
                cached = read_json(cache)  # invalid JSON: a ValueError naming the file
                if not isinstance(cached, dict) or "ood_scores" not in cached:
                    raise ValueError(
                        f"{cache} is not a run record of this study (no 'ood_scores' entry); "
                        "delete it and run the study again to recompute this run (under DVC, `dvc repro` the "
                        "study's stage)"
                    )
                if cached.get("hyperparam_fixed", {}) != fixed[name]:
                    raise ValueError(
                        f"{cache} was computed with --hyperparam {cached.get('hyperparam_fixed', {})}, not "
                        f"{fixed[name]}; choose another --output-dir, or delete the file to recompute the run"
                    )
                sign = corrected_sign and DETECTORS[name].reference_sign_inverted
                if cached.get("corrected_sign", False) != sign:
                    raise ValueError(
                        f"{cache} was computed with{'out' if sign else ''} --corrected-sign; choose another "
                        "--output-dir, or delete the file to recompute the run"
                    )
                record.update(
                    {k: cached[k] for k in ("hyperparam", "hyperparam_fixed", "corrected_sign") if k in cached}
                )
                record["ood_scores"] = cached["ood_scores"]
                if "detector_info" in cached:
                    record["detector_info"] = cached["detector_info"]
                continue
            detector = build_detector(
                name, corrected_sign=corrected_sign, config_dir=config_dir, hyperparam=fixed[name]
            )
            record["hyperparam_fixed"] = fixed[name]
            # whether the stored scores are negated (the report labels them; only the inverted detectors are)
            record["corrected_sign"] = detector.corrected_sign and detector.reference_sign_inverted
            if detector.probabilistic and run["model_name"] == "ssl":
                log.info("%s: %s needs a stochastic model; recorded as null", run["run_name"], name)
                record["hyperparam"] = None
                record["ood_scores"] = None
                write_text(cache, json.dumps(record))
            else:
                todo[name] = detector
        if not todo:
            shown.run_finished(run["run_name"], [])
            continue
        shown.start_run(run["run_name"], list(todo))
        net = load_ood_network(run["model_path"], run["finetuner_path"], run["model_name"], dev)
        # the run's features: computed once per (preprocessor, split, batch) for all its detectors
        encodings = (
            None if ood_cache is None or inputs is None else RunEncodings(ood_cache, inputs, run, dev, batch_size)
        )
        store = FeatureStore.for_detectors(net, loader, todo.values(), seed=seed, encodings=encodings)
        for name, detector in todo.items():
            if seed is not None:
                torch.manual_seed(seed)
                np.random.seed(seed)
            result = evaluate(net, detector, protocol, features=store)
            record = records[name][-1]
            names = [key.removesuffix("_list") for key in detector.sweep]
            record["hyperparam"] = dict(zip(names, result.hyperparam)) if result.hyperparam is not None else {}
            record["ood_scores"] = result.rows
            info = detector.record_info()
            if info:
                record["detector_info"] = info
            save_scores(dirs[name] / "scores" / f"{run['run_name']}.npz", result.scores)
            write_text(dirs[name] / f"{run['run_name']}.json", json.dumps(record))
            shown.detector_done(name)
        del store, net  # the run's features and weights can go before the next run's
        shown.run_finished(run["run_name"], list(todo))
    if ood_cache is not None:
        log.info("%s (%s)", ood_cache.stats.summary(), ood_cache.root)
    for name, output_dir in dirs.items():
        runs_json = output_dir / "runs.json"
        runs_json.unlink(missing_ok=True)
        write_text(runs_json, json.dumps(records[name]))
    return records


def run_ood_study(
    runs_dir: str | Path,
    in_dataset: str,
    data_root_dir: str | Path,
    postprocessor_name: str,
    output_dir: str | Path,
    **options: Any,
) -> dict[str, list[dict[str, Any]]]:
    """The study as ``run_ood_study.py`` runs it: one detector into ``output_dir`` (exactly the paper's
    per-detector stage), or ``all``: every registered detector (:func:`study_order`) in one process,
    each into ``<output_dir>/<detector>``. ``options``: those of :func:`run_studies`.

    Raises:
        ValueError: an unknown detector name (before anything is written).
    """
    if postprocessor_name != "all" and postprocessor_name not in DETECTORS:
        raise ValueError(
            f"--postprocessor-name {postprocessor_name!r} is not a known detector; use one of "
            f"{', '.join(sorted(DETECTORS))}, or `all` for every detector"
        )
    if postprocessor_name != "all":
        records = run_study(runs_dir, in_dataset, data_root_dir, postprocessor_name, output_dir, **options)
        return {postprocessor_name: records}
    outputs: dict[str, str | Path] = {name: Path(output_dir) / name for name in study_order()}
    return run_studies(runs_dir, in_dataset, data_root_dir, outputs, **options)
