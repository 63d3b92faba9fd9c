"""CIFAR datamodules on tiny torchvision-format files: batches, split, loaders, errors, device views."""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import Subset

from src.data.augment.transforms import CIFAR10_NORMALIZE, CIFAR100_NORMALIZE, MultiViewTransform, SupervisedTransform
from src.data.datamodule import DATAMODULES, CIFAR10DataModule, CIFAR100DataModule, build_datamodule
from tests.conftest import build_model

# The keys of conf/dataset/cifar10.yaml that the datamodule does not use (D-Q23).
IGNORED = {"name": "cifar10", "num_classes": 10, "flatten_dim": 3072, "subset": None, "resize_height": 256}


def make(data_dir: Path, task: str = "ssl", **kwargs: Any) -> CIFAR10DataModule:
    args: dict[str, Any] = dict(batch_size=8, num_workers=0, seed=1997, input_height=32) | kwargs
    return CIFAR10DataModule(data_dir=data_dir, task=task, **IGNORED, **args)


def test_fixture_has_the_real_pickle_layout(cifar10_dir: Path) -> None:
    """The CIFAR web page reads the batches with encoding='bytes'; torchvision with 'latin1'."""
    with open(cifar10_dir / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        entry = pickle.load(f, encoding="bytes")
    assert {b"data", b"labels", b"batch_label", b"filenames"} <= set(entry)
    assert entry[b"data"].dtype == np.uint8 and entry[b"data"].shape == (20, 3072)
    with open(cifar10_dir / "cifar-10-batches-py" / "batches.meta", "rb") as f:
        assert pickle.load(f, encoding="latin1")["label_names"][0] == "airplane"


@pytest.mark.parametrize("task", ["ssl", "ssl_bayes_h", "ssl_bayes_z", "ssl_bayes_h_and_z", "ssl_bayes_hierarchical"])
def test_ssl_batches(cifar10_dir: Path, task: str) -> None:
    dm = make(cifar10_dir, task)
    dm.setup("fit")
    dm.setup("test")
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        assert isinstance(batch, list) and len(batch) == 2
        views, y = batch
        assert len(views) == 3
        for v in views:
            assert v.shape == (8, 3, 32, 32) and v.dtype == torch.float32
        assert y.shape == (8,) and y.dtype == torch.int64
    # every split uses the 3-view transform
    assert isinstance(dm.train_ds.dataset.transform, MultiViewTransform)  # type: ignore[union-attr]
    assert isinstance(dm.val_ds.dataset.transform, MultiViewTransform)  # type: ignore[union-attr]
    assert isinstance(dm.test_ds.transform, MultiViewTransform)  # type: ignore[union-attr]


@pytest.mark.parametrize("task", ["supervised", "semi_supervised", "linear_classification"])
def test_supervised_batches(cifar10_dir: Path, task: str) -> None:
    dm = make(cifar10_dir, task)
    dm.setup(None)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert dm.train_ds.dataset.transform.train is True  # type: ignore[union-attr]
    assert dm.val_ds.dataset.transform.train is False  # type: ignore[union-attr]
    assert isinstance(dm.test_ds.transform, SupervisedTransform) and dm.test_ds.transform.train is False  # type: ignore[union-attr]


def test_pixels_and_labels_come_from_the_files(cifar10_dir: Path) -> None:
    """Test-set sample 3 through the (identity-sized) eval transform equals the written R/G/B planes."""
    with open(cifar10_dir / "cifar-10-batches-py" / "test_batch", "rb") as f:
        entry = pickle.load(f, encoding="bytes")
    dm = make(cifar10_dir, "supervised")
    dm.setup("test")
    x, y = dm.test_ds[3]  # type: ignore[index]
    expected = torch.from_numpy(entry[b"data"][3].reshape(3, 32, 32).astype(np.float32) / 255)
    mean, std = torch.tensor(CIFAR10_NORMALIZE["mean"]), torch.tensor(CIFAR10_NORMALIZE["std"])
    torch.testing.assert_close(x * std.view(3, 1, 1) + mean.view(3, 1, 1), expected, atol=1e-5, rtol=0)
    assert y == entry[b"labels"][3]


def test_split_sizes_disjointness_and_seed(cifar10_dir: Path) -> None:
    def indices(seed: int, val_split: Any = 0.2) -> tuple[list[int], list[int]]:
        dm = make(cifar10_dir, "supervised", seed=seed, val_split=val_split)
        dm.setup("fit")
        assert isinstance(dm.train_ds, Subset) and isinstance(dm.val_ds, Subset)
        return list(dm.train_ds.indices), list(dm.val_ds.indices)

    train, val = indices(1997)
    assert (len(train), len(val)) == (80, 20)
    assert set(train).isdisjoint(val) and sorted(train + val) == list(range(100))
    # the split is randperm(N) under a generator seeded with the run seed
    perm = torch.randperm(100, generator=torch.Generator().manual_seed(1997)).tolist()
    assert (train, val) == (perm[:80], perm[80:])
    assert indices(1997) == (train, val)
    assert indices(1998) != (train, val)
    assert [len(part) for part in indices(1997, 30)] == [70, 30]  # an int is an absolute count
    assert [len(part) for part in indices(1997, 0.25)] == [75, 25]


@pytest.mark.parametrize("bad", ["0.2", True, None, [0.2]])
def test_val_split_of_another_type_raises(cifar10_dir: Path, bad: Any) -> None:
    with pytest.raises(TypeError, match="val_split"):
        make(cifar10_dir, val_split=bad).setup("fit")


def test_val_split_out_of_range_raises(cifar10_dir: Path) -> None:
    with pytest.raises(ValueError, match="outside"):
        make(cifar10_dir, val_split=101).setup("fit")


def test_drop_last_applies_to_val_and_test(cifar10_dir: Path) -> None:
    dm = make(cifar10_dir, "supervised")
    dm.setup(None)
    # 20 val / 20 test images with B = 8: 2 full batches each, 4 images dropped (D-Q4)
    for loader in (dm.val_dataloader(), dm.test_dataloader()):
        assert loader.drop_last is True
        assert [len(y) for _, y in loader] == [8, 8]
    keep = make(cifar10_dir, "supervised", drop_last=False)
    keep.setup(None)
    assert [len(y) for _, y in keep.val_dataloader()] == [8, 8, 4]


def test_loader_options(cifar10_dir: Path) -> None:
    dm = make(cifar10_dir, "supervised", persistent_workers=True, pin_memory=True, shuffle=True)
    dm.setup(None)
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert train.batch_size == 8 and train.num_workers == 0
    assert train.persistent_workers is False  # torch refuses persistent workers without workers
    assert train.pin_memory is torch.cuda.is_available()
    assert isinstance(train.sampler, torch.utils.data.RandomSampler)
    assert isinstance(val.sampler, torch.utils.data.SequentialSampler)
    unshuffled = make(cifar10_dir, "supervised", shuffle=False)
    unshuffled.setup("fit")
    assert isinstance(unshuffled.train_dataloader().sampler, torch.utils.data.SequentialSampler)


def test_persistent_workers_with_workers(cifar10_dir: Path) -> None:
    dm = make(cifar10_dir, "supervised", num_workers=1, persistent_workers=True)
    dm.setup("test")
    assert dm.test_dataloader().persistent_workers is True


def test_train_iters_per_epoch(cifar10_dir: Path) -> None:
    dm = make(cifar10_dir, "supervised")
    with pytest.raises(AttributeError, match=r"setup\('fit'\)"):
        _ = dm.num_training_samples
    with pytest.raises(AttributeError, match="setup"):
        _ = dm.train_iters_per_epoch
    dm.setup("fit")
    assert dm.num_training_samples == 80 and dm.train_iters_per_epoch == 10
    assert len(dm.train_dataloader()) == dm.train_iters_per_epoch
    for drop_last, expected in ((True, 11), (False, 12)):  # 80 / 7 = 11.4
        other = make(cifar10_dir, "supervised", batch_size=7, drop_last=drop_last)
        other.setup("fit")
        assert other.train_iters_per_epoch == expected == len(other.train_dataloader())


def test_stages(cifar10_dir: Path) -> None:
    dm = make(cifar10_dir, "supervised")
    dm.setup("test")
    assert dm.train_ds is None and dm.val_ds is None and len(dm.test_ds) == 20  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match=r"setup\('fit'\)"):
        dm.train_dataloader()
    dm = make(cifar10_dir, "supervised")
    dm.setup("validate")
    assert len(dm.val_ds) == 20 and dm.test_ds is None  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match=r"setup\('test'\)"):
        dm.test_dataloader()


