"""The OpenOOD v1.5 protocol on disk: splits, image lists and preprocessing.

``<data_root>/benchmark_imglist/<id_name>/*.txt`` name images relative to
``<data_root>/images_classic/``. Two protocols are known:

- ``cifar10``: ID train/val/test ``train_cifar10.txt`` (50,000), ``val_cifar10.txt`` (1,000),
  ``test_cifar10.txt`` (9,000); validation OOD ``val_tin.txt``; near-OOD cifar100, tin; far-OOD
  mnist, svhn, texture, places365. The reference also required ``test_cifar10c.txt``, which is
  never read (O-Q15): it is not required here.
- ``demo``: the embedded demo (src/data/prepare/demo_data.py), described by its ``protocol.json``.
- ``fashion_mnist`` and ``fashion_mnist_split``: Fashion-MNIST (src/data/prepare/fashion_mnist_data.py), each
  described by its ``protocol.json``; ``fashion_mnist`` has no near-OOD set.

Preprocessing: ``default`` = RGB → resize shorter side → centre crop → ToTensor → Normalize
(OpenOOD's statistics, O-Q4); ``barlowtwins`` = three views [v1, v2, v3] (BYOL views 1 and 2
with blur off, view 2 solarized with p 0.2, and the plain resize + crop view), all normalised
with mean = std = 0.5 (the reference's fallback, O-Q3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader
from torchvision import transforms as T

from src.data.augment.transforms import BYOLViewTransform, MultiViewTransform, ToRGB
from src.data.dataset.imglist import ImageListDataset
from src.utils.io import read_json

HALF_NORMALIZE = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


class RepeatedView:
    """``[t(x)] * 3``: the three-view batch layout with only the plain view computed (picklable)."""

    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def __call__(self, image: Any) -> list[Any]:
        return [self.transform(image)] * 3


@dataclass(frozen=True)
class Protocol:
    """Lists (file names inside ``benchmark_imglist/<id_name>/``) and preprocessing of one ID dataset."""

    id_name: str
    data_root: Path
    image_size: int
    normalize: dict[str, tuple[float, ...]]
    id_lists: dict[str, str]  # train, val, test
    ood_val: str
    near: dict[str, str]  # OOD set name -> list, in table order
    far: dict[str, str]
    num_classes: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def list_dir(self) -> Path:
        return self.data_root / "benchmark_imglist" / self.id_name

    @property
    def images_root(self) -> Path:
        return self.data_root / "images_classic"

    def all_lists(self) -> dict[str, str]:
        """Every list by split key: id/train, id/val, id/test, ood/val, ood/near/<n>, ood/far/<n>."""
        lists = {f"id/{k}": v for k, v in self.id_lists.items()}
        lists["ood/val"] = self.ood_val
        lists.update({f"ood/near/{k}": v for k, v in self.near.items()})
        lists.update({f"ood/far/{k}": v for k, v in self.far.items()})
        return lists

    def check(self) -> None:
        """Fail early, naming every missing list file, with the expected layout."""
        missing = [
            str(self.list_dir / name) for name in self.all_lists().values() if not (self.list_dir / name).is_file()
        ]
        if not self.images_root.is_dir():
            missing.append(str(self.images_root) + "/")
        if missing:
            raise FileNotFoundError(
                f"the OOD protocol {self.id_name!r} is incomplete under --data-root-dir {self.data_root}: missing "
                + ", ".join(missing)
                + f". Expected OpenOOD v1.5's layout: {self.list_dir}/<list>.txt and the images under "
                f"{self.images_root}/ (for cifar10, download OpenOOD v1.5's benchmark_imglist and images_classic; "
                "for the demo, run src/experiments/scripts/prepare_demo_data.py; for fashion_mnist and "
                "fashion_mnist_split, src/experiments/scripts/prepare_fashion_mnist.py)"
            )

    # -- preprocessing ------------------------------------------------------------------------------
    def pil_steps(self) -> list[Any]:
        """The PIL part of the plain view: RGB, resize of the shorter side, centre crop. What follows
        (ToTensor, Normalize) is elementwise, so the OOD input cache stores the uint8 result of these
        steps and redoes the rest per batch (``src/ood/cache.py``)."""
        size = self.image_size
        return [ToRGB(), T.Resize(size), T.CenterCrop(size)]

    def normalization(self, kind: str) -> dict[str, tuple[float, ...]]:
        """The mean and std of preprocessor ``kind``'s Normalize step."""
        if kind == "default":
            return self.normalize
        if kind == "barlowtwins":
            return HALF_NORMALIZE
        raise ValueError(f"unknown preprocessor {kind!r}; use 'default' or 'barlowtwins'")

    def plain_transform(self, normalize: dict[str, tuple[float, ...]]) -> T.Compose:
        return T.Compose([*self.pil_steps(), T.ToTensor(), T.Normalize(normalize["mean"], normalize["std"])])

    def preprocessor(self, kind: str, augmented_views: bool = True) -> Any:
        """The transform of preprocessor ``kind`` (``default`` or ``barlowtwins``).

        With ``augmented_views=False`` the Barlow Twins preprocessor returns the plain view three
        times: for detectors that read only v3 the random views are wasted work (O-Q31).
        """
        if kind == "default":
            return self.plain_transform(self.normalize)
        if kind == "barlowtwins" and not augmented_views:
            return RepeatedView(self.plain_transform(HALF_NORMALIZE))
        if kind == "barlowtwins":
            common = dict(input_size=self.image_size, gaussian_blur=0.0, normalize=HALF_NORMALIZE)
            return MultiViewTransform(
                [
                    BYOLViewTransform(solarization_prob=0.0, **common),
                    BYOLViewTransform(solarization_prob=0.2, **common),
                    self.plain_transform(HALF_NORMALIZE),
                ]
            )
        raise ValueError(f"unknown preprocessor {kind!r}; use 'default' or 'barlowtwins'")

    def input_std(self, kind: str) -> tuple[float, ...]:
        return tuple(self.normalize["std"] if kind == "default" else HALF_NORMALIZE["std"])

    def loader(
        self, split: str, kind: str, batch_size: int = 200, num_workers: int = 0, augmented_views: bool = True
    ) -> DataLoader:
        """A loader over list ``split`` (a key of ``all_lists``), not shuffled."""
        transform = self.preprocessor(kind, augmented_views)
        dataset = ImageListDataset(self.images_root, self.list_dir / self.all_lists()[split], transform)
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)


