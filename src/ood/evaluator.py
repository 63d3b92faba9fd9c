"""The OpenOOD v1.5 evaluation of one network with one detector (spec: ood.md §8, §10).

1. eval mode; 2. ``setup`` on the ID training split (true labels); 3. if the detector has a
sweep, the hyper-parameter search on ID val vs OOD val (AUROC, strict improvement from 0, the
earliest candidate wins ties); 4. scores on ID test and every near/far OOD set; 5. the metric
rows ``<near sets>, nearood, <far sets>, farood`` in percent, with ACC in every row replaced by
one plain-logits accuracy pass over ID test.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from src.ood.detectors.base import Batch, Detector, plain_view
from src.ood.metrics import METRIC_NAMES, auroc_only, compute_all_metrics
from src.ood.protocol import Protocol
from src.ood.wrapper import OODNetwork

log = logging.getLogger(__name__)


def to_device(data: Any, device: torch.device) -> Any:
    if isinstance(data, (list, tuple)):
        return [d.to(device) for d in data]
    return data.to(device)


def inference(
    detector: Detector, net: OODNetwork, batches: Iterable[Batch], desc: str = "", progress: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pred, conf, label) over all batches; ``conf`` keeps the detector's dtype."""
    preds, confs, labels = [], [], []
    for data, y in tqdm(batches, desc=desc, disable=not progress, leave=False):
        pred, conf = detector.postprocess(net, to_device(data, net.device))
        preds.append(pred.detach().cpu())
        confs.append(conf.detach().cpu())
        labels.append(y)
    return (
        torch.cat(preds).numpy().astype(np.int64),
        torch.cat(confs).numpy(),
        torch.cat(labels).numpy().astype(np.int64),
    )


@torch.no_grad()
def id_accuracy(net: OODNetwork, batches: Iterable[Batch], progress: bool = True) -> float:
    """Percent of ID test images whose plain logits' argmax is the label (a fresh pass; Quirk Q17)."""
    correct = total = 0
    for data, y in tqdm(batches, desc="ID accuracy", disable=not progress, leave=False):
        logits = net(plain_view(to_device(data, net.device)))
        correct += int((logits.argmax(-1).cpu() == y).sum())
        total += int(y.numel())
    return 100.0 * correct / total


def hyperparameter_search(
    detector: Detector, net: OODNetwork, id_val: Iterable[Batch], ood_val: Iterable[Batch], progress: bool = True
) -> list[Any]:
    """APS (spec §10): the candidate with the best validation AUROC; ties keep the earlier one.

    A candidate the detector refuses for this data (``set_hyperparam`` raises ValueError, e.g. a
    K at least the number of training points) is skipped with a warning.
    """
    best, best_auroc = None, 0.0
    for values in detector.candidates():
        try:
            detector.set_hyperparam(values)
        except ValueError as err:
            # e.g. K = 1000 neighbours with fewer training points (the small demo): the reference
            # would crash; the candidate is skipped instead
            log.warning("%s: candidate %s skipped: %s", detector.name, values, err)
            continue
        _, conf_id, y_id = inference(detector, net, id_val, f"APS {values} ID", progress)
        _, conf_ood, _ = inference(detector, net, ood_val, f"APS {values} OOD", progress)
        auroc = auroc_only(np.concatenate([conf_id, conf_ood]), np.concatenate([y_id, -np.ones(len(conf_ood), int)]))
        log.info("%s %s: validation AUROC %.4f", detector.name, values, auroc)
        if auroc > best_auroc:
            best, best_auroc = values, auroc
    if best is None:
        raise RuntimeError(
            f"{detector.name}: no hyper-parameter candidate reached a validation AUROC above 0 "
            "(are the scores all equal or non-finite?)"
        )
    detector.set_hyperparam(best)
    return best


