"""BaseDataModule pieces without a dataset: the task table and the train/val split helper."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from src.data.datamodule import TASK_TYPES, BaseDataModule, split_train_val, task_type


def test_task_table() -> None:
    assert TASK_TYPES == {
        "ssl": "ssl",
        "ssl_bayes_h": "ssl",
        "ssl_bayes_z": "ssl",
        "ssl_bayes_h_and_z": "ssl",
        "ssl_bayes_hierarchical": "ssl",
        "supervised": "supervised",
        "semi_supervised": "semi_supervised",
        "linear_classification": "linear_classification",
    }
    with pytest.raises(ValueError, match=r"dataset\.task='finetune'.*linear_classification.*ssl_bayes_z"):
        task_type("finetune")


def test_base_is_abstract() -> None:
    with pytest.raises(TypeError, match="abstract"):
        BaseDataModule(data_dir=".", task="ssl")  # type: ignore[abstract]


def test_split_takes_train_and_val_from_their_own_source() -> None:
    n = 50
    train_source = TensorDataset(torch.arange(n))
    val_source = TensorDataset(torch.arange(n) + 1000)  # the "val-transform copy"
    train, val = split_train_val(train_source, val_source, 0.2, seed=7)
    assert (len(train), len(val)) == (40, 10)
    train_items = [int(train[i][0]) for i in range(len(train))]
    val_items = [int(val[i][0]) - 1000 for i in range(len(val))]
    assert all(item < 1000 for item in train_items)
    assert sorted(train_items + val_items) == list(range(n))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(7)).tolist()
    assert (train_items, val_items) == (perm[:40], perm[40:])


@pytest.mark.parametrize(("val_split", "val_len"), [(0.2, 10), (0.5, 25), (0.999, 49), (0, 0), (13, 13), (0.0, 0)])
def test_split_lengths(val_split: float, val_len: int) -> None:
    data = TensorDataset(torch.arange(50))
    train, val = split_train_val(data, data, val_split, seed=0)
    assert (len(train), len(val)) == (50 - val_len, val_len)


def test_split_errors() -> None:
    data = TensorDataset(torch.arange(10))
    with pytest.raises(ValueError, match="same length"):
        split_train_val(data, TensorDataset(torch.arange(9)), 0.2, seed=0)
    with pytest.raises(TypeError, match=r"int .* or a float"):
        split_train_val(data, data, "2", seed=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outside"):
        split_train_val(data, data, -1, seed=0)
