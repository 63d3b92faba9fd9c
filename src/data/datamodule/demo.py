"""The embedded demo dataset as a training datamodule (digits 0–7 of scikit-learn, see src/data/prepare/demo_data.py).

Reads the ID lists written by ``prepare_demo_data`` through the same ``ImageListDataset`` as the
OOD protocol, so the demo runs through the loaders of real data. The demo has its own val list
(disjoint from test), so ``val_split`` is unused. With ``download: true`` (the demo config's
default) a missing dataset is built from the data bundled in scikit-learn: no network is used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from src.data.datamodule.base import DATAMODULES, BaseDataModule
from src.data.dataset.imglist import ImageListDataset
from src.data.prepare.demo_data import ID_NAME, prepare_demo_data, protocol_path, read_protocol

#: the seed of the demo data itself (not the run seed: every run sees the same dataset)
DEMO_DATA_SEED = 1997


@DATAMODULES.register("demo")
class DemoDataModule(BaseDataModule):
    """Train/val/test splits of the demo's in-distribution digits, CIFAR-style transforms.

    Normalisation statistics come from the dataset's ``protocol.json`` (computed on its
    train split when it was written).
    """

    def __init__(self, data_dir: str | os.PathLike[str], task: str, input_height: int = 16, **kwargs: Any) -> None:
        super().__init__(data_dir=data_dir, task=task, input_height=input_height, **kwargs)
        self.protocol: dict[str, Any] | None = None

    def prepare_data(self) -> None:
        if protocol_path(self.data_dir).is_file():
            return
        if not self.download:
            raise FileNotFoundError(
                f"the demo dataset is missing: {protocol_path(self.data_dir)} does not exist. Build it with "
                f"`python src/experiments/scripts/prepare_demo_data.py --output-root {self.data_dir}` "
                "(it uses only data bundled in scikit-learn), or set dataset.download=true"
            )
        prepare_demo_data(Path(self.data_dir), image_size=self.input_height, seed=DEMO_DATA_SEED)

    def _dataset(self, protocol: dict[str, Any], split: str) -> ImageListDataset:
        lists = self.data_dir / "benchmark_imglist" / ID_NAME
        return ImageListDataset(
            self.data_dir / "images_classic", lists / protocol["id"][split], transform=self.transform(split)
        )

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()
        protocol = self.protocol = read_protocol(self.data_dir)
        self.mean = tuple(protocol["normalize"]["mean"])
        self.std = tuple(protocol["normalize"]["std"])
        if stage in ("fit", "validate", None):
            self.train_ds = self._dataset(protocol, "train")
            self.val_ds = self._dataset(protocol, "val")
        if stage in ("test", None):
            self.test_ds = self._dataset(protocol, "test")