def test_unknown_task_raises(cifar10_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"dataset\.task='ssl_bayes'.*semi_supervised"):
        make(cifar10_dir, "ssl_bayes")


def test_normalize(cifar10_dir: Path, cifar100_dir: Path) -> None:
    assert make(cifar10_dir).normalize == CIFAR10_NORMALIZE
    dm100 = CIFAR100DataModule(data_dir=cifar100_dir, task="ssl")
    assert dm100.normalize == CIFAR100_NORMALIZE
    assert list(dm100.normalize_fn().mean) == list(CIFAR100_NORMALIZE["mean"])


def test_missing_files_name_path_layout_and_remedy(tmp_path: Path) -> None:
    dm = make(tmp_path / "nowhere", "ssl")
    with pytest.raises(FileNotFoundError) as info:
        dm.setup("fit")
    message = str(info.value)
    for part in (
        str(tmp_path / "nowhere" / "cifar-10-batches-py"),
        "data_batch_1",
        "data_batch_5",
        "test_batch",
        "batches.meta",
        "dataset.download=true",
        "cifar-10-python.tar.gz",
    ):
        assert part in message


def test_one_missing_file_is_named(cifar10_dir: Path) -> None:
    (cifar10_dir / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="missing test_batch"):
        make(cifar10_dir).setup("test")


