"""Every config a paper DVC stage composes, the README's Compose example, the reference's keys and the
fidelity defaults, and composition-time errors for wrong options and keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from src.task import SSL_MODELS
from src.task.checkpoint import load_ssl_model
from src.utils.plain import to_plain
from tests.conftest import model_overrides, three_view_batch

CONF = Path(__file__).resolve().parents[2] / "src" / "experiments" / "conf"
IMAGENET = [
    "dataset=imagenet",
    "dataset.num_workers=16",
    "dataset.batch_size=256",
    "model/optimizer=default_adamw",
    "train.trainer.max_epochs=100",
    "train.scheduler=cosine_warmup",
    "train.sch_eta_min_scale=0.5",
    "seed=1997",
]
BAYES = ["model/prior=standard", "train.mc_samples=12"]


def _ablation(task: str, loss: str, prior: str, beta: float, mc: int, seed: int, prefix: str) -> list[str]:
    return [
        "dataset=cifar10",
        "dataset.num_workers=16",
        "dataset.batch_size=256",
        f"+model/task/ssl@train={task}",
        f"model/loss={loss}",
        "+model/task@finetune=finetune",
        "model/optimizer=default_adamw",
        f"model/prior={prior}",
        "train.trainer.max_epochs=200",
        f"train.beta_scale={beta}",
        f"train.mc_samples={mc}",
        f"seed={seed}",
        f"output_path=data/results/ablation/cifar10/{prefix}_{prior}_beta_{beta}_mc_{mc}_seed_{seed}",
    ]


PRETRAIN_STAGES = {
    **{
        f"imagenet_ssl@{loss}": [
            *IMAGENET,
            "+model/task/ssl@train=ssl",
            f"model/loss={loss}",
            f"output_path=data/results/imagenet/ssl/ssl_{loss}",
        ]
        for loss in ("barlow_twins", "vicreg")
    },
    **{
        f"imagenet_ssl_bayes_h_barlow@{b}": [
            *IMAGENET,
            "+model/task/ssl@train=ssl_bayes_h",
            "model/loss=mc_barlow_twins",
            *BAYES,
            f"train.beta_scale={b}",
        ]
        for b in (0.001, 0.0001)
    },
    "imagenet_ssl_bayes_z_barlow": [
        *IMAGENET,
        "+model/task/ssl@train=ssl_bayes_z",
        "model/loss=mc_barlow_twins",
        *BAYES,
        "train.beta_scale=0.01",
    ],
    **{
        f"imagenet_ssl_bayes_h_vicreg@{b}": [
            *IMAGENET,
            "+model/task/ssl@train=ssl_bayes_h",
            "model/loss=mc_vicreg",
            *BAYES,
            f"train.beta_scale={b}",
        ]
        for b in (0.0001, 1e-05)
    },
    "imagenet_ssl_bayes_z_vicreg": [
        *IMAGENET,
        "+model/task/ssl@train=ssl_bayes_z",
        "model/loss=mc_vicreg",
        *BAYES,
        "train.beta_scale=0.001",
        "train.compile_encoder=true",
    ],
    "ablation_bh_barlow@mog-0.01-36-1999": _ablation(
        "ssl_bayes_h", "mc_barlow_twins", "mog", 0.01, 36, 1999, "ssl_bayes_h_barlow"
    ),
    "ablation_bz_barlow@standard-0.0001-1-1997": _ablation(
        "ssl_bayes_z", "mc_barlow_twins", "standard", 0.0001, 1, 1997, "ssl_bayes_z_barlow"
    ),
    "ablation_bh_vicreg@mog-1e-05-12-1999": _ablation(
        "ssl_bayes_h", "mc_vicreg", "mog", 1e-05, 12, 1999, "ssl_bayes_h_vicreg"
    ),
    "ablation_bz_vicreg@standard-0.001-12-1998": _ablation(
        "ssl_bayes_z", "mc_vicreg", "standard", 0.001, 12, 1998, "ssl_bayes_z_vicreg"
    ),
}


def _compose(name: str, overrides: list[str]):
    with initialize_config_dir(version_base=None, config_dir=str(CONF)):
        return compose(config_name=name, overrides=overrides)


@pytest.mark.parametrize("stage", sorted(PRETRAIN_STAGES))
def test_pretraining_stage_configs_compose(stage: str) -> None:
    cfg = _compose("config", PRETRAIN_STAGES[stage])
    kwargs = OmegaConf.to_container(cfg.train.kwargs, resolve=True)
    assert kwargs["model_name"] == cfg.train.name
    assert kwargs["batch_size"] == 256 and kwargs["cl_loss"]["batch_size"] == 256
    assert kwargs["encoder"] == "resnet18" and kwargs["latent_dim"] == 512 and kwargs["z_dim"] == 1024
    assert set(cfg.train) >= {"callbacks", "trainer", "kwargs", "name"}
    if cfg.train.name != "ssl":
        assert kwargs["mc_samples"] == cfg.train.mc_samples and kwargs["prior"]["name"] == cfg.model.prior.name
    if stage.startswith("ablation"):
        assert cfg.finetune.callbacks.early_stopping.patience == 5
        assert cfg.output_path.startswith("data/results/ablation/cifar10/ssl_bayes_")
    if stage == "ablation_bh_vicreg@mog-1e-05-12-1999":
        # floats render as Python prints them, as the DVC stage names and paths do
        assert cfg.output_path.endswith("ssl_bayes_h_vicreg_mog_beta_1e-05_mc_12_seed_1999")
        assert kwargs["cl_loss"]["z_dim"] == 1024


@pytest.mark.parametrize("pct", ["1", "10"])
def test_semi_supervised_stage_configs_compose(pct: str) -> None:
    """The reference's command (`logging.tracking_project_name` without `+`, T-Q18b, D-Q1) composes here."""
    m = "ssl_bayes_h_vicreg_beta_1e-05"
    cfg = _compose(
        "semi_supervised",
        [
            f"dataset=imagenet{pct}pct",
            "seed=1997",
            f"run_path=data/results/imagenet/ssl/{m}",
            f"output_path=data/results/imagenet/semi_supervised/imagenet{pct}pct/{m}",
            "logging.tracking_project_name=bayes-ssl",
            f'+logging.wandb_logger_kwargs.tags=["semi_supervised", "imagenet", "{pct}pct"]',
        ],
    )
    assert cfg.dataset.task == "semi_supervised"
    assert cfg.model.optimizer.lr_linear == 1e-3
    assert cfg.train.callbacks.checkpoint.monitor == "val_accuracy"
    assert list(cfg.logging.wandb_logger_kwargs.tags) == ["semi_supervised", "imagenet", f"{pct}pct"]


