"""The OpenOOD v1.5 evaluation of one network with one detector, over features computed once.

1. eval mode; 2. the detector's fit on the ID training split (true labels), if it needs one;
3. if the detector has a sweep, the hyper-parameter search on ID val vs OOD val (AUROC, strict
improvement from 0, the earliest candidate wins ties; O-Q18), every candidate scoring the same
validation features; 4. scores on ID test and every near/far OOD set; 5. the metric rows
``<near sets>, nearood, <far sets>, farood`` in percent, with ACC in every row replaced by the
accuracy of the ID test logits (O-Q17).

The network runs through a :class:`~src.ood.features.FeatureStore`: once per (preprocessor,
split, batch) for all the detectors that share the store; only network detectors (ODIN, Gram,
logpprior) call it again, through their hooks.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from src.ood.detectors.base import Detector, NetworkDetector
from src.ood.features import Batch, Data, Features, FeatureStore, Loader, Split
from src.ood.metrics import METRIC_NAMES, auroc_only, compute_all_metrics
from src.ood.protocol import Protocol
from src.ood.wrapper import OODNetwork

log = logging.getLogger(__name__)


def to_device(data: Data, device: torch.device) -> Data:
    if isinstance(data, (list, tuple)):
        return [d.to(device) for d in data]
    return data.to(device)


def fit_detector(detector: Detector, net: OODNetwork, train: Split) -> None:
    """The detector's fit on the training split (nothing for a detector without one), after handing a
    detector with ``reads_head`` the finetuned head's linear layer (``net.head()``)."""
    if detector.reads_head:
        detector.set_head(*net.head())
    if not detector.needs_fit:
        return
    if isinstance(detector, NetworkDetector):
        detector.fit_network(net, train)
    else:
        detector.fit(train.all(), train.labels)


def score_batch(
    detector: Detector, net: OODNetwork, data: Data | None, features: Features | None
) -> tuple[Tensor, Tensor]:
    """One batch's (pred [B] int64, conf [B]) with the sign convention applied: a feature detector
    reads ``features``; a network detector also gets the input batch ``data`` (on ``net.device``)."""
    if isinstance(detector, NetworkDetector):
        if data is None:
            raise ValueError(f"{detector.name} scores through the network, so it needs the input batch")
        return detector.postprocess_network(net, to_device(data, net.device), features)
    if features is None:
        raise ValueError(f"{detector.name} scores features, but got none")
    return detector.postprocess(features)


