"""Datamodules and their two registries.

``DATAMODULES`` maps a dataset name (the ``dataset.name`` of the config) to its training datamodule;
configs name the class by ``_target_``, which the registry also resolves. ``TRANSFER_DATAMODULES``
maps the ``dataset`` of a linear-probing config to its probe datamodule
(``transfer_learning.py``). Importing this package registers every datamodule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from src.data.datamodule.base import DATAMODULES, TASK_TYPES, BaseDataModule, split_train_val, task_type
from src.data.datamodule.cifar import CIFAR10DataModule, CIFAR100DataModule
from src.data.datamodule.demo import DemoDataModule
from src.data.datamodule.fashion_mnist import FashionMNISTDataModule
from src.data.datamodule.imagenet import ImageNetDataModule, SubsetImageNetDataModule
from src.data.datamodule.transfer_learning import (
    TRANSFER_DATAMODULES,
    BaseLinearProbingDatamodule,
    PrecomputedRepresentationsDatamodule,
    get_transfer_learning_datamodule,
)


def build_datamodule(name: str, **kwargs: Any) -> BaseDataModule:
    """Instantiate the datamodule registered as ``name`` with constructor arguments ``kwargs``.

    Raises:
        ValueError: ``name`` is not registered.
    """
    return DATAMODULES.get(name)(**kwargs)


def datamodule_from_config(dataset: Mapping[str, Any]) -> BaseDataModule:
    """The datamodule a composed ``dataset`` config node (plain values) describes: its ``_target_``
    (or ``name``) selects the class, the other keys are its arguments."""
    return DATAMODULES.build(dataset)


__all__ = [
    "DATAMODULES",
    "TASK_TYPES",
    "TRANSFER_DATAMODULES",
    "BaseDataModule",
    "BaseLinearProbingDatamodule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "DemoDataModule",
    "FashionMNISTDataModule",
    "ImageNetDataModule",
    "PrecomputedRepresentationsDatamodule",
    "SubsetImageNetDataModule",
    "build_datamodule",
    "datamodule_from_config",
    "get_transfer_learning_datamodule",
    "split_train_val",
    "task_type",
]
