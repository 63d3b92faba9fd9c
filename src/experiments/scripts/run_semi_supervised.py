r"""Semi-supervised finetuning of a pretrained run on ImageNet 1 % / 10 %, configured by Hydra.

The DVC stage command, e.g.:

    python src/experiments/scripts/run_semi_supervised.py dataset=imagenet1pct seed=1997 \
        run_path=data/results/imagenet/ssl/ssl_barlow_twins \
        output_path=data/results/imagenet/semi_supervised/imagenet1pct/ssl_barlow_twins \
        logging.tracking_project_name=bayes-ssl \
        '+logging.wandb_logger_kwargs.tags=["semi_supervised", "imagenet", "1pct"]'

With wandb off (the default) the wandb options are ignored with a warning (T-Q18b, D-Q1). Outputs
go to ``output_path`` (see ``src/train/semi_supervised.py``).
"""

from __future__ import annotations

import multiprocessing as mp

import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="../conf", config_name="semi_supervised")
def main(cfg: DictConfig) -> None:
    # torch and Lightning load here, after Hydra has read the command line: --help stays quick
    from src.train.semi_supervised import run_semi_supervised

    run_semi_supervised(cfg)


if __name__ == "__main__":
    # spawned DataLoader workers, as the reference (slow ImageNet loading with forked workers)
    mp.set_start_method("spawn", force=True)
    main()