def test_corrupt_files_give_a_clear_error(cifar10_unverified_dir: Path) -> None:
    """Without the integrity patch the fixture files fail torchvision's md5 check, like corrupt files."""
    with pytest.raises(RuntimeError) as info:
        make(cifar10_unverified_dir).setup("fit")
    message = str(info.value)
    assert "md5" in message and str(cifar10_unverified_dir / "cifar-10-batches-py") in message
    assert "dataset.download=true" in message


def test_download_is_passed_to_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    class Recorder:
        base_folder, train_list, test_list = "cifar-10-batches-py", [["data_batch_1", ""]], [["test_batch", ""]]
        meta: ClassVar[dict[str, str]] = {"filename": "batches.meta"}
        url, filename = "https://example.invalid/cifar.tar.gz", "cifar.tar.gz"

        def __init__(self, root: str, train: bool = True, download: bool = False, **kwargs: Any) -> None:
            calls.append({"root": root, "train": train, "download": download})

    monkeypatch.setattr(CIFAR10DataModule, "dataset_cls", Recorder)
    make(tmp_path, download=True).prepare_data()
    assert calls == [
        {"root": str(tmp_path), "train": True, "download": True},
        {"root": str(tmp_path), "train": False, "download": True},
    ]


def test_cifar100_fine_labels(cifar100_dir: Path) -> None:
    with open(cifar100_dir / "cifar-100-python" / "train", "rb") as f:
        fine = pickle.load(f, encoding="bytes")[b"fine_labels"]
    dm = CIFAR100DataModule(data_dir=cifar100_dir, task="semi_supervised", batch_size=8, **IGNORED)
    dm.setup(None)
    assert dm.num_training_samples == 80 and len(dm.val_ds) == 20 and len(dm.test_ds) == 20  # type: ignore[arg-type]
    assert [dm.train_ds.dataset.targets[i] for i in dm.train_ds.indices] == [fine[i] for i in dm.train_ds.indices]  # type: ignore[union-attr]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and int(y.max()) < 100


