"""Pretraining (+ offline finetuning) of one SSL model, configured by Hydra.

    python src/experiments/scripts/run_pipeline.py dataset=demo \
        +model/task/ssl@train=ssl_bayes_z model/loss=mc_barlow_twins +model/task@finetune=finetune

Outputs go to ``output_path`` (see ``src/train/pipeline.py``); ``-m`` multiruns work.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import torch.multiprocessing as mp
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from src.train.pipeline import run_pipeline


def shared_output_path_error(sweep_overrides: list[str]) -> str | None:
    """Why the jobs of a sweep with these command-line overrides would share one output folder.

    The pipeline writes to ``output_path``, which Hydra does not make per job: with several
    jobs, it must interpolate a swept key (or a job-specific value) so that each job resolves
    its own folder. None when the sweep is fine.
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
    """Refuse, in every job of a multirun, a sweep whose jobs would share ``output_path``."""
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


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    check_sweep()
    run_pipeline(cfg)


if __name__ == "__main__":
    mp.set_start_method("spawn", force=True)
    main()
