"""The OOD study's on-disk store: decoded inputs and encoder outputs, computed once for every stage.

The paper's nine stages (``ood_detection_study@cifar10-<detector>``) are nine processes over the same
runs and the same image lists. Two things they compute are the same in every stage and are kept here,
content-addressed, under ``--cache-dir`` (default ``data/cache/ood``, outside every DVC out):

- ``inputs/``: per image list, the images after the PIL steps of the plain view (RGB, resize, centre
  crop) as uint8 [N, 3, H, W], with the list's labels. The rest of the preprocessing (ToTensor,
  Normalize) is elementwise in float32 and is redone per batch bit for bit
  (:func:`to_float`), so one entry serves both preprocessors (``default`` and the plain view of
  ``barlowtwins``). The random views v1/v2 of ``barlowtwins`` (logpprior) are still decoded through
  PIL: they are new random draws every time.
- ``encodings/``: per (run, list, preprocessor), the encoder output e [N, E] float32 of every batch,
  deterministic for all three models. The Gaussian head, the MC samples, the projector and the
  finetuned predictor run from it in each stage, with the stage's seeded draws.

An entry's key is the SHA-256 of a JSON description of everything that determines its value: for
inputs the list file's content, the (relative path, size, mtime_ns) of every image it names, the image
size, the PIL steps and the PIL/torchvision versions; for encodings the content hashes of the run's
``model.ckpt`` and finetuner ``last.ckpt`` (a file's hash is itself cached by (path, size, mtime_ns)),
the input entry's key, the normalisation, the batch size, the dtype, the device (type and card name),
the torch version, and the code version (:data:`CODE_VERSION` and the content of the source files that
compute the entry, :data:`SOURCES`). Changing any of them gives a new key; nothing is ever
overwritten with other content.

An entry is one file: a magic line, a JSON header (the description, the arrays' dtypes and shapes, the
SHA-256 of the payload) and the raw arrays. It is written atomically (a temporary file renamed over the
target, :func:`src.utils.io.atomic_write`), so two stages writing the same key at once leave one
complete entry with the same content. A damaged entry (truncated, wrong size, payload hash mismatch,
unreadable header) is reported with a warning and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
import torchvision
from torch import Tensor
from torch.utils.data import DataLoader

from src.data.dataset.imglist import ImageListDataset, read_image_list
from src.ood.features import Batch
from src.utils.io import atomic_write, read_json, write_text

log = logging.getLogger(__name__)

#: bump when what an entry holds changes for the same key (the decoding steps, the encoder call)
CODE_VERSION = {"inputs": 1, "encodings": 1}
_SRC = Path(__file__).resolve().parents[1]
#: the source files that compute an entry: their content is part of its key, so an edit to any of them
#: (the decoding, the loading of a model, the encoder) gives new entries instead of stale ones
SOURCES = {
    "inputs": ("ood/cache.py", "ood/protocol.py", "data/augment/transforms.py", "data/dataset/imglist.py"),
    "encodings": ("ood/cache.py", "ood/wrapper.py", "task/ssl.py", "task/checkpoint.py", "model/encoder.py"),
}


def source_digest(kind: str) -> str:
    """SHA-256 over the source files of :data:`SOURCES` ``[kind]`` (the code version of an entry)."""
    digest = hashlib.sha256()
    for rel in SOURCES[kind]:
        digest.update(rel.encode() + b"\0" + (_SRC / rel).read_bytes() + b"\0")
    return digest.hexdigest()


MAGIC = b"OOD-CACHE 1\n"
#: where ``run_ood_study.py`` keeps the store unless told otherwise (git-ignored, no DVC out)
DEFAULT_CACHE_DIR = Path("data/cache/ood")


class CacheEntryError(ValueError):
    """A cache entry cannot be read back: truncated, wrong size, payload hash mismatch, bad header."""


def spec_key(spec: dict[str, Any]) -> str:
    """The SHA-256 of ``spec`` as canonical JSON: an entry's name."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_entry(path: Path, spec: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """One entry, atomically: magic, header length (8 bytes little-endian), JSON header, raw arrays."""
    arrays = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    digest = hashlib.sha256()
    for a in arrays.values():
        digest.update(memoryview(a).cast("B"))
    header = {
        "spec": spec,
        "arrays": [{"name": n, "dtype": a.dtype.str, "shape": list(a.shape)} for n, a in arrays.items()],
        "sha256": digest.hexdigest(),
    }
    raw = json.dumps(header, sort_keys=True).encode()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(MAGIC)
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for a in arrays.values():
                f.write(memoryview(a).cast("B"))

    atomic_write(path, write)