def inference(detector: Detector, net: OODNetwork, split: Split) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pred, conf, label) over a split, batch by batch; ``conf`` keeps the detector's dtype.

    A feature detector scores the stored features; a network detector also gets each input batch
    (re-read in the same order, with random v1/v2 when it uses the augmented views), and no
    features when it reads none (then the split's features are not computed for it).
    """
    preds, confs, labels = [], [], []
    if isinstance(detector, NetworkDetector):
        inputs = split.inputs(detector.uses_augmented_views)
        reads = detector.reads_for(net)
        batches: Iterable[Features | None] = split.batches if reads else itertools.repeat(None)
        # strict: the re-read inputs must line up with the stored features, batch for batch
        pairs = zip(inputs, batches, strict=bool(reads))
        for (data, y), features in pairs:
            pred, conf = score_batch(detector, net, data, features)
            preds.append(pred.detach().cpu())
            confs.append(conf.detach().cpu())
            labels.append(y)
    else:
        for features in split.batches:
            pred, conf = score_batch(detector, net, None, features)
            preds.append(pred.detach().cpu())
            confs.append(conf.detach().cpu())
        labels.append(split.labels)
    return (
        torch.cat(preds).numpy().astype(np.int64),
        torch.cat(confs).numpy(),
        torch.cat(labels).numpy().astype(np.int64),
    )


def id_accuracy(split: Split) -> float:
    """Percent of ID test images whose logits' argmax is the label (the ACC column, O-Q17)."""
    correct = total = 0
    for features, y in zip(split.batches, split.labels.split([len(f) for f in split.batches])):
        correct += int((features.logits.argmax(-1).cpu() == y).sum())
        total += int(y.numel())
    return 100.0 * correct / total


def hyperparameter_search(detector: Detector, net: OODNetwork, id_val: Split, ood_val: Split) -> list[Any]:
    """APS: the candidate with the best validation AUROC; ties keep the earlier one (O-Q18).

    A candidate the detector refuses for this data (``set_hyperparam`` raises ValueError, e.g. a
    K at least the number of training points) is skipped with a warning.
    """
    valid = []
    for values in detector.candidates():
        try:
            detector.set_hyperparam(values)
        except ValueError as err:
            # e.g. K = 1000 neighbours with fewer training points (the small demo): the reference
            # would crash; the candidate is skipped instead
            log.warning("%s: candidate %s skipped: %s", detector.name, values, err)
            continue
        valid.append(values)
    shared = None
    if valid and not isinstance(detector, NetworkDetector):
        shared = candidate_confs(detector, id_val, valid), candidate_confs(detector, ood_val, valid)
        if shared[0] is None or shared[1] is None:
            shared = None
    best, best_auroc = None, 0.0
    for i, values in enumerate(valid):
        if shared is not None:  # every candidate's scores from one pass over the splits
            conf_id, conf_ood = shared[0][i], shared[1][i]
            y_id = id_val.labels.numpy().astype(np.int64)
        else:
            detector.set_hyperparam(values)
            _, conf_id, y_id = inference(detector, net, id_val)
            _, conf_ood, _ = inference(detector, net, ood_val)
        auroc = auroc_only(np.concatenate([conf_id, conf_ood]), np.concatenate([y_id, -np.ones(len(conf_ood), int)]))
        log.debug("%s %s: validation AUROC %.4f", detector.name, values, auroc)
        if auroc > best_auroc:
            best, best_auroc = values, auroc
    if best is None:
        raise RuntimeError(
            f"{detector.name}: no hyper-parameter candidate reached a validation AUROC above 0 "
            "(are the scores all equal or non-finite?)"
        )
    log.info("%s: hyper-parameters %s (validation AUROC %.4f)", detector.name, best, best_auroc)
    detector.set_hyperparam(best)
    return best


def candidate_confs(detector: Detector, split: Split, candidates: list[list[Any]]) -> list[np.ndarray] | None:
    """Every candidate's confidences over a split from one :meth:`Detector.score_candidates` call per
    batch (sign convention applied), or None when the detector does not offer it."""
    detector.check_fitted()
    per_candidate: list[list[Tensor]] = [[] for _ in candidates]
    for features in split.batches:
        scored = detector.score_candidates(features, candidates)
        if scored is None:
            return None
        for i, (pred, conf) in enumerate(scored):
            per_candidate[i].append(detector.signed(pred, conf)[1].detach().cpu())
    return [torch.cat(c).numpy() for c in per_candidate]


class InputCache:
    """Preprocessed input batches kept in memory and shared by every (run, detector) pair.

    Only deterministic inputs are kept: the ``default`` preprocessor and the plain views of
    ``barlowtwins`` (its random views v1/v2 are drawn anew each time, as without the cache).
    Decoding and preprocessing then happen once per list for the whole study instead of once
    per run. The batches are stored on ``device`` (the study's). Memory: the float32 tensors of
    every list used (for the CIFAR-10 protocol a few GB; Fashion-MNIST under 1 GB; the demo a few MB).
    """

    def __init__(
        self, protocol: Protocol, batch_size: int = 200, num_workers: int = 0, device: torch.device | None = None
    ) -> None:
        self.protocol = protocol
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.device = device
        self._store: dict[tuple[str, str], list[Batch]] = {}

    def loader(self, split: str, kind: str, augmented_views: bool) -> Iterable[Batch]:
        """The batches of list ``split`` under preprocessor ``kind`` (a :data:`~src.ood.features.Loader`)."""
        if kind == "barlowtwins" and augmented_views:
            return self.protocol.loader(split, kind, self.batch_size, self.num_workers, augmented_views)
        key = (split, kind)
        if key not in self._store:
            batches = []
            for data, y in self.protocol.loader(split, kind, self.batch_size, self.num_workers, False):
                batches.append((data if self.device is None else to_device(data, self.device), y))
            self._store[key] = batches
        return self._store[key]


def protocol_loader(protocol: Protocol, batch_size: int = 200, num_workers: int = 0) -> Loader:
    """The protocol's loaders as a :data:`~src.ood.features.Loader` (nothing kept in memory)."""

    def loader(split: str, kind: str, augmented_views: bool) -> Iterable[Batch]:
        return protocol.loader(split, kind, batch_size, num_workers, augmented_views)

    return loader


@dataclass
class StudyResult:
    """The metric table (rows of percentages) and the raw scores behind it.

    ``scores``: ``id`` (ID test confidences, larger = more ID, after the sign convention),
    ``id_pred`` (the detector's predicted classes) and ``id_label`` (true classes); per OOD set
    ``<set>``, ``<set>_pred`` and ``<set>_label`` (the list's labels, -1 in OpenOOD's lists); and
    ``ood_sets``, ``ood_groups`` (``near``/``far``): the OOD sets in table order. The metric rows are
    ``compute_all_metrics(concat(id, <set>), concat(id_label, -1...), concat(id_pred, <set>_pred))``.
    """

    rows: list[dict[str, Any]]
    hyperparam: list[Any] | None
    scores: dict[str, np.ndarray] = field(default_factory=dict)


def evaluate(
    net: OODNetwork,
    detector: Detector,
    protocol: Protocol,
    batch_size: int = 200,
    num_workers: int = 0,
    inputs: InputCache | None = None,
    features: FeatureStore | None = None,
) -> StudyResult:
    """Run the whole protocol for one network and one detector.

    Args:
        net: the network.
        detector: a freshly built detector (fitted here when it needs a fit).
        protocol: the lists and preprocessing.
        batch_size, num_workers: loader settings when neither ``inputs`` nor ``features`` is given.
        inputs: shared input batches (used when ``features`` is None).
        features: the run's feature store, shared with the run's other detectors; it must compute
            what ``detector`` reads. None: a store for this detector alone.
    """
    kind = detector.preprocessor
    net.input_std = protocol.input_std(kind)
    net.eval()
    if features is None:
        loader = inputs.loader if inputs is not None else protocol_loader(protocol, batch_size, num_workers)
        features = FeatureStore.for_detectors(net, loader, [detector])

    fit_detector(detector, net, features.split(kind, "id/train"))
    chosen = None
    if detector.sweep and detector.fixed_hyperparam is not None:  # fixed by the user: no search
        chosen = list(detector.fixed_hyperparam)
        try:
            detector.set_hyperparam(chosen)
        except ValueError as err:  # e.g. K at least the number of training points
            raise ValueError(
                f"{detector.name}: the fixed hyper-parameters {chosen} (--hyperparam) do not fit: {err}"
            ) from err
    elif detector.sweep:
        id_val, ood_val = features.split(kind, "id/val"), features.split(kind, "ood/val")
        chosen = hyperparameter_search(detector, net, id_val, ood_val)
    id_test = features.split(kind, "id/test")
    pred_id, conf_id, y_id = inference(detector, net, id_test)
    scores: dict[str, np.ndarray] = {"id": conf_id, "id_pred": pred_id, "id_label": y_id}
    ood_sets: list[str] = []
    ood_groups: list[str] = []
    rows: list[dict[str, Any]] = []
    for group, sets in (("nearood", protocol.near), ("farood", protocol.far)):
        if not sets:  # a protocol without near-OOD sets (fashion_mnist) has no nearood row
            continue
        vectors = []
        for name in sets:
            split = features.split(kind, f"ood/{group[:-3]}/{name}")
            pred_o, conf_o, y_o = inference(detector, net, split)
            scores.update({name: conf_o, f"{name}_pred": pred_o, f"{name}_label": y_o})
            ood_sets.append(name)
            ood_groups.append(group[:-3])
            label = np.concatenate([y_id, -np.ones(len(conf_o), dtype=np.int64)])
            vec = compute_all_metrics(np.concatenate([conf_id, conf_o]), label, np.concatenate([pred_id, pred_o]))
            vectors.append(vec)
            rows.append({"Dataset": name, **dict(zip(METRIC_NAMES, (100 * v for v in vec)))})
        mean = np.mean(np.asarray(vectors), axis=0)
        rows.append({"Dataset": group, **dict(zip(METRIC_NAMES, (100 * float(v) for v in mean)))})
    scores["ood_sets"] = np.asarray(ood_sets, dtype=str)
    scores["ood_groups"] = np.asarray(ood_groups, dtype=str)
    acc = id_accuracy(id_test)
    for row in rows:
        row["ACC"] = acc
    return StudyResult(rows=rows, hyperparam=chosen, scores=scores)
