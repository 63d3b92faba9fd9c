"""ImageNet-1k and its 1 % / 10 % subsets.

Both datamodules read the extracted folder layout with torchvision's ``ImageFolder``::

    <data_dir>/train/<wnid>/*.JPEG    training images (the subset images for imagenet1pct/10pct)
    <data_dir>/val/<wnid>/*.JPEG      the 50,000 validation images, sorted into the same wnid folders

The class index is the position of the wnid in the sorted folder list, computed separately for
``train/`` and ``val/`` exactly as in the reference; a check that both hold the same wnids
guards against shifted labels (D-Q3). Val and test are the same images (D-Q3).

Deviation from the reference (D-Q20): no archive check and no download. ImageNet needs a login
at image-net.org, so missing folders raise a ``FileNotFoundError`` that says how to get and
extract the data; the tar archives and ``meta.bin`` are not needed once the folders exist.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from src.data.augment.transforms import IMAGENET_NORMALIZE, ImageNetSupervisedTransform, imagenet_ssl_transform
from src.data.datamodule.base import DATAMODULES, BaseDataModule
from src.data.dataset.image_file import load_rgb_image

SPLITS = ("train", "val")
# Names listed in an error message; the rest are counted.
_MAX_LISTED = 10


def _preview(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", … ({len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else "")


def class_folders(folder: Path) -> list[str]:
    """Sorted names of the sub-folders of ``folder`` (ImageFolder's class list; symlinks followed)."""
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


@DATAMODULES.register("imagenet")
class ImageNetDataModule(BaseDataModule):
    """ImageNet-1k from ``<data_dir>/train`` and ``<data_dir>/val``.

    Splits: train = ``train/``; val = test = ``val/`` (with ``drop_last``, 195 batches = 49,920
    images of 256). ``val_split`` is stored but unused.

    Args:
        data_dir: the root holding ``train/`` and ``val/``.
        task: config task name; ssl types get the 3-view transform (``imagenet_ssl_transform``), the others
            ``ImageNetSupervisedTransform``.
        resize_height: shorter side before the evaluation center crop (256).
        input_height: crop side H (224).
        **kwargs: the other ``BaseDataModule`` arguments and ignored config keys.
    """

    mean = IMAGENET_NORMALIZE["mean"]
    std = IMAGENET_NORMALIZE["std"]
    display_name = "ImageNet"
    #: whether a train class folder may hold no image (subsets keep all 1000 folders for the labels)
    allow_empty_train_classes = False

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        task: str,
        resize_height: int = 256,
        input_height: int = 224,
        **kwargs: Any,
    ) -> None:
        self.resize_height = int(resize_height)
        super().__init__(data_dir, task, input_height=input_height, **kwargs)

    def get_transform(self, stage: str) -> Callable[[Any], Any]:
        """ssl types: the ImageNet 3-view transform; others: ``ImageNetSupervisedTransform``.

        The supervised transform is in train mode for ``stage == "train"`` only.
        """
        if self.task_type == "ssl":
            return imagenet_ssl_transform(finetune_size=self.input_height)
        return ImageNetSupervisedTransform(
            train=stage == "train",
            resize_height=self.resize_height,
            input_height=self.input_height,
            normalize=self.normalize,
        )

    def _how_to_obtain(self) -> str:
        root = self.data_dir
        return (
            "ImageNet cannot be downloaded automatically: image-net.org requires a login. Download "
            "ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and ILSVRC2012_devkit_t12.tar.gz from "
            f"https://image-net.org/ into {root}, then extract them into the folder layout, e.g. with "
            f"`python -c \"from torchvision.datasets import ImageNet; ImageNet('{root}', split='train'); "
            f"ImageNet('{root}', split='val')\"` (torchvision unpacks the local archives, no network needed)."
        )

    def check_layout(self) -> list[str]:
        """Check ``train/`` and ``val/`` exist and hold the same class folders; return the sorted wnids.

        Raises:
            FileNotFoundError: a split folder is missing or holds no class folder.
            ValueError: ``train/`` and ``val/`` hold different class folders (labels would shift, D-Q3).
        """
        layout = (
            f"Expected layout: {self.data_dir}/train/<wnid>/*.JPEG and {self.data_dir}/val/<wnid>/*.JPEG "
            "(the same wnid folders in both)."
        )
        missing = [f"{split}/" for split in SPLITS if not (self.data_dir / split).is_dir()]
        if missing:
            raise FileNotFoundError(
                f"{self.display_name} not found at {self.data_dir}: missing {' and '.join(missing)}. {layout} "
                + self._how_to_obtain()
            )
        classes = {split: class_folders(self.data_dir / split) for split in SPLITS}
        for split, names in classes.items():
            if not names:
                raise FileNotFoundError(f"{self.data_dir / split} holds no class folder. {layout}")
        if classes["train"] != classes["val"]:
            only_train = sorted(set(classes["train"]) - set(classes["val"]))
            only_val = sorted(set(classes["val"]) - set(classes["train"]))
            raise ValueError(
                f"{self.data_dir}: train/ has {len(classes['train'])} class folders and val/ has "
                f"{len(classes['val'])}; class indices would not match between them. "
                f"Only in train/ ({len(only_train)}): {_preview(only_train) or '-'}. "
                f"Only in val/ ({len(only_val)}): {_preview(only_val) or '-'}."
            )
        return classes["train"]

    def prepare_data(self) -> None:
        """Check the folder layout (nothing is downloaded, see the module docstring)."""
        self.check_layout()

    def _image_folder(self, split: str, transform: Callable[[Any], Any], allow_empty_classes: bool) -> ImageFolder:
        folder = self.data_dir / split
        # load_rgb_image: a corrupted file fails with its path (PIL alone may not name it).
        dataset = ImageFolder(str(folder), transform=transform, loader=load_rgb_image, allow_empty=True)
        if len(dataset) == 0:
            raise FileNotFoundError(
                f"{folder} holds class folders but no image (extensions {', '.join(IMG_EXTENSIONS)}); "
                f"expected {folder}/<wnid>/*.JPEG"
            )
        counts = torch.bincount(torch.as_tensor(dataset.targets), minlength=len(dataset.classes)).tolist()
        empty = [name for name, count in zip(dataset.classes, counts, strict=True) if count == 0]
        if empty:
            message = (
                f"{len(empty)} of {len(dataset.classes)} class folders in {folder} hold no image: {_preview(empty)}"
            )
            if not allow_empty_classes:
                raise FileNotFoundError(
                    f"{message}. Put the class's *.JPEG files back (re-extract the archive of {split}/), or remove "
                    "the folder from both train/ and val/ so that the class indices still match"
                )
            warnings.warn(message + " (kept, so that class indices match val/)", stacklevel=2)
        return dataset

    def setup(self, stage: str | None = None) -> None:
        """fit / validate / None: train = ``train/``, val = ``val/``; test / None: test = ``val/``.

        The layout check runs first on every call (it is all that ``prepare_data`` does, D-Q21).
        """
        self.check_layout()
        if stage in (None, "fit", "validate"):
            self.train_ds = self._image_folder("train", self.transform("train"), self.allow_empty_train_classes)
            self.val_ds = self._image_folder("val", self.transform("val"), False)
        if stage in (None, "test"):
            self.test_ds = self._image_folder("val", self.transform("test"), False)