def read_entry(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(spec, arrays) of an entry.

    Raises:
        CacheEntryError: the file is not a complete, intact entry (the message says what is wrong).
    """
    data = path.read_bytes()
    start = len(MAGIC) + 8
    if len(data) < start or not data.startswith(MAGIC):
        raise CacheEntryError(f"{path}: not a cache entry (bad magic or shorter than its header)")
    (size,) = struct.unpack("<Q", data[len(MAGIC) : start])
    try:
        header = json.loads(data[start : start + size])
        layout = [(a["name"], np.dtype(a["dtype"]), tuple(a["shape"])) for a in header["arrays"]]
    except (ValueError, KeyError, TypeError) as err:
        raise CacheEntryError(f"{path}: unreadable header ({err})") from err
    offset = start + size
    expected = offset + sum(dt.itemsize * int(np.prod(shape, dtype=np.int64)) for _, dt, shape in layout)
    if len(data) != expected:
        raise CacheEntryError(f"{path}: {len(data)} bytes, the header announces {expected} (truncated or extended)")
    payload = memoryview(data)[offset:]
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise CacheEntryError(f"{path}: the payload's SHA-256 does not match the header (damaged)")
    arrays = {}
    for name, dt, shape in layout:
        n = dt.itemsize * int(np.prod(shape, dtype=np.int64))
        arrays[name] = np.frombuffer(data, dtype=dt, count=n // dt.itemsize, offset=offset).reshape(shape)
        offset += n
    return header["spec"], arrays


@dataclass
class CacheStats:
    """What a study took from the store and what it computed (logged at the end, read by the tests)."""

    inputs_loaded: int = 0
    inputs_computed: int = 0
    images_decoded: int = 0
    encodings_loaded: int = 0
    encodings_computed: int = 0
    images_encoded: int = 0
    damaged: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"OOD cache: input lists {self.inputs_loaded} loaded, {self.inputs_computed} decoded "
            f"({self.images_decoded} images); encodings {self.encodings_loaded} loaded, "
            f"{self.encodings_computed} computed ({self.images_encoded} images)"
            + (f"; {len(self.damaged)} damaged entries recomputed" if self.damaged else "")
        )


class OODCache:
    """The store under ``root`` (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.stats = CacheStats()
        self._digests: dict[tuple[str, int, int], str] = {}

    def file_digest(self, path: str | Path) -> str:
        """SHA-256 of a file's content, cached by (absolute path, size, mtime_ns) in memory and under
        ``<root>/digests/`` (a checkpoint is hashed once, not once per stage)."""
        path = Path(path).resolve()
        st = path.stat()
        memo = (str(path), st.st_size, st.st_mtime_ns)
        if memo in self._digests:
            return self._digests[memo]
        note = self.root / "digests" / f"{hashlib.sha256(str(path).encode()).hexdigest()}.json"
        try:
            saved = read_json(note)
            if [saved["path"], saved["size"], saved["mtime_ns"]] == list(memo):
                self._digests[memo] = str(saved["sha256"])
                return self._digests[memo]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no note, or a stale or damaged one: hash the file
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
        self._digests[memo] = digest.hexdigest()
        write_text(
            note, json.dumps({"path": memo[0], "size": memo[1], "mtime_ns": memo[2], "sha256": digest.hexdigest()})
        )
        return self._digests[memo]

    def entry_path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.bin"

    def get(
        self, kind: str, spec: dict[str, Any], compute: Callable[[], dict[str, np.ndarray]]
    ) -> tuple[dict[str, np.ndarray], bool]:
        """(arrays, loaded): the entry of ``spec`` when present and intact, else ``compute()`` written
        as the entry. A damaged entry is logged as a warning and recomputed."""
        path = self.entry_path(kind, spec_key(spec))
        if path.is_file():
            try:
                stored, arrays = read_entry(path)
                if stored == json.loads(json.dumps(spec)):
                    return arrays, True
                raise CacheEntryError(f"{path}: its description differs from the key's (hash collision?)")
            except (CacheEntryError, OSError) as err:
                log.warning("OOD cache: %s; recomputing the entry", err)
                self.stats.damaged.append(str(path))
        arrays = compute()
        write_entry(path, spec, arrays)
        return arrays, False


# -- inputs ----------------------------------------------------------------------------------------


class PILToUint8:
    """A PIL RGB image as uint8 [3, H, W]: ``to_tensor`` without the float conversion (picklable)."""

    def __init__(self, steps: Sequence[Any]) -> None:
        self.steps = list(steps)

    def __call__(self, image: Any) -> Tensor:
        for step in self.steps:
            image = step(image)
        array = np.array(image, np.uint8, copy=True)
        return torch.from_numpy(array).view(image.size[1], image.size[0], 3).permute(2, 0, 1).contiguous()


def to_float(images: Tensor, normalize: dict[str, tuple[float, ...]]) -> Tensor:
    """uint8 [B, 3, H, W] → the float32 input of torchvision's ``ToTensor`` then ``Normalize``, bit for
    bit: ``x / 255`` then ``(x − mean) / std`` with float32 mean and std, elementwise."""
    x = images.to(torch.float32).div(255)
    mean = torch.as_tensor(normalize["mean"], dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(normalize["std"], dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return x.sub_(mean).div_(std)


class CachedInputs:
    """A :data:`~src.ood.features.Loader` over a protocol's lists backed by the store's ``inputs``.

    Each list is decoded once (from the store, or through PIL and written to it), kept in memory as
    uint8 (on ``device`` when given) and converted per batch. The random views of ``barlowtwins``
    (``augmented_views``) come from the protocol's PIL loader, as without the store.
    """

    def __init__(
        self,
        protocol: Any,
        cache: OODCache,
        batch_size: int = 200,
        num_workers: int = 0,
        device: torch.device | None = None,
    ) -> None:
        self.protocol = protocol
        self.cache = cache
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.device = device
        self._lists: dict[str, tuple[Tensor, Tensor]] = {}
        self._specs: dict[str, dict[str, Any]] = {}

    def spec(self, split: str) -> dict[str, Any]:
        """What determines list ``split``'s decoded images (the entry's key is its hash)."""
        if split not in self._specs:
            p = self.protocol
            list_file = p.list_dir / p.all_lists()[split]
            stats = []
            for rel, _ in read_image_list(list_file):
                st = os.stat(p.images_root / rel)
                stats.append(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}")
            self._specs[split] = {
                "kind": "inputs",
                "code": CODE_VERSION["inputs"],
                "source": source_digest("inputs"),
                "list": self.cache.file_digest(list_file),
                "images": hashlib.sha256("\n".join(stats).encode()).hexdigest(),
                "image_size": p.image_size,
                "steps": [repr(s) for s in p.pil_steps()],
                "PIL": PIL.__version__,
                "torchvision": torchvision.__version__,
            }
        return self._specs[split]

    def key(self, split: str) -> str:
        return spec_key(self.spec(split))

    def _decode(self, split: str) -> dict[str, np.ndarray]:
        # a DataLoader draws its base seed from the global RNG when iterated: isolated, so that the
        # random stream after it (MC draws, augmented views) does not depend on whether the list was stored
        with torch.random.fork_rng(devices=[]):
            return self._decode_list(split)

    def _decode_list(self, split: str) -> dict[str, np.ndarray]:
        p = self.protocol
        dataset = ImageListDataset(p.images_root, p.list_dir / p.all_lists()[split], PILToUint8(p.pil_steps()))
        loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)
        images, labels = [], []
        for x, y in loader:
            images.append(x)
            labels.append(y)
        self.cache.stats.images_decoded += len(dataset)
        return {"images": torch.cat(images).numpy(), "labels": torch.cat(labels).long().numpy()}

    def images(self, split: str) -> tuple[Tensor, Tensor]:
        """(uint8 [N, 3, H, W] on ``device``, int64 labels [N] on the CPU) of list ``split``."""
        if split not in self._lists:
            arrays, loaded = self.cache.get("inputs", self.spec(split), lambda: self._decode(split))
            if loaded:
                self.cache.stats.inputs_loaded += 1
            else:
                self.cache.stats.inputs_computed += 1
            images = torch.from_numpy(np.array(arrays["images"]))
            if self.device is not None:
                images = images.to(self.device)
            self._lists[split] = (images, torch.from_numpy(np.array(arrays["labels"])))
        return self._lists[split]

    def __call__(self, split: str, kind: str, augmented_views: bool) -> Iterator[Batch] | Any:
        if kind == "barlowtwins" and augmented_views:
            return self.protocol.loader(split, kind, self.batch_size, self.num_workers, True)
        normalize = self.protocol.normalization(kind)  # an unknown preprocessor: its error
        return _Batches(lambda: self.images(split), normalize, self.batch_size, three_views=kind == "barlowtwins")


class _Batches:
    """The float batches of a cached list, converted when iterated (re-iterable, draws no random numbers).
    The list is read (or decoded) on the first iteration only: a stage whose encodings are stored never
    iterates the inputs of its feature detectors."""

    def __init__(
        self,
        images: Callable[[], tuple[Tensor, Tensor]],
        normalize: dict[str, tuple[float, ...]],
        size: int,
        three_views: bool,
    ) -> None:
        self.images, self.normalize, self.size, self.three_views = images, normalize, size, three_views

    def __iter__(self) -> Iterator[Batch]:
        images, labels = self.images()
        for start in range(0, images.shape[0], self.size):
            x = to_float(images[start : start + self.size], self.normalize)
            y = labels[start : start + self.size]
            yield ([x, x, x] if self.three_views else x), y


# -- encodings -------------------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type


class RunEncodings:
    """The encoder outputs of one run, per (preprocessor, list), from the store or computed and stored.

    Called by :class:`~src.ood.features.FeatureStore` as ``encodings(preprocessor, split, batches, encode)``;
    returns the per-batch encodings (on the network's device) and the labels.
    """

    def __init__(
        self, cache: OODCache, inputs: CachedInputs, run: dict[str, Any], device: torch.device, batch_size: int
    ) -> None:
        self.cache = cache
        self.inputs = inputs
        self.device = device
        self.base = {
            "kind": "encodings",
            "code": CODE_VERSION["encodings"],
            "source": source_digest("encodings"),
            "model": cache.file_digest(run["model_path"]),
            "finetuner": cache.file_digest(run["finetuner_path"]),
            "model_name": run["model_name"],
            "batch_size": batch_size,
            "dtype": "float32",
            "device": device_name(device),
            "torch": torch.__version__,
        }

    def __call__(
        self, preprocessor: str, split: str, batches: Iterator[Batch], encode: Callable[[Tensor], Tensor]
    ) -> tuple[list[Tensor], Tensor]:
        spec = {
            **self.base,
            "inputs": self.inputs.key(split),
            "normalize": {k: list(v) for k, v in self.inputs.protocol.normalization(preprocessor).items()},
        }
        computed: list[Tensor] = []

        def compute() -> dict[str, np.ndarray]:
            labels = []
            for data, y in batches:
                x = data if isinstance(data, Tensor) else data[2]
                computed.append(encode(x.to(self.device)))
                labels.append(y)
                self.cache.stats.images_encoded += int(y.shape[0])
            return {
                "encodings": torch.cat(computed).float().cpu().numpy(),
                "batch_sizes": np.asarray([len(e) for e in computed], dtype=np.int64),
                "labels": torch.cat(labels).long().numpy(),
            }

        arrays, loaded = self.cache.get("encodings", spec, compute)
        labels = torch.from_numpy(np.array(arrays["labels"]))
        if not loaded:
            self.cache.stats.encodings_computed += 1
            return computed, labels
        self.cache.stats.encodings_loaded += 1
        e = torch.from_numpy(np.array(arrays["encodings"])).to(self.device)
        return [part.clone() for part in e.split(arrays["batch_sizes"].tolist())], labels
