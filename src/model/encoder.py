"""Encoders: ResNets with per-dataset stems (``ENCODERS``, by ``model.backbone.encoder``), and any timm model.

torchvision's ResNet with its own initialisation and ``fc`` replaced by an identity, so the
output is the global-average-pooled feature [B, E]. Small-image datasets swap the stem; the
replacement conv1 is created after torchvision's init loop and therefore keeps PyTorch's
default Conv2d initialisation (Kaiming-uniform, a=sqrt(5)), as in the reference.

An encoder named ``timm/<model>`` (``model/backbone=timm``, ``model.backbone.name=<model>``) is
``timm.create_model(<model>, pretrained=False, num_classes=0, **kwargs)``: timm's pooled,
classifier-free feature, whose width E is read from the model (``num_features``, or ``head_hidden_size``
for models with a pre-logits layer). Its stem is timm's
(the dataset stems above are for the torchvision ResNets); ``kwargs`` (``model.backbone.kwargs``)
reach ``create_model``, e.g. ``img_size: 32`` for a ViT on CIFAR, and ``in_chans`` is set from the
dataset's stem where that has one channel. Weights are never downloaded.
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
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


#: prefix of the encoder names built by timm (``timm/<model>``)
TIMM_PREFIX = "timm/"


def _spec(name: str) -> EncoderSpec:
    if name not in ENCODERS:
        raise ValueError(
            f"encoder={name!r} is not known; use one of {sorted(ENCODERS)} or a timm model as "
            f"'{TIMM_PREFIX}<name>' (model/backbone=timm model.backbone.name=<name>)"
        )
    return ENCODERS[name]


def _timm_name(name: str) -> str | None:
    """``<model>`` of an encoder named ``timm/<model>``, else None."""
    return name[len(TIMM_PREFIX) :] if name.startswith(TIMM_PREFIX) else None


def _create_timm(model: str, kwargs: Mapping[str, Any] | None) -> nn.Module:
    """``timm.create_model(model, pretrained=False, num_classes=0, **kwargs)`` with a clear error for a bad name."""
    import timm

    if not timm.is_model(model):
        close = difflib.get_close_matches(model, timm.list_models(), n=5)
        hint = f" Close names: {', '.join(close)}." if close else ""
        raise ValueError(
            f"model.backbone.name={model!r} is not a timm {timm.__version__} model.{hint} "
            "List them with: python -c \"import timm; print(timm.list_models('*resnet*'))\""
        )
    extra = dict(kwargs or {})
    for key in ("pretrained", "num_classes"):
        if key in extra:
            raise ValueError(
                f"model.backbone.kwargs.{key} is set by the project (pretrained=False, num_classes=0); remove it"
            )
    try:
        return timm.create_model(model, pretrained=False, num_classes=0, **extra)
    except TypeError as err:
        raise ValueError(f"timm model {model!r} does not accept model.backbone.kwargs={extra}: {err}") from err


def timm_feature_width(net: nn.Module) -> int:
    """The width of a classifier-free timm model's output: ``head_hidden_size`` where the model has a
    pre-logits layer after the pooling (MobileNetV3's 1024 against 576 ``num_features``), else ``num_features``."""
    return int(getattr(net, "head_hidden_size", None) or net.num_features)


@functools.cache
def _timm_out_dim(model: str, kwargs_json: str) -> int:
    kwargs = json.loads(kwargs_json)
    try:
        with torch.device("meta"):  # no memory, no initialisation: only the width is read
            return timm_feature_width(_create_timm(model, kwargs))
    except (NotImplementedError, RuntimeError):  # a model whose constructor reads tensor values
        return timm_feature_width(_create_timm(model, kwargs))


def _timm_kwargs(dataset: str | None, kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    extra = dict(kwargs or {})
    stem = STEMS.get(dataset) if dataset is not None else None
    if stem is not None and stem.in_channels != 3:
        extra.setdefault("in_chans", stem.in_channels)
    return extra


def encoder_out_dim(name: str, kwargs: Mapping[str, Any] | None = None) -> int:
    """E, the width of the pooled feature of encoder ``name`` (for ``timm/<model>``: ``timm_feature_width``
    of the model with ``kwargs``, built on the meta device)."""
    model = _timm_name(name)
    if model is not None:
        return _timm_out_dim(model, json.dumps(dict(kwargs or {}), sort_keys=True))
    return _spec(name).out_dim


def get_encoder(name: str, dataset: str, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """Build encoder ``name`` (resnet18/34/50 with the stem for ``dataset``, or ``timm/<model>``); output [B, E].

    Raises:
        ValueError: an unknown encoder or timm model, or ``kwargs`` for a torchvision ResNet.
    """
    model = _timm_name(name)
    if model is not None:
        return _create_timm(model, _timm_kwargs(dataset, kwargs))
    if kwargs:
        raise ValueError(f"model.backbone.kwargs={dict(kwargs)} is only for timm encoders, not encoder={name!r}")
    net = _spec(name).factory(weights=None)
    net.fc = nn.Identity()
    stem = STEMS.get(dataset)
    if stem is not None and (stem.only_for is None or name in stem.only_for):
        net.conv1 = nn.Conv2d(stem.in_channels, 64, kernel_size=stem.kernel_size, stride=1, padding=1, bias=False)
        # the reference's MaxPool2d(kernel_size=1, stride=1) is the identity (same values, no parameters,
        # no state-dict keys) but runs a real kernel that stores int64 indices
        net.maxpool = nn.Identity()
    return net
