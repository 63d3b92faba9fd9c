"""Shared fixtures: the real Hydra config, composed and shrunk, and random three-view batches.

:func:`model_kwargs` composes ``src/experiments/conf`` (``config_name="config"``) with
``+model/task/ssl@train=<model>``, ``model/loss=<loss>``, ``model/prior=<prior>`` and small overrides
(batch, widths, MC samples), and returns ``train.kwargs`` as plain values, what the pipeline hands the
model. Every composition is cached, so each combination is composed once per test session.

:data:`COMBINATIONS` and :func:`model_combinations` come from the registries: every registered model
with every loss it accepts (and every prior, for the stochastic models), so a new plug-in is tested by
registering it (and adding its config file, under the same name).

Torch runs one intra-op thread in the test process: the tensors here are tiny, and on a machine whose
cores are shared, OpenMP threads waiting for each other cost several times the work itself
(``TEST_TORCH_THREADS`` overrides it).
"""

from __future__ import annotations

import copy
import functools
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import src.task  # registers every SSL model
from src.model.loss import LOSSES
from src.model.prior import PRIORS
from src.utils.plain import to_plain

torch.set_num_threads(int(os.environ.get("TEST_TORCH_THREADS", "1")))

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "src" / "experiments" / "conf"
#: the ``dataset`` config options (other dataset names are set as ``dataset.name`` on CIFAR-10's config)
DATASET_OPTIONS = frozenset(p.stem for p in (CONF / "dataset").glob("*.yaml"))


@functools.cache
def _composed(config_name: str, overrides: tuple[str, ...]) -> DictConfig:
    with initialize_config_dir(version_base=None, config_dir=str(CONF)):
        return compose(config_name=config_name, overrides=list(overrides))


def compose_config(*overrides: str, config_name: str = "config") -> DictConfig:
    """The composed config (a private copy; compositions are cached by their overrides)."""
    return copy.deepcopy(_composed(config_name, tuple(overrides)))


def model_combinations(priors: bool = False) -> list[tuple[str, ...]]:
    """(model, loss) for every registered SSL model and every registered loss it accepts; with
    ``priors``, (model, loss, prior) with every registered prior for the stochastic models (the
    deterministic model has none: its entries carry the default ``standard``, unused)."""
    out: list[tuple[str, ...]] = []
    for model_name, cls in src.task.SSL_MODELS.items():
        for loss, loss_cls in LOSSES.items():
            if not cls.accepts_loss(loss_cls):
                continue
            if not priors:
                out.append((model_name, loss))
            elif cls.stochastic_space is None:
                out.append((model_name, loss, "standard"))
            else:
                out.extend((model_name, loss, prior) for prior in PRIORS)
    return out


#: (model name, loss) pairs: ssl with the plain losses, the Bayes models with the MC losses
COMBINATIONS = model_combinations()


def _value(v: Any) -> str:
    """A Python value as a Hydra override value."""
    if v is None:
        return "null"
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return repr(v) if isinstance(v, float) else str(v)


def model_overrides(
    model_name: str,
    loss: str,
    *,
    batch_size: int = 8,
    hidden_dim: int = 32,
    z_dim: int = 32,
    dataset: str = "cifar10",
    num_classes: int = 4,
    mc_samples: Any = 3,
    prior: str = "standard",
    beta_scale: Any = 1e-3,
    scheduler: str | None = "cosine",
) -> list[str]:
    """The Hydra overrides that select and shrink one model configuration."""
    overrides = [f"dataset={dataset}"] if dataset in DATASET_OPTIONS else [f"dataset.name={dataset}"]
    overrides += [
        f"+model/task/ssl@train={model_name}",
        f"model/loss={loss}",
        f"model/prior={prior}",
        f"dataset.batch_size={batch_size}",
        f"dataset.num_classes={num_classes}",
        f"model.backbone.hidden_dim={hidden_dim}",
        f"model.backbone.z_dim={z_dim}",
        f"train.scheduler={_value(scheduler)}",
    ]
    if model_name != "ssl":
        overrides += [f"train.mc_samples={_value(mc_samples)}", f"train.beta_scale={_value(beta_scale)}"]
    if prior == "mog":
        overrides.append("model.prior.num_components=3")
    return overrides


@functools.cache
def _model_kwargs(overrides: tuple[str, ...]) -> dict[str, Any]:
    cfg = _composed("config", overrides)
    kwargs = to_plain(cfg.train.kwargs)
    kwargs.pop("_target_")
    kwargs["seed"] = int(cfg.seed)  # the pipeline adds it too
    return kwargs


def model_kwargs(model_name: str, loss: str, **options: Any) -> dict[str, Any]:
    """Constructor arguments of a small model: ``train.kwargs`` of the composed config, as plain values.

    Keyword arguments: ``batch_size`` (8), ``hidden_dim`` (32), ``z_dim`` (32), ``dataset`` (cifar10),
    ``num_classes`` (4), ``mc_samples`` (3), ``prior`` (standard; ``mog`` with 3 components),
    ``beta_scale`` (1e-3) and ``scheduler`` (cosine) go into the composition; any other keyword
    replaces that constructor argument afterwards (e.g. ``compile_encoder=True``).
    """
    names = ("batch_size", "hidden_dim", "z_dim", "dataset", "num_classes", "mc_samples", "prior", "beta_scale")
    composed = {k: options.pop(k) for k in (*names, "scheduler") if k in options}
    kwargs = copy.deepcopy(_model_kwargs(tuple(model_overrides(model_name, loss, **composed))))
    kwargs.update(options)
    return kwargs


def build_model(model_name: str, loss: str, **overrides: Any) -> torch.nn.Module:
    """A small SSL model of the registry (see :func:`model_kwargs`)."""
    return src.task.SSL_MODELS[model_name](**model_kwargs(model_name, loss, **overrides))


def three_view_batch(batch_size: int = 8, size: int = 8, channels: int = 3, num_classes: int = 4, seed: int = 0):
    """((x1, x2, x3), y) with x1, x2 noisy copies of x3 — the SSL batch layout."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, channels, size, size, generator=g)
    x1 = x + 0.3 * torch.randn(x.shape, generator=g)
    x2 = x + 0.3 * torch.randn(x.shape, generator=g)
    y = torch.randint(0, num_classes, (batch_size,), generator=g)
    return (x1, x2, x), y


@pytest.fixture
def batch():
    return three_view_batch()
