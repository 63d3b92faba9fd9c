"""ResNet encoders with per-dataset stems (spec: model_training.md §2).

torchvision's ResNet with its own initialisation and ``fc`` replaced by an identity, so the
output is the global-average-pooled feature [B, E]. Small-image datasets swap the stem; the
replacement conv1 is created after torchvision's init loop and therefore keeps PyTorch's
default Conv2d initialisation (Kaiming-uniform, a=sqrt(5)), as in the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torchvision import models


@dataclass(frozen=True)
class Stem:
    """A replacement stem: conv1 kernel size and input channels; maxpool becomes identity."""

    kernel_size: int
    in_channels: int = 3
    # tinyimagenet's 4x4 stem is applied to ResNet-18 only in the reference.
    only_for: tuple[str, ...] | None = None


ENCODERS: dict[str, tuple[type[nn.Module], int]] = {
    "resnet18": (models.resnet18, 512),
    "resnet34": (models.resnet34, 512),
    "resnet50": (models.resnet50, 2048),
}

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


def encoder_out_dim(name: str) -> int:
    """E, the width of the pooled feature of encoder ``name``."""
    if name not in ENCODERS:
        raise ValueError(f"encoder={name!r} is not known; use one of {sorted(ENCODERS)}")
    return ENCODERS[name][1]


def get_encoder(name: str, dataset: str) -> nn.Module:
    """Build encoder ``name`` (resnet18/34/50) with the stem for ``dataset``; output [B, E]."""
    if name not in ENCODERS:
        raise ValueError(f"encoder={name!r} is not known; use one of {sorted(ENCODERS)}")
    factory, _ = ENCODERS[name]
    net = factory(weights=None)
    net.fc = nn.Identity()
    stem = STEMS.get(dataset)
    if stem is not None and (stem.only_for is None or name in stem.only_for):
        net.conv1 = nn.Conv2d(stem.in_channels, 64, kernel_size=stem.kernel_size, stride=1, padding=1, bias=False)
        net.maxpool = nn.MaxPool2d(kernel_size=1, stride=1)
    return net
