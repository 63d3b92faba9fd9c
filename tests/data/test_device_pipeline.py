"""The device data path end to end: a tiny pretraining and finetune through ``run_pipeline`` with
``dataset.augment_on_device=true`` on CIFAR-10 and Fashion-MNIST fixture files (on the CPU here, the
same code as on a GPU), and the finetune phase building only the view it reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from src.data.augment.device_views import DeviceSSLAugment
from src.data.datamodule.device_loader import DeviceBatchLoader
from src.train.pipeline import run_pipeline
from tests.conftest import compose_config

#: a pipeline run in seconds on the fixture files (B 8, small heads, a few batches)
TINY = [
    "dataset.batch_size=8",
    "dataset.num_workers=0",
    "model.backbone.hidden_dim=32",
    "model.backbone.z_dim=32",
    "train.trainer.max_epochs=1",
    "+train.trainer.limit_train_batches=2",
    "+train.trainer.limit_val_batches=1",
    "finetune.trainer.max_epochs=2",
    "+finetune.trainer.limit_train_batches=2",
    "+finetune.trainer.limit_val_batches=1",
    "+finetune.trainer.limit_test_batches=1",
    "train.trainer.accelerator=cpu",
    "finetune.trainer.accelerator=cpu",
    "logging.progress=none",
]


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["cifar10", "fashion_mnist"])
def test_forced_device_path_runs_pretraining_and_finetune(
    dataset: str,
    cifar10_dir: Path,
    fashion_mnist_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    calls: list[tuple[tuple[int, ...], tuple[int, ...]]] = []  # (views built, input shape)
    forward = DeviceSSLAugment.forward

    def recording_forward(self: DeviceSSLAugment, x: torch.Tensor, views: Any = (0, 1, 2)) -> Any:
        calls.append((tuple(views), tuple(x.shape)))
        return forward(self, x, views)

    monkeypatch.setattr(DeviceSSLAugment, "forward", recording_forward)
    iterated: list[DeviceBatchLoader] = []
    iterate = DeviceBatchLoader.__iter__

    def recording_iter(self: DeviceBatchLoader) -> Any:
        iterated.append(self)
        return iterate(self)

    monkeypatch.setattr(DeviceBatchLoader, "__iter__", recording_iter)

    root = cifar10_dir if dataset == "cifar10" else fashion_mnist_dir
    extra = ["dataset.val_split=0.25"] if dataset == "fashion_mnist" else []
    cfg = compose_config(
        f"dataset={dataset}",
        f"dataset.data_dir={root}",
        "dataset.augment_on_device=true",
        "+model/task/ssl@train=ssl_bayes_h",
        "model/loss=mc_barlow_twins",
        "train.mc_samples=2",
        "+model/task@finetune=finetune",
        f"output_path={tmp_path / 'run'}",
        *TINY,
        *extra,
    )
    results = run_pipeline(cfg)
    assert results is not None
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved == results
    assert all(torch.isfinite(torch.tensor(v)) for v in results["metrics"].values())
    assert {"test_offline_acc", "test_offline_loss"} <= set(results["offline_metrics"])

    channels = 3 if dataset == "cifar10" else 1  # Fashion-MNIST's grey images stay one channel until the views
    side = 32 if dataset == "cifar10" else 28
    assert all(shape == (8, channels, side, side) for _, shape in calls)
    # pretraining builds the three views; from the first finetune batch on only x3 is built
    first_finetune = next(i for i, (views, _) in enumerate(calls) if views != (0, 1, 2))
    assert first_finetune > 0 and all(views == (0, 1, 2) for views, _ in calls[:first_finetune])
    assert all(views == (2,) for views, _ in calls[first_finetune:])
    # every loader of both phases was a device loader (no DataLoader, no workers)
    assert iterated and all(isinstance(loader, DeviceBatchLoader) for loader in iterated)
    assert any(loader.shuffle for loader in iterated) and any(not loader.shuffle for loader in iterated)


@pytest.mark.slow
def test_pil_path_with_workers_leaves_unread_views_out_without_changing_a_number(
    cifar10_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the PIL path with workers, ``skip_unread_views: auto`` drops x1/x2 from the finetune's batches; the
    workers' streams are their own, so the finetune's metrics equal those of a run that builds all three."""
    from src.task.finetuning import LastLayerFinetuner

    monkeypatch.chdir(tmp_path)
    built: list[bool] = []  # per finetune batch: whether x1 was built
    inputs = LastLayerFinetuner.inputs

    def recording_inputs(self: LastLayerFinetuner, batch: Any) -> torch.Tensor:
        built.append(batch[0][0] is not None)
        return inputs(self, batch)

    monkeypatch.setattr(LastLayerFinetuner, "inputs", recording_inputs)
    results, views_built = {}, {}
    for skip in ("auto", "false"):
        built.clear()
        cfg = compose_config(
            "dataset=cifar10",
            f"dataset.data_dir={cifar10_dir}",
            "dataset.augment_on_device=false",
            f"dataset.skip_unread_views={skip}",
            "+model/task/ssl@train=ssl",
            "model/loss=barlow_twins",
            "+model/task@finetune=finetune",
            f"output_path={tmp_path / skip}",
            *[o for o in TINY if o != "dataset.num_workers=0"],
            "dataset.num_workers=1",
            "dataset.persistent_workers=false",
        )
        results[skip] = run_pipeline(cfg)
        views_built[skip] = set(built)
    assert views_built == {"auto": {False}, "false": {True}}
    assert results["auto"] is not None and results["false"] is not None
    assert results["auto"]["metrics"] == results["false"]["metrics"]
    assert results["auto"]["offline_metrics"] == results["false"]["offline_metrics"]
