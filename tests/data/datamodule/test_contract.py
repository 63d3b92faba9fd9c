"""The contract of every registered datamodule, driven by the two registries.

``DATAMODULES``: each registered name has its config ``conf/dataset/<name>.yaml`` and a tiny fixture
in the dataset's real on-disk format (``FIXTURES``); the datamodule is built from the composed
Hydra config (only the data root and the batch size shrunk) and yields, for every split, the batch
layout of its task type: ssl ``[[V1, V2, V3], Y]`` (float32 square views of equal shape, V3 of
side ``input_height``), every other type ``[X, Y]`` (float32 ``(B, 3, H, W)``, shorter side
``input_height``), Y int64 ``(B,)`` in ``[0, num_classes)``.

``TRANSFER_DATAMODULES``: each registered linear-probe dataset has its config
``conf/linear_probing/<name>.yaml`` and a fixture; the splits it loads are its declared
``official_splits``, every loader covers every sample once (no ``drop_last``) with ``[X, Y]``
batches, and test mode always has a test split (the official val split when there is no test split).

A new datamodule is tested by registering it, adding its config and naming its fixture here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from src.data.datamodule import (
    DATAMODULES,
    TRANSFER_DATAMODULES,
    datamodule_from_config,
    get_transfer_learning_datamodule,
)
from src.utils.plain import to_plain

CONF = Path(__file__).resolve().parents[3] / "src" / "experiments" / "conf"
BATCH = 4

#: training datamodule name -> the fixture (tests/data/conftest.py) that writes its on-disk format
FIXTURES = {
    "cifar10": "cifar10_dir",
    "cifar100": "cifar100_dir",
    "demo": "demo_root",
    "fashion_mnist": "fashion_mnist_dir",
    "fashion_mnist_split": "fashion_mnist_dir",
    "imagenet": "imagenet_dir",
    "imagenet1pct": "imagenet_dir",  # a subset root has the full layout
    "imagenet10pct": "imagenet_dir",
}
#: linear-probe dataset -> (fixture, sub-folder holding the dataset's root)
PROBE_FIXTURES = {
    "SUN397": ("transfer_root", ""),
    "flowers-102": ("transfer_root", ""),
    "imagenet": ("transfer_root", "imagenet"),
    "demo": ("demo_root", ""),
}


def fixture_root(request: pytest.FixtureRequest, fixtures: dict[str, Any], name: str, kind: str) -> Any:
    assert name in fixtures, (
        f"{kind} {name!r} is registered but has no fixture: add one to {kind.upper()} in {__file__}"
    )
    return request.getfixturevalue(fixtures[name]) if isinstance(fixtures[name], str) else fixtures[name]


def composed_dataset(name: str, data_dir: Path, task: str) -> dict[str, Any]:
    """The ``dataset`` node of the composed config for dataset ``name``, shrunk to the fixture."""
    overrides = [
        "+model/task/ssl@train=ssl",
        f"dataset={name}",
        f"dataset.data_dir={data_dir}",
        f"dataset.batch_size={BATCH}",
        "dataset.num_workers=0",
        f"dataset.task={task}",
    ]
    with initialize_config_dir(version_base=None, config_dir=str(CONF)):
        cfg = compose(config_name="config", overrides=overrides)
    return to_plain(cfg.dataset)


@pytest.mark.parametrize("name", list(DATAMODULES))
def test_every_datamodule_has_its_config(name: str) -> None:
    path = CONF / "dataset" / f"{name}.yaml"
    assert path.is_file(), f"datamodule {name!r} is registered but {path} does not exist"
    cfg = OmegaConf.load(path)
    if "_target_" in cfg:  # fashion_mnist_split inherits it from its defaults
        assert DATAMODULES.get(DATAMODULES.name_of_target(cfg._target_)) is DATAMODULES[name]
    assert name in FIXTURES, f"datamodule {name!r} has no fixture: add one to FIXTURES in {__file__}"


@pytest.mark.parametrize("task", ["ssl", "semi_supervised"])
@pytest.mark.parametrize("name", list(DATAMODULES))
def test_batches_of_every_split(name: str, task: str, request: pytest.FixtureRequest) -> None:
    assert name in FIXTURES, f"datamodule {name!r} has no fixture: add one to FIXTURES in {__file__}"
    data_dir = request.getfixturevalue(FIXTURES[name])
    node = composed_dataset(name, data_dir, task)
    dm = datamodule_from_config(node)
    assert type(dm) is DATAMODULES[name] and dm.batch_size == BATCH
    dm.setup("fit")
    dm.setup("test")
    dm.check_batches(("train", "val", "test"))
    side = dm.input_height
    for split in ("train", "val", "test"):
        batch = dm.on_after_batch_transfer(next(iter(getattr(dm, f"{split}_dataloader")())), 0)
        assert isinstance(batch, list) and len(batch) == 2, (split, type(batch))
        x, y = batch
        assert y.dtype == torch.int64 and y.shape == (BATCH,)
        assert 0 <= int(y.min()) and int(y.max()) < int(node["num_classes"])
        if task == "ssl":
            assert isinstance(x, list) and len(x) == 3
            v1, v2, v3 = x
            for v in x:
                assert v.dtype == torch.float32 and v.dim() == 4 and v.shape[:2] == (BATCH, 3)
                assert v.shape[2] == v.shape[3]
            assert v1.shape == v2.shape and v3.shape[2] == side
        else:
            assert isinstance(x, torch.Tensor) and x.dtype == torch.float32
            assert x.shape[:2] == (BATCH, 3) and min(x.shape[2:]) == side


@pytest.mark.parametrize("name", list(TRANSFER_DATAMODULES))
def test_every_probe_datamodule_has_its_config(name: str) -> None:
    path = CONF / "linear_probing" / f"{name}.yaml"
    assert path.is_file(), f"linear-probe datamodule {name!r} is registered but {path} does not exist"
    cfg = OmegaConf.load(path)
    assert cfg.dataset == name and int(cfg.num_classes) == TRANSFER_DATAMODULES[name].default_num_classes


@pytest.mark.parametrize("name", list(TRANSFER_DATAMODULES))
def test_probe_splits_and_batches(name: str, request: pytest.FixtureRequest) -> None:
    fixture, sub = PROBE_FIXTURES.get(name, (None, ""))
    assert fixture is not None, f"linear-probe dataset {name!r} has no fixture: add one to PROBE_FIXTURES"
    root = Path(request.getfixturevalue(fixture)) / sub
    dm = get_transfer_learning_datamodule(root, name, batch_size=BATCH, image_size=8)
    assert type(dm) is TRANSFER_DATAMODULES[name]
    dm.setup()
    loaders = dm.split_loaders()
    assert tuple(loaders) == dm.official_splits
    for split, loader in loaders.items():
        seen = 0
        for x, y in loader:
            assert x.dtype == torch.float32 and x.shape[1:] == (3, 8, 8) and y.dtype == torch.int64
            assert 0 <= int(y.min()) and int(y.max()) < dm.num_classes
            seen += len(y)
        assert seen == len(getattr(dm, f"{split}_ds")), split  # no drop_last

    probe = get_transfer_learning_datamodule(root, name, batch_size=BATCH, image_size=8, test_mode=True)
    probe.setup()
    assert probe.train_dataloader() is not None and probe.test_dataloader() is not None
    # without a test split the official val split is the test set and there is no val (D-Q5, D-Q16)
    has_val = "val" in dm.official_splits and "test" in dm.official_splits
    assert (probe.val_dataloader() is not None) == has_val