def test_cifar100_missing_names_its_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python.*train, test, meta"):
        CIFAR100DataModule(data_dir=tmp_path, task="ssl").setup("fit")


def test_registry(cifar10_dir: Path) -> None:
    assert DATAMODULES["cifar10"] is CIFAR10DataModule and DATAMODULES["cifar100"] is CIFAR100DataModule
    dm = build_datamodule("cifar10", data_dir=cifar10_dir, task="ssl")
    assert isinstance(dm, CIFAR10DataModule) and dm.batch_size == 256 and dm.seed == 1997
    with pytest.raises(ValueError, match=r"dataset: 'mnist' is not a known datamodule; known: cifar10, "):
        build_datamodule("mnist", data_dir=cifar10_dir, task="ssl")


# ------------------------------------------------- augment_on_device: the SSL views on the training device


def test_option_values(cifar10_dir: Path) -> None:
    assert make(cifar10_dir).device_augment is None  # default: the CPU path
    assert make(cifar10_dir, augment_on_device=False).augment_on_device is False
    assert make(cifar10_dir, augment_on_device="auto").augment_on_device is torch.cuda.is_available()
    assert make(cifar10_dir, "supervised", augment_on_device=True).augment_on_device is False  # ssl task type only
    with pytest.raises(ValueError, match="augment_on_device"):
        make(cifar10_dir, augment_on_device="gpu")


def test_datamodule_yields_uint8_and_the_hook_makes_the_ssl_batch(cifar10_dir: Path) -> None:
    dm = make(cifar10_dir, augment_on_device=True)
    dm.setup("fit")
    dm.setup("test")
    cpu = make(cifar10_dir)
    cpu.setup("fit")
    # the same split indices as the CPU path
    assert dm.train_ds.indices == cpu.train_ds.indices and dm.val_ds.indices == cpu.val_ds.indices  # type: ignore[union-attr]
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        x, y = next(iter(loader))
        assert x.dtype == torch.uint8 and x.shape == (8, 3, 32, 32) and y.dtype == torch.int64
        batch = dm.on_after_batch_transfer([x, y], 0)
        views, labels = batch
        assert len(views) == 3 and labels is y
        assert all(v.shape == (8, 3, 32, 32) and v.dtype == torch.float32 for v in views)
    # val is unshuffled: its finetune view equals the CPU path's, bit for bit
    (_, _, v3), y = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    (_, _, cpu_v3), cpu_y = next(iter(cpu.val_dataloader()))
    assert torch.equal(v3, cpu_v3) and torch.equal(y, cpu_y)
    # an already-augmented batch passes unchanged
    assert cpu.on_after_batch_transfer(batch, 0) is batch and dm.on_after_batch_transfer(batch, 0) is batch


class BatchRecorder(pl.Callback):
    def __init__(self) -> None:
        self.batches: list[Any] = []

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.batches.append(batch)


def test_lightning_fit_with_device_augmentation(cifar10_dir: Path, tmp_path: Path) -> None:
    pl.seed_everything(0)
    dm = make(cifar10_dir, augment_on_device=True)
    model = build_model("ssl", "barlow_twins", batch_size=8, num_classes=10)
    recorder = BatchRecorder()
    trainer = pl.Trainer(
        max_epochs=1,  # the cosine schedule needs an epoch count
        limit_train_batches=2,
        limit_val_batches=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
        callbacks=[recorder],
    )
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 2
    (x1, x2, x3), y = recorder.batches[0]
    assert y.dtype == torch.int64 and x1.dtype == torch.float32 and x1.shape == x2.shape == x3.shape == (8, 3, 32, 32)
    assert not torch.equal(x1, x2)
    # the epoch-end validation ran on device-augmented val batches too
    assert math.isfinite(float(trainer.callback_metrics["val_loss"]))