class InputCache:
    """Preprocessed input batches kept in memory and shared by every (run, detector) pair.

    Only deterministic inputs are kept: the ``default`` preprocessor and the plain views of
    ``barlowtwins`` when the detector reads only v3; random Barlow Twins views are drawn anew
    each time, as without the cache. Decoding and preprocessing then happen once per list
    instead of once per detector, run and APS candidate. The batches are stored on ``device``
    (the study's), so they are copied there once and stay the same tensor objects, which lets
    a network share its encoder outputs across detectors (``OODNetwork.share_encodings`` with
    ``holds``). Memory: the float32 tensors of every list used, on ``device`` (for the CIFAR-10
    protocol a few GB; Fashion-MNIST under 1 GB; the demo a few MB).
    """

    def __init__(
        self, protocol: Protocol, batch_size: int = 200, num_workers: int = 0, device: torch.device | None = None
    ) -> None:
        self.protocol = protocol
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.device = device
        self._store: dict[tuple[str, str], list[Batch]] = {}
        self._tensors: dict[int, torch.Tensor] = {}

    def loader(self, split: str, kind: str, augmented_views: bool) -> Iterable[Batch]:
        if kind == "barlowtwins" and augmented_views:
            return self.protocol.loader(split, kind, self.batch_size, self.num_workers, augmented_views)
        key = (split, kind)
        if key not in self._store:
            batches = []
            for data, y in self.protocol.loader(split, kind, self.batch_size, self.num_workers, False):
                if self.device is not None:
                    data = to_device(data, self.device)
                for tensor in data if isinstance(data, (list, tuple)) else [data]:
                    self._tensors[id(tensor)] = tensor
                batches.append((data, y))
            self._store[key] = batches
        return self._store[key]

    def holds(self, x: torch.Tensor) -> bool:
        """True if ``x`` is one of the stored input tensors (the object itself, not a copy)."""
        return self._tensors.get(id(x)) is x


@dataclass
class StudyResult:
    """The metric table (rows of percentages) and the raw scores behind it."""

    rows: list[dict[str, Any]]
    hyperparam: list[Any] | None
    scores: dict[str, np.ndarray] = field(default_factory=dict)


def evaluate(
    net: OODNetwork,
    detector: Detector,
    protocol: Protocol,
    batch_size: int = 200,
    num_workers: int = 0,
    progress: bool = True,
    inputs: InputCache | None = None,
) -> StudyResult:
    """Run the whole protocol for one network and one detector (``inputs``: shared input batches)."""
    kind = detector.preprocessor
    net.input_std = protocol.input_std(kind)
    net.eval()

    def loader(split: str) -> Iterable[Batch]:
        if inputs is not None:
            return inputs.loader(split, kind, detector.uses_augmented_views)
        return protocol.loader(split, kind, batch_size, num_workers, detector.uses_augmented_views)

    detector.setup(net, tqdm(loader("id/train"), desc=f"{detector.name} setup", disable=not progress, leave=False))
    chosen = None
    if detector.sweep:
        chosen = hyperparameter_search(detector, net, loader("id/val"), loader("ood/val"), progress)
    pred_id, conf_id, y_id = inference(detector, net, loader("id/test"), "ID test", progress)
    scores: dict[str, np.ndarray] = {"id": conf_id}
    rows: list[dict[str, Any]] = []
    for group, sets in (("nearood", protocol.near), ("farood", protocol.far)):
        if not sets:  # a protocol without near-OOD sets (fashion_mnist) has no nearood row
            continue
        vectors = []
        for name in sets:
            pred_o, conf_o, _ = inference(detector, net, loader(f"ood/{group[:-3]}/{name}"), name, progress)
            scores[name] = conf_o
            label = np.concatenate([y_id, -np.ones(len(conf_o), dtype=np.int64)])
            vec = compute_all_metrics(np.concatenate([conf_id, conf_o]), label, np.concatenate([pred_id, pred_o]))
            vectors.append(vec)
            rows.append({"Dataset": name, **dict(zip(METRIC_NAMES, (100 * v for v in vec)))})
        mean = np.mean(np.asarray(vectors), axis=0)
        rows.append({"Dataset": group, **dict(zip(METRIC_NAMES, (100 * float(v) for v in mean)))})
    acc = id_accuracy(net, loader("id/test"), progress)
    for row in rows:
        row["ACC"] = acc
    return StudyResult(rows=rows, hyperparam=chosen, scores=scores)