def test_readme_compose_example() -> None:
    """The README's Compose API example, verbatim in spirit: config `config` with the two task overrides."""
    with initialize_config_dir(version_base=None, config_dir=str(CONF)):
        cfg = compose(config_name="config", overrides=["+model/task/ssl@train=ssl", "+model/task@finetune=finetune"])
    assert set(cfg) == {
        "seed",
        "output_path",
        "model_ckpt_path",
        "finetuner_ckpt_path",
        "continue_on_non_finite_loss",
        "overwrite",
        "dataset",
        "model",
        "logging",
        "train",
        "finetune",
    }
    assert set(cfg.model) == {"optimizer", "loss", "backbone", "prior"}
    assert cfg.train.name == "ssl" and cfg.finetune.finetune_model == "simple_mlp"
    assert cfg.train.trainer.precision == "16-mixed" and cfg.finetune.trainer.max_epochs == 50
    assert OmegaConf.to_container(cfg.model.optimizer, resolve=True) == {
        "_target_": "torch.optim.AdamW",
        "_partial_": True,
        "name": "adamw",
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "scale_lr": True,
    }
    assert cfg.output_path == "data/results/cifar10/ssl/barlow_twins"


@pytest.mark.parametrize("loss", ["barlow_twins", "mc_barlow_twins", "vicreg", "mc_vicreg"])
def test_loss_configs_keep_the_reference_keys_and_the_per_device_default(loss: str) -> None:
    """The informational leaf is `loss_kwargs.loss` as in the reference (T-Q3), so a user's override of the
    reference key composes; the loss is the reference's per-device one unless asked for (T-Q27)."""
    family = loss.removeprefix("mc_")
    cfg = _compose("config", [f"model/loss={loss}", f"model.loss.loss_kwargs.loss={family}_override"])
    assert cfg.model.loss.loss_kwargs.loss == f"{family}_override" and cfg.model.loss.name == family
    assert "name" not in cfg.model.loss.loss_kwargs
    assert cfg.model.loss.gather_distributed is False
    assert _compose(
        "config", [f"model/loss={loss}", "model.loss.gather_distributed=true"]
    ).model.loss.gather_distributed


def test_fidelity_switches_default_to_the_reference() -> None:
    """A non-finite loss stops the run unless continue_on_non_finite_loss=true (the reference kept training)."""
    for name in ("config", "semi_supervised"):
        assert _compose(name, []).continue_on_non_finite_loss is False
        assert _compose(name, ["continue_on_non_finite_loss=true"]).continue_on_non_finite_loss is True
        # a rerun into a folder of another config stops unless asked to replace it
        assert _compose(name, []).overwrite is False


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["+model/task/ssl@train=ssl", "model/loss=simclr"], "simclr"),
        (["+model/task/ssl@train=ssl_bayes"], "ssl_bayes"),
        (["+model/task/ssl@train=ssl", "train.mc_sample=3"], "train.mc_sample"),
        (["+model/task/ssl@train=ssl", "dataset.batchsize=3"], "dataset.batchsize"),
        (["dataset=cifar11"], "cifar11"),
    ],
)
def test_wrong_options_and_keys_fail_at_compose_time(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigCompositionException, match=match):
        _compose("config", overrides)


