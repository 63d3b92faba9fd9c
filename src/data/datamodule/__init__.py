"""Training datamodules and their registry (spec: data_evaluation.md §3).

``DATAMODULES`` maps a dataset name (the ``dataset.name`` of the config) to its class; a new
dataset registers with one line here. Hydra configs name the class by ``_target_`` instead.
"""

from __future__ import annotations

from typing import Any

from src.data.datamodule.base import TASK_TYPES, BaseDataModule, split_train_val, task_type
from src.data.datamodule.cifar import CIFAR10DataModule, CIFAR100DataModule
from src.data.datamodule.demo import DemoDataModule
from src.data.datamodule.fashion_mnist import FashionMNISTDataModule
from src.data.datamodule.imagenet import ImageNetDataModule, SubsetImageNetDataModule

DATAMODULES: dict[str, type[BaseDataModule]] = {
    "cifar10": CIFAR10DataModule,
    "cifar100": CIFAR100DataModule,
    "imagenet": ImageNetDataModule,
    "imagenet1pct": SubsetImageNetDataModule,
    "imagenet10pct": SubsetImageNetDataModule,
    "demo": DemoDataModule,
    "fashion_mnist": FashionMNISTDataModule,
    "fashion_mnist_split": FashionMNISTDataModule,
}


def build_datamodule(name: str, **kwargs: Any) -> BaseDataModule:
    """Instantiate the datamodule registered as ``name`` with constructor arguments ``kwargs``.

    Raises:
        ValueError: ``name`` is not registered.
    """
    if name not in DATAMODULES:
        raise ValueError(f"dataset.name={name!r} has no datamodule; use one of {sorted(DATAMODULES)}")
    return DATAMODULES[name](**kwargs)


__all__ = [
    "DATAMODULES",
    "TASK_TYPES",
    "BaseDataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "DemoDataModule",
    "FashionMNISTDataModule",
    "ImageNetDataModule",
    "SubsetImageNetDataModule",
    "build_datamodule",
    "split_train_val",
    "task_type",
]
