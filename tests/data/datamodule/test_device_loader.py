"""The device data path's loaders (src/data/datamodule/device_loader.py) and how the datamodules use them.

``DeviceBatchLoader`` alone (every index once per epoch, drop_last, shuffle, len, reproducibility per
seed and epoch, labels with their images), then the CIFAR and Fashion-MNIST datamodules with
``augment_on_device``: the same split as the CPU path, the loaders of each split, the multi-device
fallback, ``auto`` off on a machine without CUDA, and the views a phase does not read left out.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from src.data.datamodule import CIFAR10DataModule, FashionMNISTDataModule
from src.data.datamodule.device_loader import DeviceBatchLoader, epoch_seed
from tests.conftest import compose_config

N = 23


def indexed(n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images whose every pixel holds the sample index, and labels 1000 + index: a batch tells
    which samples it holds and whether each label travelled with its image."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 4, 4).contiguous()
    return images, 1000 + torch.arange(n)


def epoch_indices(loader: DeviceBatchLoader) -> list[list[int]]:
    batches = []
    for x, y in loader:
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, 4, 4) and y.dtype == torch.int64
        ids = x[:, 0, 0, 0].to(torch.int64)
        assert torch.equal(y, 1000 + ids)  # every label with its own image
        assert (x == x[:, :1, :1, :1]).all()  # whole images, not mixed rows
        batches.append(ids.tolist())
    return batches


@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("shuffle", [True, False])
def test_every_index_once_per_epoch_and_len(shuffle: bool, drop_last: bool) -> None:
    loader = DeviceBatchLoader(*indexed(), batch_size=5, shuffle=shuffle, drop_last=drop_last, seed=3)
    assert len(loader) == (4 if drop_last else 5)
    for _ in range(3):
        batches = epoch_indices(loader)
        assert len(batches) == len(loader)
        assert [len(b) for b in batches] == ([5] * 4 if drop_last else [5, 5, 5, 5, 3])
        flat = [i for b in batches for i in b]
        assert len(set(flat)) == len(flat)  # no sample twice
        if drop_last:
            assert len(flat) == 20  # N mod B = 3 dropped
        else:
            assert sorted(flat) == list(range(N))
        if not shuffle:
            assert flat == list(range(len(flat)))  # val/test: the dataset's order


def test_shuffle_is_reproducible_per_seed_and_epoch() -> None:
    def orders(seed: int, epochs: int = 3) -> list[list[int]]:
        loader = DeviceBatchLoader(*indexed(), batch_size=5, shuffle=True, drop_last=False, seed=seed)
        return [[i for b in epoch_indices(loader) for i in b] for _ in range(epochs)]

    first = orders(1997)
    assert orders(1997) == first  # the same run seed: the same orders
    assert first[0] != first[1] != first[2]  # a new order every epoch
    assert orders(1998) != first
    assert epoch_seed(1997, 1) != epoch_seed(1998, 0)  # adjacent seeds do not replay each other's epochs
    # Lightning sets the epoch (a resumed run restarts its iterations at the saved epoch): same order
    resumed = DeviceBatchLoader(*indexed(), batch_size=5, shuffle=True, drop_last=False, seed=1997)
    resumed.sampler.set_epoch(2)
    assert [i for b in epoch_indices(resumed) for i in b] == first[2]
    assert resumed.order(2) is not None and resumed.order(2).tolist() == first[2]


def test_the_split_moves_to_the_device_once() -> None:
    images, labels = indexed()
    calls: list[int] = []

    def device() -> torch.device:
        calls.append(1)
        return torch.device("cpu")

    loader = DeviceBatchLoader(images, labels, batch_size=4, shuffle=False, drop_last=True, seed=0, device=device)
    epoch_indices(loader)
    assert loader.images.data_ptr() == images.data_ptr()  # already on the device: no copy
    x, _ = next(iter(loader))
    assert x.data_ptr() == images.data_ptr()  # unshuffled batches are views of the resident split
    assert calls  # the device is asked for at iteration time (known only once a Trainer is attached)


def test_bad_inputs() -> None:
    images, labels = indexed()
    with pytest.raises(ValueError, match="uint8 images"):
        DeviceBatchLoader(images.float(), labels, 4, True, True, 0)
    with pytest.raises(ValueError, match="labels of shape"):
        DeviceBatchLoader(images, labels[:-1], 4, True, True, 0)
    with pytest.raises(ValueError, match="batch_size"):
        DeviceBatchLoader(images, labels, 0, True, True, 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batches_stay_on_the_cuda_device() -> None:
    loader = DeviceBatchLoader(*indexed(), batch_size=5, shuffle=True, drop_last=True, seed=0, device="cuda")
    x, y = next(iter(loader))
    assert x.is_cuda and y.is_cuda and loader.images.is_cuda


# ---------------------------------------------------------------------------------------- datamodules


def cifar(data_dir: Path, **kwargs: Any) -> CIFAR10DataModule:
    args: dict[str, Any] = dict(batch_size=8, num_workers=0, seed=1997, input_height=32) | kwargs
    return CIFAR10DataModule(data_dir=data_dir, task="ssl", **args)


def fmnist(data_dir: Path, **kwargs: Any) -> FashionMNISTDataModule:
    args: dict[str, Any] = dict(batch_size=8, val_split=0.25, num_workers=0) | kwargs
    return FashionMNISTDataModule(data_dir=data_dir, task="ssl", **args)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "fashion_mnist", "fashion_mnist_split"])
def test_configs_default_to_auto(name: str) -> None:
    cfg = compose_config(f"dataset={name}", "+model/task/ssl@train=ssl")
    assert cfg.dataset.augment_on_device == "auto" and cfg.dataset.skip_unread_views == "auto"
    assert cfg.dataset.compile_augment is False  # opt-in


def test_compile_augment_option(cifar10_dir: Path, fashion_mnist_dir: Path) -> None:
    assert cifar(cifar10_dir, augment_on_device=True).device_augment.compiled is False  # type: ignore[union-attr]
    dm = fmnist(fashion_mnist_dir, augment_on_device=True, compile_augment=True)
    assert dm.device_augment is not None and dm.device_augment.compiled is True
    for make, root in ((cifar, cifar10_dir), (fmnist, fashion_mnist_dir)):
        with pytest.raises(ValueError, match=r"dataset\.compile_augment must be true or false, got 'yes'"):
            make(root, augment_on_device=True, compile_augment="yes")


def test_auto_is_the_cpu_path_without_cuda(cifar10_dir: Path, fashion_mnist_dir: Path) -> None:
    assert cifar(cifar10_dir).device_augment is None  # the constructor's default: the CPU path
    assert fmnist(fashion_mnist_dir).device_augment is None
    for dm in (cifar(cifar10_dir, augment_on_device="auto"), fmnist(fashion_mnist_dir, augment_on_device="auto")):
        assert dm.augment_on_device is torch.cuda.is_available()
        dm.setup("fit")
        loader = dm.train_dataloader()
        assert isinstance(loader, DeviceBatchLoader) is torch.cuda.is_available()
    with pytest.raises(ValueError, match=r"dataset\.augment_on_device must be true, false or auto"):
        fmnist(fashion_mnist_dir, augment_on_device="gpu")
    with pytest.raises(ValueError, match=r"dataset\.skip_unread_views must be true, false or auto"):
        cifar(cifar10_dir, skip_unread_views="sometimes")


@pytest.mark.parametrize("name", ["cifar10", "fashion_mnist"])
def test_device_loaders_hold_the_cpu_paths_split(name: str, cifar10_dir: Path, fashion_mnist_dir: Path) -> None:
    make, root = (cifar, cifar10_dir) if name == "cifar10" else (fmnist, fashion_mnist_dir)
    dm, cpu = make(root, augment_on_device=True), make(root, augment_on_device=False)
    for m in (dm, cpu):
        m.setup("fit")
        m.setup("test")
    assert dm.train_ds.indices == cpu.train_ds.indices and dm.val_ds.indices == cpu.val_ds.indices  # type: ignore[union-attr]
    assert len(dm.train_dataloader()) == len(cpu.train_dataloader()) == dm.train_iters_per_epoch
    # val and test: unshuffled, the CPU path's samples in its order (its finetune view is the image itself)
    for split in ("val", "test"):
        device_loader, cpu_loader = getattr(dm, f"{split}_dataloader")(), getattr(cpu, f"{split}_dataloader")()
        assert isinstance(device_loader, DeviceBatchLoader) and not device_loader.shuffle
        assert isinstance(cpu_loader, DataLoader) and len(device_loader) == len(cpu_loader)
        for batch, (cpu_views, cpu_y) in zip(device_loader, cpu_loader, strict=True):
            (_, _, v3), y = dm.on_after_batch_transfer(batch, 0)
            assert torch.equal(y, cpu_y) and torch.equal(v3, cpu_views[2])
    # train: every train sample once per epoch, with its label
    train = dm.train_dataloader()
    assert isinstance(train, DeviceBatchLoader) and train.shuffle and train.drop_last
    labels = [int(t) for t in dm.train_ds.dataset.tensors[1][dm.train_ds.indices]]  # type: ignore[union-attr]
    images = dm.train_ds.dataset.tensors[0][dm.train_ds.indices]  # type: ignore[union-attr]
    seen = []
    for x, y in train:
        for image, label in zip(x, y, strict=True):
            match = (images == image).flatten(1).all(1).nonzero().flatten().tolist()
            assert any(labels[i] == int(label) for i in match)
            seen.append(match[0])
    assert len(seen) == len(train) * dm.batch_size


def test_multi_device_runs_keep_dataloaders(cifar10_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    dm = cifar(cifar10_dir, augment_on_device=True)
    dm.setup("fit")
    dm.trainer = SimpleNamespace(world_size=2, strategy=SimpleNamespace(root_device=torch.device("cpu")))  # type: ignore[assignment]
    with caplog.at_level(logging.INFO, logger="src.data.datamodule.base"):
        loader = dm.train_dataloader()
    assert isinstance(loader, DataLoader) and "Lightning shards them by rank" in caplog.text
    x, _ = next(iter(loader))
    assert x.dtype == torch.uint8  # still the device views' input: the hook augments on each rank
    dm.trainer = SimpleNamespace(world_size=1, strategy=SimpleNamespace(root_device=torch.device("cpu")))  # type: ignore[assignment]
    assert isinstance(dm.train_dataloader(), DeviceBatchLoader)
    assert dm.training_device() == torch.device("cpu")


# ---------------------------------------------------------------------------------------- unread views


def test_read_views_checks_its_argument(cifar10_dir: Path) -> None:
    dm = cifar(cifar10_dir)
    for bad in ((), (3,), (-1,)):
        with pytest.raises(ValueError, match="positions in 0..2"):
            dm.read_views(bad)
    dm.read_views((2, 2))
    assert dm.views_read == (2,)


@pytest.mark.parametrize("name", ["cifar10", "fashion_mnist"])
def test_device_path_builds_only_the_finetune_view(name: str, cifar10_dir: Path, fashion_mnist_dir: Path) -> None:
    make, root = (cifar, cifar10_dir) if name == "cifar10" else (fmnist, fashion_mnist_dir)
    dm, cpu = make(root, augment_on_device=True), make(root, augment_on_device=False)
    dm.read_views((2,))
    assert dm.views_skipped
    for m in (dm, cpu):
        m.setup("fit")
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    (v1, v2, v3), y = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    assert v1 is None and v2 is None
    assert torch.equal(torch.random.get_rng_state(), before)  # nothing drawn for views not built
    (_, _, cpu_v3), cpu_y = next(iter(cpu.val_dataloader()))
    assert torch.equal(v3, cpu_v3) and torch.equal(y, cpu_y)  # x3 bit-identical to the CPU path's
    # with skip_unread_views=false all three are built, as before
    full = make(root, augment_on_device=True, skip_unread_views=False)
    full.read_views((2,))
    full.setup("fit")
    views, _ = full.on_after_batch_transfer(next(iter(full.val_dataloader())), 0)
    assert all(v is not None for v in views) and torch.equal(views[2], v3)


def test_cpu_path_skips_only_where_no_stream_changes(cifar10_dir: Path) -> None:
    # num_workers=0: the transforms draw from the main process's stream, so auto keeps all three views
    main = cifar(cifar10_dir, augment_on_device=False)
    main.read_views((2,))
    assert not main.views_skipped
    main.setup("fit")
    assert len(main.train_ds.dataset.transform.transforms) == 3  # type: ignore[union-attr]
    # workers draw from their own streams: auto leaves x1 and x2 out
    workers = cifar(cifar10_dir, augment_on_device=False, num_workers=1)
    workers.read_views((2,))
    assert workers.views_skipped
    # forced: the batches hold x3 only, put back in place as [None, None, x3], bit-identical
    forced = cifar(cifar10_dir, augment_on_device=False, skip_unread_views=True)
    forced.read_views((2,))
    forced.setup("fit")
    assert len(forced.train_ds.dataset.transform.transforms) == 1  # type: ignore[union-attr]
    (v1, v2, v3), y = forced.on_after_batch_transfer(next(iter(forced.val_dataloader())), 0)
    (_, _, ref_v3), ref_y = next(iter(main.val_dataloader()))
    assert v1 is None and v2 is None and torch.equal(v3, ref_v3) and torch.equal(y, ref_y)
    # a phase reading every view (pretraining) is never affected
    pretrain = cifar(cifar10_dir, augment_on_device=False, skip_unread_views=True)
    pretrain.setup("fit")
    assert not pretrain.views_skipped and len(pretrain.train_ds.dataset.transform.transforms) == 3  # type: ignore[union-attr]
