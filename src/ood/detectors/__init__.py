"""The detector registry: one module per detector in this package, one config per detector in
``src/experiments/conf/ood/<name>.yaml``. A module registers its class with ``@register``;
every module of the package is imported here, so adding a detector is one file plus its config:
``--postprocessor-name all``, the reports and the registry-driven tests pick it up from
``DETECTORS`` / :func:`study_order`.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path
from typing import Any

from src.ood.detectors.base import Detector, NetworkDetector, NotFittedError
from src.utils.registry import Registry

#: every detector by name (``--postprocessor-name``), in registration order
DETECTORS: Registry[type[Detector]] = Registry("detector", config_key="--postprocessor-name")
#: where the detectors' configs live (APS mode, arguments, sweep)
CONFIG_DIR = Path(__file__).resolve().parents[2] / "experiments" / "conf" / "ood"
#: the paper's nine detectors, in the reference's study order (a fixed set: the paper's stages)
PAPER_DETECTORS = ("msp", "mds", "sigmamean", "logpprior", "umds", "gram", "odin", "kldivsimk", "edsimk")


def register(cls: type[Detector]) -> type[Detector]:
    """Class decorator: add ``cls`` to ``DETECTORS`` under ``cls.name``."""
    return DETECTORS.add(cls.name, cls)


for _module in pkgutil.iter_modules([str(Path(__file__).parent)]):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")


def study_order() -> list[str]:
    """Every registered detector: the paper's nine in the reference's order, then the others by name.

    ``--postprocessor-name all`` and the reports iterate this, so a registered detector joins them.
    """
    return [*(n for n in PAPER_DETECTORS if n in DETECTORS), *sorted(n for n in DETECTORS if n not in PAPER_DETECTORS)]


def detector_config(name: str, config_dir: Path | None = None) -> dict[str, Any]:
    """``{"aps_mode": bool, "args": {...}, "sweep": {...}}`` of detector ``name``, read from
    ``<config_dir>/<name>.yaml`` (default :data:`CONFIG_DIR`)."""
    path = (CONFIG_DIR if config_dir is None else Path(config_dir)) / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"detector {name!r} has no config {path}")
    from omegaconf import OmegaConf  # lazily: the detectors themselves (and the benchmarks) need no OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    return {
        "aps_mode": bool(cfg.get("aps_mode", False)),
        "args": cfg.get("args") or {},
        "sweep": cfg.get("sweep") or {},
    }


def hyperparam_names(name: str, config_dir: Path | None = None) -> tuple[list[str], list[str]]:
    """(searched, constructor) hyper-parameter names of detector ``name``: the sweep keys of its config
    (``K_list`` → ``K``; empty without ``aps_mode``) and its constructor's keyword arguments."""
    cfg = detector_config(name, config_dir)
    searched = [key.removesuffix("_list") for key in cfg["sweep"]] if cfg["aps_mode"] else []
    params = inspect.signature(DETECTORS[name].__init__).parameters.values()
    skip = {"self", "sweep", "corrected_sign"}
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    constructor = [p.name for p in params if p.name not in skip and p.kind in kinds]
    return searched, constructor


def fixed_hyperparams(
    hyperparam: dict[str, Any], detectors: list[str], config_dir: Path | None = None
) -> dict[str, dict[str, Any]]:
    """``--hyperparam`` values per detector of a study: ``{detector: {name: value}}``.

    A key is ``NAME`` (for every detector of the study that has it) or ``DETECTOR.NAME`` (for that
    detector only). A name is one of the detector's searched hyper-parameters (a sweep key without
    ``_list``) or one of its constructor's arguments.

    Raises:
        ValueError: a name no detector of the study has, or a detector not in the study; the message
            lists what each detector accepts.
    """
    if not hyperparam:
        return {d: {} for d in detectors}
    names = {d: hyperparam_names(d, config_dir) for d in detectors}

    def known(d: str) -> str:
        searched, constructor = names[d]
        return f"{d}: searched {', '.join(searched) or '(none)'}; constructor {', '.join(constructor) or '(none)'}"

    out: dict[str, dict[str, Any]] = {d: {} for d in detectors}
    for key, value in hyperparam.items():
        detector, _, name = key.rpartition(".")
        if detector and detector not in names:
            raise ValueError(
                f"--hyperparam {key}={value!r}: detector {detector!r} is not in this study ({', '.join(detectors)})"
            )
        targets = [detector] if detector else detectors
        hits = [d for d in targets if name in names[d][0] or name in names[d][1]]
        if not hits:
            raise ValueError(
                f"--hyperparam {key}={value!r}: no hyper-parameter {name!r} in "
                + "; ".join(known(d) for d in targets)
                + ". Use one of those names (DETECTOR.NAME picks one detector)"
            )
        for d in hits:
            out[d][name] = value
    return out


def build_detector(
    name: str, corrected_sign: bool = False, config_dir: Path | None = None, hyperparam: dict[str, Any] | None = None
) -> Detector:
    """Detector ``name`` built from its config (in ``config_dir``, default :data:`CONFIG_DIR`); an
    unknown name is a clear error.

    ``hyperparam`` fixes hyper-parameters (``{name: value}``, see :func:`fixed_hyperparams`): a
    searched one narrows its sweep to that value (and sets the constructor argument of the same
    name); when every searched one is fixed, ``fixed_hyperparam`` holds the candidate and the study
    skips the search. Any other name overrides the config's constructor argument.

    Raises:
        ValueError: a name the detector does not have, or a value its constructor rejects.
    """
    DETECTORS.get(name)  # an unknown name: a RegistryError listing the known ones
    cfg = detector_config(name, config_dir)
    args = dict(cfg["args"])
    sweep = dict(cfg["sweep"]) if cfg["aps_mode"] else {}
    fixed = dict(hyperparam or {})
    if not fixed:
        return DETECTORS[name](**args, sweep=sweep, corrected_sign=corrected_sign)
    fixed_hyperparams(fixed, [name], config_dir)  # unknown names: the error listing the known ones
    searched, constructor = hyperparam_names(name, config_dir)
    sweep_key = {key.removesuffix("_list"): key for key in sweep}
    for key, value in fixed.items():
        if key in sweep_key:
            sweep[sweep_key[key]] = [value]
        if key in constructor:
            args[key] = value
    try:
        detector = DETECTORS[name](**args, sweep=sweep, corrected_sign=corrected_sign)
    except (TypeError, ValueError) as err:
        raise ValueError(f"--hyperparam {fixed}: detector {name!r} rejects these values: {err}") from err
    if sweep and all(key in fixed for key in searched):
        detector.fixed_hyperparam = [values[0] for values in sweep.values()]
    return detector


__all__ = [
    "CONFIG_DIR",
    "DETECTORS",
    "PAPER_DETECTORS",
    "Detector",
    "NetworkDetector",
    "NotFittedError",
    "build_detector",
    "detector_config",
    "fixed_hyperparams",
    "hyperparam_names",
    "register",
    "study_order",
]