CIFAR10_OPENOOD_NORMALIZE = {"mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616)}


def cifar10_protocol(data_root: Path) -> Protocol:
    return Protocol(
        id_name="cifar10",
        data_root=data_root,
        image_size=32,
        normalize=CIFAR10_OPENOOD_NORMALIZE,
        id_lists={"train": "train_cifar10.txt", "val": "val_cifar10.txt", "test": "test_cifar10.txt"},
        ood_val="val_tin.txt",
        near={"cifar100": "test_cifar100.txt", "tin": "test_tin.txt"},
        far={
            "mnist": "test_mnist.txt",
            "svhn": "test_svhn.txt",
            "texture": "test_texture.txt",
            "places365": "test_places365.txt",
        },
        num_classes=10,
    )


def json_protocol(id_name: str, data_root: Path, prepare_hint: str) -> Protocol:
    """A protocol described by ``<data_root>/benchmark_imglist/<id_name>/protocol.json``.

    ``prepare_hint`` names what writes that file, for the error messages.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it is not valid JSON or lacks a key.
    """
    path = data_root / "benchmark_imglist" / id_name / "protocol.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: --data-root-dir must be the root of the {id_name} data, written by {prepare_hint}"
        )
    p = read_json(path)  # invalid JSON: a ValueError naming the file
    missing = [key for key in ("image_size", "normalize", "id", "ood", "num_classes") if key not in p]
    if missing:
        raise ValueError(
            f"{path} lacks {', '.join(missing)}; it is not a {id_name} protocol file: rebuild it with {prepare_hint}"
        )
    return Protocol(
        id_name=id_name,
        data_root=data_root,
        image_size=int(p["image_size"]),
        normalize={k: tuple(v) for k, v in p["normalize"].items()},
        id_lists=dict(p["id"]),
        ood_val=p["ood"]["val"],
        near=dict(p["ood"]["near"]),
        far=dict(p["ood"]["far"]),
        num_classes=int(p["num_classes"]),
    )


def demo_protocol(data_root: Path) -> Protocol:
    """The embedded demo (data/demo/dataset)."""
    return json_protocol("demo", data_root, "src/experiments/scripts/prepare_demo_data.py (data/demo/dataset)")


_FASHION_HINT = "src/experiments/scripts/prepare_fashion_mnist.py (data/datasets/fashion_mnist)"


def fashion_mnist_protocol(data_root: Path) -> Protocol:
    """Fashion-MNIST, all ten classes ID; far-OOD digits and noise (src/data/prepare/fashion_mnist_data.py)."""
    return json_protocol("fashion_mnist", data_root, _FASHION_HINT)


def fashion_mnist_split_protocol(data_root: Path) -> Protocol:
    """Fashion-MNIST's open-set split: classes 0-5 ID, 6-9 near-OOD; far-OOD digits and noise."""
    return json_protocol("fashion_mnist_split", data_root, _FASHION_HINT)


PROTOCOLS = {
    "cifar10": cifar10_protocol,
    "demo": demo_protocol,
    "fashion_mnist": fashion_mnist_protocol,
    "fashion_mnist_split": fashion_mnist_split_protocol,
}


def get_protocol(in_dataset: str, data_root: str | Path) -> Protocol:
    if in_dataset not in PROTOCOLS:
        raise ValueError(f"--in-dataset {in_dataset!r} has no OOD protocol; use one of {sorted(PROTOCOLS)}")
    protocol = PROTOCOLS[in_dataset](Path(data_root))
    protocol.check()
    return protocol
