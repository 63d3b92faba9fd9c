"""What a run folder records about the config that made it, and what a rerun does with that record.

A run folder of ``run_pipeline.py`` or ``run_semi_supervised.py`` holds ``run_config.json``: the
resolved config, flattened to dotted keys, without the keys of :data:`IGNORED_KEYS` (they do not
change the numbers a run produces), split into parts with a hash each. The pipeline has two parts,
``pretrain`` (everything but ``finetune.*``) and ``finetune`` (``finetune.*``, present only when the
run finetunes), so that adding ``+model/task@finetune=finetune`` to a finished pretraining-only run
is not a change of its pretraining: the rerun finetunes and leaves the pretraining alone. The
semi-supervised stage has one part, ``run``.

A rerun compares its own record with the stored one before it writes anything
(:func:`check_run_folder`):

* same config (a part that the old run did not have counts as new work, not as a change): the run
  goes on as before: finished work is skipped, an interrupted phase resumes;
* a different config: :class:`RunConfigMismatch`, naming every differing key with its old and new
  value, and the two ways on: a new ``output_path``, or ``overwrite=true``, which deletes the stale
  part of the folder (the whole run, or for a changed finetune only ``finetune/`` and
  ``results.json``) and runs it again;
* no record (a folder of an earlier version of the code): the run goes on as before, with a
  warning that its config could not be checked; ``overwrite=true`` replaces it.

Under DVC the check never fires: ``dvc repro`` removes a stage's outputs before it runs the stage.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import shutil
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from src.utils.io import read_json, write_json

log = logging.getLogger(__name__)

RUN_CONFIG_FILE = "run_config.json"
#: version of the ``run_config.json`` layout
RUN_CONFIG_VERSION = 1

#: Config keys that do not change what a run computes, as dotted paths (``fnmatch`` patterns; a
#: pattern also covers every key below it). They are left out of the stored record and of the
#: comparison, so changing them never makes a rerun refuse. The one list, for every stage.
IGNORED_KEYS: tuple[str, ...] = (
    # where the outputs go, and how a rerun treats an existing folder
    "output_path",
    "overwrite",
    # Hydra's own node (only present when a config is composed with it)
    "hydra",
    # top-level keys kept for command compatibility, read by no training stage
    "model_ckpt_path",
    "finetuner_ckpt_path",
    "checkpoint_path",
    # loggers (csv, tensorboard, wandb and its project, entity, arguments)
    "logging",
    # where the data lie and how they are loaded: not what they are (DVC's deps track the content)
    "dataset.data_dir",
    "dataset.download",
    "dataset.num_workers",
    "dataset.persistent_workers",
    "dataset.pin_memory",
    # what a phase shows and logs while it trains
    "*.trainer.enable_progress_bar",
    "*.trainer.enable_model_summary",
    "*.trainer.log_every_n_steps",
    "*.callbacks.learning_rate_monitor",
    # how the same computation is laid out and scheduled on a GPU: cuDNN autotuning and the encoder's
    # memory format pick other kernels for the same values (no effect on CPU)
    "*.trainer.benchmark",
    "train.channels_last",
    "train.kwargs.channels_last",
)

#: how many differing keys an error lists before it says how many more there are
_MAX_LISTED = 25


def is_ignored(key: str, patterns: Iterable[str] = IGNORED_KEYS) -> bool:
    """Whether dotted ``key`` is, or lies below, one of ``patterns``."""
    parts = key.split(".")
    prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatchcase(prefix, pattern) for pattern in patterns for prefix in prefixes)


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as ``{"a.b.c": leaf}``; lists are leaves, an empty dict is the leaf ``{}``."""
    if isinstance(node, Mapping) and node:
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def resolved_keys(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as dotted keys, the ignored ones left out; values as JSON would store them."""
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    flat = {k: v for k, v in flatten(container).items() if not is_ignored(k)}
    return json.loads(json.dumps(flat, sort_keys=True, default=str))


def config_hash(keys: Mapping[str, Any]) -> str:
    """A short, stable hash of a part's keys and values."""
    text = json.dumps(keys, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class RunConfig:
    """The config of a run, by part (``{part: {dotted key: value}}``), as stored in ``run_config.json``."""

    parts: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def of_pipeline(cls, cfg: DictConfig) -> RunConfig:
        """``pretrain`` (all but ``finetune.*``) and, when the run finetunes, ``finetune``."""
        keys = resolved_keys(cfg)
        parts = {"pretrain": {k: v for k, v in keys.items() if not k.startswith("finetune.")}}
        finetune = {k: v for k, v in keys.items() if k.startswith("finetune.")}
        if finetune:
            parts["finetune"] = finetune
        return cls(parts)

    @classmethod
    def of_run(cls, cfg: DictConfig) -> RunConfig:
        """One part, ``run`` (the semi-supervised stage)."""
        return cls({"run": resolved_keys(cfg)})

    def hashes(self) -> dict[str, str]:
        return {name: config_hash(keys) for name, keys in self.parts.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "version": RUN_CONFIG_VERSION,
            "ignored_keys": list(IGNORED_KEYS),
            "hashes": self.hashes(),
            "parts": self.parts,
        }

    @classmethod
    def read(cls, folder: Path) -> RunConfig | None:
        """The record of ``folder``, None when it has none.

        Raises:
            ValueError: the file exists but is not a record of this layout (the message says what to do).
        """
        path = folder / RUN_CONFIG_FILE
        if not path.is_file():
            return None
        data = read_json(path)
        parts = data.get("parts") if isinstance(data, dict) else None
        if not isinstance(parts, dict) or not all(isinstance(p, dict) for p in parts.values()):
            raise ValueError(
                f"{path} is not a run config record (no 'parts' of dotted keys); delete it to rerun without the "
                "check (the run is then treated as one whose config is unknown), or add overwrite=true to redo it"
            )
        # keys a later version of IGNORED_KEYS ignores do not count
        return cls({name: {k: v for k, v in keys.items() if not is_ignored(k)} for name, keys in parts.items()})

    def write(self, folder: Path) -> None:
        write_json(folder / RUN_CONFIG_FILE, self.to_json(), indent=1)

    def merged(self, older: RunConfig | None) -> RunConfig:
        """This record plus the parts only ``older`` has (a finetune the new command does not ask for)."""
        parts = dict(older.parts) if older is not None else {}
        parts.update(self.parts)
        return RunConfig(parts)


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: old → new`` for every key whose value differs (``(absent)`` for a key only one side has)."""

    def show(mapping: Mapping[str, Any], key: str) -> str:
        return _show(mapping[key]) if key in mapping else "(absent)"

    keys = sorted(set(old) | set(new))
    return [f"{k}: {show(old, k)} → {show(new, k)}" for k in keys if k not in old or k not in new or old[k] != new[k]]


class RunFolderError(ValueError):
    """A run folder cannot be continued as it is and ``overwrite`` is not set; nothing was changed."""


class RunConfigMismatch(RunFolderError):
    """The run folder holds a run of another config."""


class DamagedRunError(RunFolderError):
    """The run folder is marked finished (or its pretraining complete) but a checkpoint it names is
    missing or cut short."""


def folder_entries(folder: Path, keep: Iterable[Path] = ()) -> list[Path]:
    """The entries of ``folder`` that belong to a run, i.e. all but those in ``keep`` (Hydra's own records)."""
    if not folder.is_dir():
        return []
    kept = {p.resolve() for p in keep}
    return sorted(p for p in folder.iterdir() if p.resolve() not in kept)


def remove(paths: Iterable[Path]) -> None:
    """Delete files and folders (the stale part of a run folder)."""
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def checkpoint_is_intact(path: Path) -> bool:
    """Whether ``path`` is a complete ``torch.save`` archive (its zip directory, at the end, reads).

    Cheap: the weights are not loaded. A file cut short (a full disk, a copy interrupted) fails.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def hydra_records(folder: Path) -> list[Path]:
    """The entries of ``folder`` Hydra itself wrote for the current launch (a multirun's ``runs/``).

    Hydra writes them before the run starts (the configs' ``hydra.sweep.dir`` is ``${output_path}/runs``);
    they are its log of launches, not part of the run, and are never deleted or counted as contents.
    """
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return []
        # a run's hydra.run.dir, or a multirun job's <sweep.dir>/<subdir>: the top entry below `folder` is kept
        dirs = [Path(HydraConfig.get().runtime.output_dir)]
    except Exception:  # no Hydra run (a library call) or no output folder: nothing to keep
        return []
    folder = folder.resolve()
    kept = []
    for d in dirs:
        d = d.resolve()
        if d != folder and folder in d.parents:
            kept.append(folder / d.relative_to(folder).parts[0])
    return kept


def overwrite_hint(folder: Path, what: str) -> str:
    return (
        f"To keep the existing run, give this one another folder (output_path=<new folder>); to replace it, add "
        f"overwrite=true ({what}). Under DVC, `dvc repro` of the stage does the latter (it removes the stage's "
        "outputs before running it)."
    )


def damaged_error(folder: Path, bad: list[Path], stale: list[Path], redo: str) -> DamagedRunError:
    names = ", ".join(str(p) for p in bad)
    listing = " ".join(str(p) for p in stale)
    return DamagedRunError(
        f"{folder} is marked finished, but {names} is missing or cut short (not a complete checkpoint); nothing "
        f"was changed. To redo {redo}: add overwrite=true (it deletes {listing} first), or delete them by hand "
        "(`rm -r " + listing + "`) and run the same command again. Under DVC, `dvc repro` of the stage redoes the "
        "whole stage (it removes the stage's outputs before running it)."
    )


def mismatch_error(folder: Path, lines: list[str], what: str, part: str) -> RunConfigMismatch:
    shown = lines[:_MAX_LISTED]
    more = f"\n  ... and {len(lines) - len(shown)} more" if len(lines) > len(shown) else ""
    return RunConfigMismatch(
        f"{folder} holds a run made with a different config ({part}; recorded in {folder / RUN_CONFIG_FILE}); "
        f"nothing was changed. Keys that differ (old → new):\n  "
        + "\n  ".join(shown)
        + more
        + "\n"
        + overwrite_hint(folder, what)
    )
