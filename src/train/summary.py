"""A few-line summary of a run's config for the screen; the full config goes to ``hydra_config.yaml``."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from src.model.loss import LOSSES
from src.utils.registry import RegistryError


def _get(cfg: DictConfig, key: str, default: Any = None) -> Any:
    """``cfg.<key>`` resolved, or ``default`` when missing or not resolvable."""
    try:
        value = OmegaConf.select(cfg, key, default=default, throw_on_missing=False)
    except Exception:  # an interpolation that does not resolve: the summary is not the place to fail
        return default
    return default if value is None else value


def _loss_name(cfg: DictConfig) -> str:
    target = _get(cfg, "model.loss._target_")
    try:
        return LOSSES.name_of_target(target)
    except RegistryError:
        return str(_get(cfg, "model.loss.name", "?"))


def config_summary(cfg: DictConfig, full_config: str | None = None) -> str:
    """Model, loss, prior, β, M, dataset, epochs and output path in a few lines.

    Args:
        cfg: the composed pipeline config (``conf/config.yaml``).
        full_config: where the full config is written, named on the last line.
    """
    model = _get(cfg, "train.name", "?")
    lines = [f"model {model} + {_loss_name(cfg)}, encoder {_get(cfg, 'model.backbone.encoder', '?')}"]
    if _get(cfg, "train.kwargs.prior") is not None or _get(cfg, "train.beta_scale") is not None:
        lines[0] += (
            f", prior {_get(cfg, 'model.prior.name', '?')}, β {_get(cfg, 'train.beta_scale', '?')}, "
            f"M {_get(cfg, 'train.mc_samples', '?')}"
        )
    epochs = f"pretrain {_get(cfg, 'train.trainer.max_epochs', '?')} epochs"
    if "finetune" in cfg:
        epochs += f", finetune {_get(cfg, 'finetune.trainer.max_epochs', '?')} epochs"
    else:
        epochs += ", no finetune"
    debug = _get(cfg, "debug")
    if debug:
        epochs += f" (debug: {', '.join(f'{k}={v}' for k, v in OmegaConf.to_container(debug).items())})"
    lines.append(
        f"data {_get(cfg, 'dataset.name', '?')} (batch {_get(cfg, 'dataset.batch_size', '?')}), {epochs}, "
        f"seed {_get(cfg, 'seed', '?')}"
    )
    output = f"output {_get(cfg, 'output_path', '?')}"
    if full_config:
        output += f" (full config: {full_config})"
    lines.append(output)
    return "\n".join(lines)
