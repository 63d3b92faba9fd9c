"""Hydra sweeps of the pipeline: refuse, before any job trains, a sweep whose jobs would share one folder.

The pipeline writes to ``output_path``, which Hydra does not make per job. In a multirun (``-m``)
with several jobs, ``output_path`` must therefore interpolate a swept key (or be swept itself), so
that each job resolves its own folder; otherwise the jobs would overwrite each other or skip as
finished.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import OmegaConf


def shared_output_path_error(sweep_overrides: list[str]) -> str | None:
    """Why the jobs of a sweep with these command-line overrides would share one output folder.

    None when the sweep is fine: no swept key, ``output_path`` swept itself, or ``output_path``
    interpolating a value (``${...}``) that each job resolves on its own.
    """
    parsed = OverridesParser.create().parse_overrides(sweep_overrides)
    swept = [o.key_or_group for o in parsed if o.is_sweep_override()]
    if not swept:
        return None
    output = next((o for o in parsed if o.key_or_group == "output_path"), None)
    if output is not None and not output.is_sweep_override() and "${" in str(output.value()):
        return None
    if output is not None and output.is_sweep_override():
        return None
    where = "the default output_path" if output is None else f"output_path={output.value()}"
    return (
        f"this sweep over {', '.join(swept)} would write every job to {where}, so the jobs would overwrite "
        "each other (or skip as finished); put the swept keys into output_path, e.g. "
        f"'output_path=data/results/sweep/{swept[0].replace('/', '_')}_${{{swept[0]}}}' "
        "(quoted, so that the shell leaves ${...} alone)"
    )


def check_sweep() -> None:
    """Inside a Hydra app: refuse, in every job of a multirun, a sweep whose jobs would share ``output_path``.

    Raises:
        ValueError: the sweep would write every job into one folder (the message says how to fix it).
    """
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return
    multirun = Path(hydra_cfg.sweep.dir) / "multirun.yaml"
    if not multirun.is_file():
        return
    # unresolved: an override such as output_path=<dir>_${train.beta_scale} must stay as typed
    overrides = OmegaConf.to_container(OmegaConf.load(multirun).hydra.overrides.task, resolve=False)
    error = shared_output_path_error(overrides)
    if error:
        raise ValueError(error)
