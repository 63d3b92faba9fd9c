"""The detector registry: one module per detector in this package, one config per detector in
``src/experiments/conf/ood/<name>.yaml``. A module registers its class with ``@register``;
every module of the package is imported here, so adding a detector is one file plus its config:
``--postprocessor-name all``, the reports and the registry-driven tests pick it up from
``DETECTORS`` / :func:`study_order`.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

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
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    return {
        "aps_mode": bool(cfg.get("aps_mode", False)),
        "args": cfg.get("args") or {},
        "sweep": cfg.get("sweep") or {},
    }


def build_detector(name: str, corrected_sign: bool = False, config_dir: Path | None = None) -> Detector:
    """Detector ``name`` built from its config (in ``config_dir``, default :data:`CONFIG_DIR`); an
    unknown name is a clear error."""
    DETECTORS.get(name)  # an unknown name: a RegistryError listing the known ones
    cfg = detector_config(name, config_dir)
    sweep = cfg["sweep"] if cfg["aps_mode"] else {}
    return DETECTORS[name](**cfg["args"], sweep=sweep, corrected_sign=corrected_sign)


__all__ = [
    "CONFIG_DIR",
    "DETECTORS",
    "PAPER_DETECTORS",
    "Detector",
    "NetworkDetector",
    "NotFittedError",
    "build_detector",
    "detector_config",
    "register",
    "study_order",
]
