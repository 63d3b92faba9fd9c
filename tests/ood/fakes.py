"""Small networks and in-memory protocol splits for the OOD tests (not a test module)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from src.ood.features import Batch, Features, FeatureStore, Loader
from src.ood.wrapper import OODNetwork
from tests.conftest import build_model

CIFAR_STD = (0.2470, 0.2435, 0.2616)
NUM_CLASSES = 4
#: the three model variants with a loss each (the Bayes ones with their MC losses)
MODELS = {"ssl": "barlow_twins", "ssl_bayes_h": "mc_barlow_twins", "ssl_bayes_z": "mc_vicreg"}
#: demo runs of the study tests (run folder, model name, loss): one per model variant
DEMO_RUNS = [
    ("ssl_barlow", "ssl", "barlow_twins"),
    ("ssl_bayes_h_barlow_seed_1", "ssl_bayes_h", "mc_barlow_twins"),
    ("ssl_bayes_z_vicreg_seed_1", "ssl_bayes_z", "mc_vicreg"),
]
#: the lists of a protocol: (split, size); OOD lists carry label -1
SPLITS = {"id/train": 64, "id/val": 12, "ood/val": 12, "id/test": 20, "ood/near/shifted": 10, "ood/far/noise": 18}


def tiny_network(model_name: str, seed: int = 0, prior: str = "standard", num_classes: int = NUM_CLASSES) -> OODNetwork:
    """A freshly initialised ResNet-18 SSL model (8×8 inputs work) with a linear predictor, in eval mode."""
    torch.manual_seed(seed)
    model = build_model(model_name, MODELS[model_name], num_classes=num_classes, prior=prior)
    return OODNetwork(model, nn.Linear(512, num_classes), input_std=CIFAR_STD).eval()


def images(n: int, seed: int, shape: tuple[int, ...] = (3, 8, 8), dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


class InMemoryProtocol:
    """Fixed images per split; a :data:`~src.ood.features.Loader` over them.

    ``default`` batches are the images; ``barlowtwins`` batches are ``[v1, v2, v3]`` with v3 the
    images and, with ``augmented_views``, v1/v2 noisy copies drawn from the global RNG on every
    read (like random augmentations); without, ``[v3, v3, v3]`` (the study's plain-view loader).
    Every read returns new tensor objects, as a DataLoader would. ``near``, ``far`` and
    ``input_std`` make it a stand-in for a :class:`~src.ood.protocol.Protocol` in ``evaluate``.
    """

    def __init__(self, splits: dict[str, int] | None = None, batch_size: int = 8, seed: int = 0) -> None:
        self.batch_size = batch_size
        self.data: dict[str, tuple[Tensor, Tensor]] = {}
        for i, (name, n) in enumerate((splits or SPLITS).items()):
            x = images(n, seed + i)
            if name.startswith("ood/"):
                # half enlarged, half shrunk: every detector ranks some above and some below the ID images
                x = x * torch.where(torch.arange(n) % 2 == 0, 1.5, 0.7).view(-1, 1, 1, 1)
                y = torch.full((n,), -1, dtype=torch.long)
            else:
                y = torch.arange(n) % NUM_CLASSES
            self.data[name] = (x, y)
        self.reads: list[tuple[str, str, bool]] = []
        self.near = {k.split("/")[-1]: k for k in self.data if k.startswith("ood/near/")}
        self.far = {k.split("/")[-1]: k for k in self.data if k.startswith("ood/far/")}

    def input_std(self, kind: str) -> tuple[float, ...]:
        return CIFAR_STD if kind == "default" else (0.5, 0.5, 0.5)

    def __call__(self, split: str, kind: str, augmented_views: bool) -> list[Batch]:
        self.reads.append((split, kind, augmented_views))
        x, y = self.data[split]
        out: list[Batch] = []
        for i in range(0, x.shape[0], self.batch_size):
            xb, yb = x[i : i + self.batch_size].clone(), y[i : i + self.batch_size].clone()
            if kind == "default":
                out.append((xb, yb))
            elif augmented_views:
                out.append(([xb + 0.3 * torch.randn_like(xb), xb + 0.3 * torch.randn_like(xb), xb], yb))
            else:
                out.append(([xb, xb, xb], yb))
        return out

    @property
    def loader(self) -> Loader:
        return self


def store_for(net: OODNetwork, detectors: Iterable[object], protocol: InMemoryProtocol | None = None) -> FeatureStore:
    """A feature store over an in-memory protocol for ``detectors``."""
    return FeatureStore.for_detectors(net, protocol or InMemoryProtocol(), detectors)


def features(logits: Tensor, **fields: Tensor | None) -> Features:
    """A :class:`Features` from plain tensors (``space`` "H" when a posterior is given)."""
    space = "H" if fields.get("mu") is not None or fields.get("log_var") is not None else None
    return Features(logits=logits, space=space, **fields)


def batches_of(x: Tensor, size: int) -> list[Tensor]:
    return [x[i : i + size] for i in range(0, x.shape[0], size)]


class LogitsNet:
    """The network hooks ODIN uses, over a tiny differentiable map: logits = Linear(tanh(flatten(x) W)).

    ``dead_channel``: the features ignore that input channel, so its input gradient is exactly 0.
    Every input of ``logits`` is recorded in ``calls``.
    """

    device = torch.device("cpu")
    stochastic_space = None

    def __init__(
        self,
        in_shape: tuple[int, ...] = (3, 4, 4),
        feat_dim: int = 6,
        num_classes: int = 3,
        *,
        input_std: tuple[float, ...] | None = CIFAR_STD,
        dtype: torch.dtype = torch.float64,
        seed: int = 0,
        dead_channel: int | None = None,
    ) -> None:
        g = torch.Generator().manual_seed(seed)
        d_in = math.prod(in_shape)
        self.weight = torch.randn(d_in, feat_dim, generator=g, dtype=dtype) / math.sqrt(d_in)
        if dead_channel is not None:
            self.weight.view(in_shape[0], -1, feat_dim)[dead_channel] = 0
        self.predictor = nn.Linear(feat_dim, num_classes).to(dtype)
        with torch.no_grad():
            self.predictor.weight.copy_(torch.randn(num_classes, feat_dim, generator=g, dtype=dtype))
            self.predictor.bias.copy_(torch.randn(num_classes, generator=g, dtype=dtype))
        self.input_std = input_std
        self.dtype = dtype
        self.calls: list[Tensor] = []

    def logits(self, x: Tensor) -> Tensor:
        self.calls.append(x.detach().clone())
        return self.predictor(torch.tanh(x.flatten(1).to(self.dtype) @ self.weight))


__all__ = [
    "CIFAR_STD",
    "DEMO_RUNS",
    "MODELS",
    "NUM_CLASSES",
    "SPLITS",
    "InMemoryProtocol",
    "LogitsNet",
    "batches_of",
    "features",
    "images",
    "store_for",
    "tiny_network",
]