@pytest.mark.parametrize("path", sorted((CONF / "linear_probing").glob("*.yaml")), ids=lambda p: p.stem)
def test_linear_probing_configs(path: Path) -> None:
    cfg = OmegaConf.load(path)
    assert cfg.optim_kwargs.lr == 0.01 and cfg.optim_kwargs.weight_decay == 0.0005  # floats, not strings
    assert cfg.seed == 1537 and cfg.norm_repr is True and cfg.scheduler_kwargs.gamma == 0.1
    expected = {
        "SUN397": (397, 50, [16, 32, 48], 256),
        "flowers-102": (102, 80, [25, 50, 75], 128),
        "imagenet": (1000, 100, [30, 60, 90], 512),
        "demo": (8, 20, [8, 16], 64),
    }[cfg.dataset]
    assert (cfg.num_classes, cfg.max_epochs, list(cfg.scheduler_kwargs.milestones), cfg.batch_size) == expected


@pytest.mark.slow
def test_readme_compose_snippet_runs_verbatim() -> None:
    """The README's Compose example, extracted and run from the repository root."""
    import re
    import subprocess
    import sys

    root = CONF.parents[2]
    text = (root / "README.md").read_text()
    block = re.search(r"<!-- compose-example -->\s*```python\n(.*?)```", text, re.S)
    assert block, "README.md lost its <!-- compose-example --> block"
    proc = subprocess.run([sys.executable, "-c", block.group(1)], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["barlow_twins", "50", "data/results/cifar10/ssl/barlow_twins"]


@pytest.mark.parametrize(
    ("model_name", "loss"), [("ssl", "vicreg"), ("ssl_bayes_h", "mc_barlow_twins"), ("ssl_bayes_z", "mc_vicreg")]
)
def test_timm_backbone_composes_and_trains_a_step(model_name: str, loss: str, tmp_path: Path) -> None:
    """model/backbone=timm with a tiny timm model (test_resnet, 96 features): L follows the model's width,
    one optimizer step runs, and the checkpoint's plain hyper-parameters rebuild the model."""
    pytest.importorskip("timm")
    overrides = [*model_overrides(model_name, loss), "model/backbone=timm", "model.backbone.name=test_resnet"]
    cfg = _compose("config", overrides)
    kwargs = to_plain(cfg.train.kwargs)
    kwargs.pop("_target_")
    assert kwargs["encoder"] == "timm/test_resnet" and kwargs["encoder_kwargs"] == {}
    assert kwargs["latent_dim"] is None  # resolved by the model
    torch.manual_seed(0)
    model = SSL_MODELS[model_name](**kwargs)
    assert model.encoder_out_dim == 96 and model.hparams["latent_dim"] == 96
    if model_name == "ssl_bayes_h":
        assert model.stochastic_dim() == 96  # the Gaussian over h has the encoder's width (T-Q8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    before = [p.detach().clone() for p in model.encoder.parameters()]
    out = model.shared_step(three_view_batch(batch_size=8, size=16))
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.encoder.parameters(), strict=True))
    # a checkpoint of plain values rebuilds the same timm model
    path = tmp_path / "model.ckpt"
    torch.save({"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}, path)
    again = load_ssl_model(path, model_name)
    assert again.hparams["encoder"] == "timm/test_resnet" and again.encoder_out_dim == 96
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_timm_backbone_errors() -> None:
    pytest.importorskip("timm")
    overrides = [*model_overrides("ssl_bayes_h", "mc_barlow_twins"), "model/backbone=timm"]
    kwargs = to_plain(_compose("config", [*overrides, "model.backbone.name=resnet_18"]).train.kwargs)
    kwargs.pop("_target_")
    with pytest.raises(ValueError, match=r"model.backbone.name='resnet_18' is not a timm .*resnet18"):
        SSL_MODELS["ssl_bayes_h"](**kwargs)
    # an explicit latent_dim that is not the model's width: Bayes-H refuses it (T-Q8)
    kwargs = to_plain(
        _compose("config", [*overrides, "model.backbone.name=test_resnet", "model.backbone.latent_dim=64"]).train.kwargs
    )
    kwargs.pop("_target_")
    with pytest.raises(ValueError, match=r"latent_dim == the encoder output width \(96 for timm/test_resnet\)"):
        SSL_MODELS["ssl_bayes_h"](**kwargs)
