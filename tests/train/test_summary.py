"""The few lines a run prints about its config (the full config goes to ``hydra_config.yaml``)."""

from __future__ import annotations

from src.train.summary import config_summary
from tests.conftest import compose_config


def test_summary_of_a_stochastic_model_names_prior_beta_and_mc_samples() -> None:
    cfg = compose_config(
        "dataset=demo",
        "+model/task/ssl@train=ssl_bayes_z",
        "model/loss=mc_vicreg",
        "model/prior=mog",
        "+model/task@finetune=finetune",
        "train.beta_scale=0.01",
        "train.mc_samples=4",
        "train.trainer.max_epochs=7",
        "finetune.trainer.max_epochs=3",
        "output_path=out/run",
    )
    assert config_summary(cfg, "out/run/hydra_config.yaml").splitlines() == [
        "model ssl_bayes_z + mc_vicreg, encoder resnet18, prior mog, β 0.01, M 4",
        "data demo (batch 64), pretrain 7 epochs, finetune 3 epochs, seed 1997",
        "output out/run (full config: out/run/hydra_config.yaml)",
    ]


def test_summary_of_a_deterministic_model_without_finetune() -> None:
    cfg = compose_config("+model/task/ssl@train=ssl", "model/loss=barlow_twins", "debug=default")
    lines = config_summary(cfg).splitlines()
    assert lines[0] == "model ssl + barlow_twins, encoder resnet18"
    assert lines[1].startswith(
        "data cifar10 (batch 256), pretrain 200 epochs, no finetune (debug: max_epochs=1, limit_train_batches=2"
    )
    assert lines[2] == "output data/results/cifar10/ssl/barlow_twins"
