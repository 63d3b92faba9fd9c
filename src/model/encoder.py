"""ResNet encoders with per-dataset stems (``ENCODERS``, by ``model.backbone.encoder``).

torchvision's ResNet with its own initialisation and ``fc`` replaced by an identity, so the
output is the global-average-pooled feature [B, E]. Small-image datasets swap the stem; the
replacement conv1 is created after torchvision's init loop and therefore keeps PyTorch's
default Conv2d initialisation (Kaiming-uniform, a=sqrt(5)), as in the reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn
from torchvision import models

from src.utils.registry import Registry


@dataclass(frozen=True)
class Stem:
    """A replacement stem: conv1 kernel size and input channels; maxpool becomes identity."""

    kernel_size: int
    in_channels: int = 3
    # tinyimagenet's 4x4 stem is applied to ResNet-18 only in the reference.
    only_for: tuple[str, ...] | None = None


@dataclass(frozen=True)
class EncoderSpec:
    """A torchvision builder (called with ``weights=None``) and the width E of its pooled feature."""

    factory: Callable[..., nn.Module]
    out_dim: int


#: the encoders by ``model.backbone.encoder``; a new backbone is one registration here
ENCODERS: Registry[EncoderSpec] = Registry("encoder", config_key="model.backbone.encoder")
ENCODERS.add("resnet18", EncoderSpec(models.resnet18, 512))
ENCODERS.add("resnet34", EncoderSpec(models.resnet34, 512))
ENCODERS.add("resnet50", EncoderSpec(models.resnet50, 2048))

# Dataset name -> stem. Datasets not listed use the standard ImageNet stem
# (7x7 stride-2 conv + 3x3 stride-2 maxpool). Later datasets register themselves here.
STEMS: dict[str, Stem] = {
    "cifar10": Stem(3),
    "cifar100": Stem(3),
    "tinyimagenet": Stem(4, only_for=("resnet18",)),
    "mnist": Stem(3, in_channels=1),
    # the embedded demo (16x16 RGB digits, photo patches, noise): the CIFAR stem
    "demo": Stem(3),
    # Fashion-MNIST (28x28 grey expanded to RGB) and its open-set split: the CIFAR stem
    "fashion_mnist": Stem(3),
    "fashion_mnist_split": Stem(3),
}


def _spec(name: str) -> EncoderSpec:
    if name not in ENCODERS:
        raise ValueError(f"encoder={name!r} is not known; use one of {sorted(ENCODERS)}")
    return ENCODERS[name]


def encoder_out_dim(name: str) -> int:
    """E, the width of the pooled feature of encoder ``name``."""
    return _spec(name).out_dim


def get_encoder(name: str, dataset: str) -> nn.Module:
    """Build encoder ``name`` (resnet18/34/50) with the stem for ``dataset``; output [B, E]."""
    net = _spec(name).factory(weights=None)
    net.fc = nn.Identity()
    stem = STEMS.get(dataset)
    if stem is not None and (stem.only_for is None or name in stem.only_for):
        net.conv1 = nn.Conv2d(stem.in_channels, 64, kernel_size=stem.kernel_size, stride=1, padding=1, bias=False)
        net.maxpool = nn.MaxPool2d(kernel_size=1, stride=1)
    return net
