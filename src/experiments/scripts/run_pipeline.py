"""Pretraining (+ offline finetuning) of one SSL model, configured by Hydra.

    python src/experiments/scripts/run_pipeline.py dataset=demo \
        +model/task/ssl@train=ssl_bayes_z model/loss=mc_barlow_twins +model/task@finetune=finetune

Outputs go to ``output_path`` (see ``src/train/pipeline.py``); ``-m`` multiruns work, and a sweep
whose jobs would share ``output_path`` is refused before anything trains (``src/train/sweep.py``).
"""

from __future__ import annotations

import hydra
import torch.multiprocessing as mp
from omegaconf import DictConfig

from src.train.pipeline import run_pipeline
from src.train.sweep import check_sweep


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    check_sweep()
    run_pipeline(cfg)


if __name__ == "__main__":
    mp.set_start_method("spawn", force=True)
    main()
