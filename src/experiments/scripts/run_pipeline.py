r"""Pretraining (+ offline finetuning) of one SSL model, configured by Hydra.

    python src/experiments/scripts/run_pipeline.py dataset=demo \
        +model/task/ssl@train=ssl_bayes_z model/loss=mc_barlow_twins +model/task@finetune=finetune

Outputs go to ``output_path`` (see ``src/train/pipeline.py``); ``-m`` multiruns work, and a sweep
whose jobs would share ``output_path`` is refused before anything trains (``src/train/sweep.py``).
"""

from __future__ import annotations

import multiprocessing as mp

import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    # torch and Lightning load here, after Hydra has read the command line: --help stays quick
    from src.train.pipeline import run_pipeline
    from src.train.sweep import check_sweep

    check_sweep()
    run_pipeline(cfg)


if __name__ == "__main__":
    # torch.multiprocessing's set_start_method is this one (torch re-exports the standard module)
    mp.set_start_method("spawn", force=True)
    main()
