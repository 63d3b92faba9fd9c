"""Shared fixtures: tiny model configurations in plain values, and random three-view batches."""

from __future__ import annotations

from typing import Any

import pytest
import torch

LOSS_TARGETS = {
    "barlow_twins": "src.model.loss.barlow_twins.BarlowTwinsLoss",
    "mc_barlow_twins": "src.model.loss.barlow_twins.MCBarlowTwinsLoss",
    "vicreg": "src.model.loss.vicreg.VICRegLoss",
    "mc_vicreg": "src.model.loss.vicreg.MCVICRegLoss",
}

# (model name, loss) pairs the paper trains: ssl with plain losses, Bayes with MC losses.
COMBINATIONS = [
    ("ssl", "barlow_twins"),
    ("ssl", "vicreg"),
    ("ssl_bayes_h", "mc_barlow_twins"),
    ("ssl_bayes_h", "mc_vicreg"),
    ("ssl_bayes_z", "mc_barlow_twins"),
    ("ssl_bayes_z", "mc_vicreg"),
]


def loss_spec(loss: str, batch_size: int, z_dim: int) -> dict[str, Any]:
    """The composed `model.loss` node of the spec, as a dict."""
    name = loss.removeprefix("mc_")
    spec: dict[str, Any] = {"_target_": LOSS_TARGETS[loss], "_partial_": True, "name": name, "batch_size": batch_size}
    if name == "barlow_twins":
        spec["lambda_coeff"] = 5e-3
    else:
        spec.update(z_dim=z_dim, variance_coeff=25, invariance_coeff=25, covariance_coeff=1)
    spec["loss_kwargs"] = {k: v for k, v in spec.items() if not k.startswith("_")}
    return spec


def model_kwargs(
    model_name: str,
    loss: str,
    *,
    batch_size: int = 8,
    hidden_dim: int = 32,
    z_dim: int = 32,
    dataset: str = "cifar10",
    num_classes: int = 4,
    mc_samples: int = 3,
    prior: str = "standard",
    beta_scale: float = 1e-3,
    scheduler: str | None = "cosine",
    **extra: Any,
) -> dict[str, Any]:
    """Constructor arguments of a small model, shaped like `train.kwargs` of the spec."""
    kwargs: dict[str, Any] = dict(
        model_name=model_name,
        batch_size=batch_size,
        num_classes=num_classes,
        dataset=dataset,
        train_iters_per_epoch=None,
        cl_loss_name=loss.removeprefix("mc_"),
        cl_loss=loss_spec(loss, batch_size, z_dim),
        optimizer_name="adamw",
        optimizer={
            "_target_": "torch.optim.AdamW",
            "_partial_": True,
            "name": "adamw",
            "scale_lr": True,
            "lr": 1e-3,
            "weight_decay": 1e-4,
        },
        learning_rate=1e-3,
        scheduler=scheduler,
        encoder="resnet18",
        latent_dim=512,
        hidden_dim=hidden_dim,
        z_dim=z_dim,
        use_mc_samples=model_name != "ssl",
        no_grad=True,
        sch_eta_min_scale=0.01,
        compile_encoder=False,
        seed=1997,
    )
    if model_name != "ssl":
        prior_spec: dict[str, Any] = {
            "_target_": "src.model.prior.StandardPrior" if prior == "standard" else "src.model.prior.MoGPrior",
            "_partial_": True,
            "name": prior,
            "latent_dim": 512,
        }
        if prior == "mog":
            prior_spec["num_components"] = 3
        kwargs.update(
            prior_name=prior, prior=prior_spec, beta_scale=beta_scale, sigma="full_diagonal", mc_samples=mc_samples
        )
    kwargs.update(extra)
    return kwargs


def build_model(model_name: str, loss: str, **overrides: Any) -> torch.nn.Module:
    from src.task import SSL_MODELS

    return SSL_MODELS[model_name](**model_kwargs(model_name, loss, **overrides))


def three_view_batch(batch_size: int = 8, size: int = 8, channels: int = 3, num_classes: int = 4, seed: int = 0):
    """((x1, x2, x3), y) with x1, x2 noisy copies of x3 — the SSL batch layout."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, channels, size, size, generator=g)
    x1 = x + 0.3 * torch.randn(x.shape, generator=g)
    x2 = x + 0.3 * torch.randn(x.shape, generator=g)
    y = torch.randint(0, num_classes, (batch_size,), generator=g)
    return (x1, x2, x), y


@pytest.fixture
def batch():
    return three_view_batch()