@DATAMODULES.register("imagenet1pct")
@DATAMODULES.register("imagenet10pct")
class SubsetImageNetDataModule(ImageNetDataModule):
    """An ImageNet 1 % / 10 % subset root (semi-supervised stages).

    Reads ``<data_dir>/train`` (the subset images, all 1000 wnid folders) and ``<data_dir>/val``
    (the full validation set). The config's ``subset`` fraction is ignored: the folder content
    defines the subset (D-Q2). Build the root with ``src/experiments/scripts/build_imagenet_subset.py``.
    ``prepare_data`` does nothing; ``setup`` still checks the layout.
    """

    display_name = "ImageNet subset"
    allow_empty_train_classes = True

    def __init__(self, data_dir: str | os.PathLike[str], task: str = "semi_supervised", **kwargs: Any) -> None:
        super().__init__(data_dir, task, **kwargs)

    def _how_to_obtain(self) -> str:
        percent = "10percent" if "10pct" in self.data_dir.name else "1percent"
        return (
            "Build it from the full ImageNet root and the SimCLR subset list with "
            f"`python -m src.experiments.scripts.build_imagenet_subset --imagenet-root data/datasets/imagenet "
            f"--split-file {percent}.txt --output-root {self.data_dir}` (its docstring says where the lists come "
            "from). The full ImageNet root must exist first; it cannot be downloaded automatically, since "
            "image-net.org requires a login."
        )

    def prepare_data(self) -> None:
        """No-op, as in the reference; ``setup`` checks the layout."""
