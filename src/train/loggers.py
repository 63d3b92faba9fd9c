"""Experiment loggers from the ``logging`` config node.

CSV is on by default; TensorBoard and wandb on request. Each logger writes under the phase's folder
(``<output_path>`` for pretraining, ``<output_path>/finetune`` for the finetune).

wandb: one pipeline is one wandb *group* (``group=<run id>``, the id in ``results.json``'s metadata),
its pretraining and finetune are two runs of it with ``job_type="pretrain"`` / ``"finetune"``
(``semi_supervised`` for that stage). Files go to ``<phase folder>/wandb/`` (wandb's own layout below
it: ``offline-run-<date>-<id>/``, ``latest-run``). The mode, first match wins:

1. ``logging.wandb_logger_kwargs.mode`` (``online``, ``offline``, ``disabled``; the older
   ``wandb_logger_kwargs.offline: true/false`` means ``offline``/``online``);
2. the ``WANDB_MODE`` environment variable;
3. ``offline``: no run needs network; ``wandb sync <phase folder>/wandb/offline-run-*`` uploads later.

Credentials are wandb's business (``WANDB_API_KEY``, ``wandb login``): they are never read here.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger

from src.utils.registry import Registry

log = logging.getLogger(__name__)

_WANDB_ONLY = ("tracking_project_name", "wandb_entity", "wandb_logger_kwargs")
#: wandb's older names of its modes, mapped to the current ones (wandb warns about the old ones)
_WANDB_MODE_ALIASES = {"dryrun": "offline", "run": "online"}


def wandb_mode(logger_kwargs: Mapping[str, Any]) -> tuple[str, str]:
    """(mode, where it came from): the config's ``mode`` (or legacy ``offline``), else ``WANDB_MODE``, else offline.

    Raises:
        ValueError: a mode wandb does not know.
    """
    if logger_kwargs.get("mode") is not None:
        mode, source = str(logger_kwargs["mode"]), "logging.wandb_logger_kwargs.mode"
    elif logger_kwargs.get("offline") is not None:
        mode, source = ("offline" if logger_kwargs["offline"] else "online"), "logging.wandb_logger_kwargs.offline"
    elif os.environ.get("WANDB_MODE"):
        mode, source = os.environ["WANDB_MODE"], "WANDB_MODE"
    else:
        mode, source = "offline", "default"
    mode = _WANDB_MODE_ALIASES.get(mode, mode)
    if mode not in ("online", "offline", "disabled", "shared"):
        raise ValueError(f"wandb mode {mode!r} (from {source}) is not one of online, offline, disabled, shared")
    return mode, source


#: the experiment loggers by their flag in the ``logging`` node, in the reference's order (TensorBoard,
#: wandb, CSV); each is ``builder(logging_cfg, root, run_name, group=..., job_type=...) -> Logger`` (``group``
#: and ``job_type`` name the pipeline and the phase; loggers without such a notion ignore them). A new logger
#: is one registration here and one flag in ``conf/logging/default.yaml``.
LOGGERS: Registry[Callable[..., Logger]] = Registry("logger", config_key="logging")
#: the flags that are on when the ``logging`` node does not set them
ON_BY_DEFAULT = frozenset({"csv"})


@LOGGERS.register("tensorboard")
def _tensorboard(cfg: dict[str, Any], root: Path, run_name: str | None, **_: Any) -> Logger:
    return TensorBoardLogger(save_dir=str(root / "tensorboard"), name=run_name)


@LOGGERS.register("wandb")
def _wandb(
    cfg: dict[str, Any], root: Path, run_name: str | None, group: str | None = None, job_type: str | None = None
) -> Logger:
    from pytorch_lightning.loggers import WandbLogger

    kwargs = dict(cfg.get("wandb_logger_kwargs") or {})
    mode, source = wandb_mode(kwargs)
    # Lightning's own `offline=True` would set WANDB_MODE=dryrun (deprecated) for the whole process
    kwargs.pop("offline", None)
    kwargs["mode"] = mode
    kwargs.setdefault("group", group)
    kwargs.setdefault("job_type", job_type)
    name = run_name or ("-".join(p for p in (group, job_type) if p) or None)
    kwargs.setdefault("name", name)
    log.info("wandb: %s (%s), files in %s", mode, source, root / "wandb")
    root.mkdir(parents=True, exist_ok=True)
    # wandb.init(dir=D) writes to D/wandb/: D is the phase folder, so the files land in <root>/wandb/
    return WandbLogger(
        save_dir=str(root),
        project=cfg.get("tracking_project_name") or "lightning_logs",
        entity=cfg.get("wandb_entity"),
        **kwargs,
    )


@LOGGERS.register("csv")
def _csv(cfg: dict[str, Any], root: Path, run_name: str | None, **_: Any) -> Logger:
    return CSVLogger(save_dir=str(root / "csv"), name=run_name or "lightning_logs")


def get_lightning_loggers(
    logging_cfg: Mapping[str, Any],
    root: str | Path,
    run_name: str | None = None,
    group: str | None = None,
    job_type: str | None = None,
) -> list[Logger]:
    """Loggers rooted at ``root`` for every flag of ``logging_cfg`` that is on, in the reference's order.

    ``group`` (the pipeline's run id) and ``job_type`` (``pretrain``, ``finetune``, ...) group the phases
    of one pipeline in wandb.

    wandb-specific options with wandb off are ignored with a warning (the reference raised,
    which made its semi-supervised commands fail; T-Q18b, D-Q1).
    """
    root = Path(root)
    cfg = dict(logging_cfg or {})
    if not cfg.get("wandb", False):
        set_keys = [k for k in _WANDB_ONLY if cfg.get(k)]
        if set_keys:
            log.warning("logging.%s is set but logging.wandb is false: ignored", ", logging.".join(set_keys))
    return [
        build(cfg, root, run_name, group=group, job_type=job_type)
        for name, build in LOGGERS.items()
        if cfg.get(name, name in ON_BY_DEFAULT)
    ]


@contextlib.contextmanager
def wandb_session(logging_cfg: Mapping[str, Any] | None) -> Iterator[None]:
    """Run a stage or phase; afterwards, however it ended, close the wandb run when wandb is on (``wandb.finish``).

    Each phase of a pipeline runs in its own session, so the finetune gets its own wandb run (Lightning's
    ``WandbLogger`` would otherwise reuse the run still open in the process)."""
    try:
        yield
    finally:
        if (logging_cfg or {}).get("wandb", False):
            import wandb

            wandb.finish()
