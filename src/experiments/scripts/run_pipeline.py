"""Pretraining (+ offline finetuning) of one SSL model, configured by Hydra.

    python src/experiments/scripts/run_pipeline.py dataset=demo \
        +model/task/ssl@train=ssl_bayes_z model/loss=mc_barlow_twins +model/task@finetune=finetune

Outputs go to ``output_path`` (see ``src/experiments/pipeline.py``); ``-m`` multiruns work.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:  # runnable as a plain script from the repository root
    sys.path.insert(0, str(ROOT))

import hydra  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from src.experiments.pipeline import run_pipeline  # noqa: E402


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_pipeline(cfg)


if __name__ == "__main__":
    mp.set_start_method("spawn", force=True)
    main()
