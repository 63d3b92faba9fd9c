"""What the network gives for a batch, computed once and read by every detector.

``logits`` come with every batch; the other fields are computed and kept only on request.

The study runs each network once per (preprocessor, split, batch) and keeps the result as a
:class:`Features` object; a detector is then a pure function of it (plus a fit on the training
split's features). Which optional quantities are computed and kept is the union of what the
run's detectors declare (``Detector.reads`` / ``Detector.fit_reads``), so e.g. MC samples are
stored only when a detector asks for them.

| field | shape | ssl | Bayes-Z | Bayes-H |
|---|---|---|---|---|
| ``logits`` | [B, C] | P(e) | P(e) | mean_s P(h_s) |
| ``feats`` | [B, E] | e = E(x) | e | h̄ = mean_s h_s (stochastic, O-Q12) |
| ``embeddings`` | [B, Z] | g(e) | z̄ = mean_s z_s | mean_s g(h_s) |
| ``mu``, ``log_var`` | [B, D] | – | μ_z, ℓ_z (D = Z) | μ, ℓ (D = E) |
| ``sample_mean`` | [B, D] | – | z̄ | h̄ |
| ``samples`` | [S, B, D] | – | z_s | h_s |

``sample_mean`` is the MC mean of the samples of the stochastic space (the model's
``StochasticOutput.repr``); ``S`` is the checkpoint's ``mc_samples``. For the Barlow Twins
preprocessor the features are those of the plain view v3 (only logpprior reads v1/v2, through
the network). Every stochastic quantity is drawn once per (run, preprocessor, split, batch) and
shared by all detectors and hyper-parameter candidates.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:  # the wrapper imports this module; the store only calls the network
    from src.ood.wrapper import OODNetwork

#: an input batch of a loader: images [B, 3, H, W] (or the three views [v1, v2, v3]) and labels [B]
Data = Tensor | Sequence[Tensor]
Batch = tuple[Data, Tensor]
#: ``(split, preprocessor, augmented_views) -> input batches`` in a fixed order (no shuffling)
Loader = Callable[[str, str, bool], Iterable[Batch]]
#: ``(preprocessor, split, input batches, encode) -> (per-batch encoder outputs, labels)``
Encodings = Callable[[str, str, Iterator[Batch], Callable[[Tensor], Tensor]], tuple[list[Tensor], Tensor]]

#: the fields a detector may read; ``logits`` are computed with every batch, the others on request
FIELDS = ("logits", "feats", "embeddings", "mu", "log_var", "sample_mean", "samples")
#: fields that exist only for a model with a stochastic space
STOCHASTIC_FIELDS = frozenset({"mu", "log_var", "sample_mean", "samples"})


class MissingFeatureError(ValueError):
    """A detector read a field that was not computed (or that the model does not have)."""


@dataclass(frozen=True)
class Features:
    """The network's outputs for one batch (see the module table); unrequested fields are None."""

    logits: Tensor
    feats: Tensor | None = None
    embeddings: Tensor | None = None
    mu: Tensor | None = None
    log_var: Tensor | None = None
    sample_mean: Tensor | None = None
    samples: Tensor | None = None
    #: the model's stochastic space: None (ssl), "H" or "Z"
    space: str | None = None

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    def get(self, name: str, reader: str = "a detector") -> Tensor:
        """Field ``name``, which must have been computed.

        Raises:
            MissingFeatureError: the model has no such quantity (``mu`` etc. of the deterministic
                model: the message says a stochastic model is needed), or the field was not requested.
        """
        value = getattr(self, name)
        if value is not None:
            return value
        if name in STOCHASTIC_FIELDS and self.space is None:
            raise MissingFeatureError(
                f"{reader} reads `{name}`, so it needs a stochastic model (ssl_bayes_h or ssl_bayes_z); "
                "the deterministic ssl model has no posterior"
            )
        raise MissingFeatureError(
            f"{reader} reads `{name}`, which was not computed: declare it in the detector's `reads` (or `fit_reads`)"
        )

    @property
    def device(self) -> torch.device:
        return self.logits.device

    @staticmethod
    def cat(parts: Sequence[Features]) -> Features:
        """The batches of a split as one object (rows concatenated; ``samples`` along its batch axis 1)."""
        if not parts:
            raise ValueError("no feature batches to concatenate")
        out: dict[str, Any] = {"space": parts[0].space}
        for f in fields(Features):
            if f.name == "space":
                continue
            values = [getattr(p, f.name) for p in parts]
            out[f.name] = None if values[0] is None else torch.cat(values, dim=1 if f.name == "samples" else 0)
        return Features(**out)


def split_seed(seed: int, preprocessor: str, split: str) -> int:
    """A seed for one (preprocessor, split): the features of a split do not depend on which other
    splits (or detectors) were computed before it."""
    return (seed + zlib.crc32(f"{preprocessor}:{split}".encode())) % (2**63)


@contextmanager
def isolated_rng(seed: int | None, device: torch.device) -> Iterator[None]:
    """With a seed: the global torch RNG (CPU and ``device``) seeded inside and restored afterwards,
    so a detector's own random draws do not depend on when the features were computed. Without a
    seed: nothing (the reference seeds nothing, O-Q19)."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def rng_neutral_iter(batches: Iterable[Batch]) -> Iterator[Batch]:
    """An iterator over deterministic input batches whose creation draws nothing from the global
    RNG: a DataLoader draws its base seed when iterated, a list in memory does not, and random draws
    after it (MC noise in a network hook) must not depend on where the inputs come from."""
    with torch.random.fork_rng(devices=[]):
        return iter(batches)


class Split:
    """One list of the protocol under one preprocessor: its features (computed on first use, then
    kept), its labels, and its input batches (re-read on demand, in the same order)."""

    def __init__(self, store: FeatureStore, preprocessor: str, name: str) -> None:
        self.store = store
        self.preprocessor = preprocessor
        self.name = name

    @property
    def batches(self) -> list[Features]:
        """Per-batch features, aligned with :meth:`inputs`."""
        return self.store.batches(self.preprocessor, self.name)[0]

    @property
    def labels(self) -> Tensor:
        """int64 [N] on the CPU (class indices for ID lists, -1 for OOD lists)."""
        return self.store.batches(self.preprocessor, self.name)[1]

    def all(self) -> Features:
        """Every batch as one :class:`Features` (for fitting on the training split)."""
        return Features.cat(self.batches)

    def inputs(self, augmented_views: bool = False) -> Iterable[Batch]:
        """The input batches (the Barlow Twins preprocessor with random v1/v2 when ``augmented_views``)."""
        batches = self.store.loader(self.name, self.preprocessor, augmented_views)
        return batches if augmented_views else rng_neutral_iter(batches)


class FeatureStore:
    """The features of one network, computed once per (preprocessor, split) and shared by its detectors.

    Args:
        net: the network (put in eval mode before anything is computed).
        loader: ``(split, preprocessor, augmented_views) -> batches``; called with
            ``augmented_views=False`` for the features (the plain view v3 of the Barlow Twins
            preprocessor is deterministic).
        reads: per preprocessor, the :class:`Features` fields to compute and keep (``logits`` always).
        seed: with a seed, each split's stochastic draws are seeded from (seed, preprocessor,
            split) in an isolated RNG state; None draws from the global RNG.
        encodings: where the encoder outputs come from (the OOD cache's
            :class:`~src.ood.cache.RunEncodings`: stored by an earlier stage, or computed and
            stored); None runs the encoder here. The heads run from the encodings either way, so
            the stochastic draws are the same.
    """

    def __init__(
        self,
        net: OODNetwork,
        loader: Loader,
        reads: Mapping[str, Iterable[str]],
        *,
        seed: int | None = None,
        encodings: Encodings | None = None,
    ) -> None:
        self.net = net
        self.loader = loader
        self.encodings = encodings
        self.reads = {kind: frozenset(names) for kind, names in reads.items()}
        unknown = sorted(set().union(*self.reads.values()) - set(FIELDS)) if self.reads else []
        if unknown:
            raise ValueError(f"unknown feature fields {unknown}; known: {', '.join(FIELDS)}")
        self.seed = seed
        self._cache: dict[tuple[str, str], tuple[list[Features], Tensor]] = {}

    @classmethod
    def for_detectors(cls, net: OODNetwork, loader: Loader, detectors: Iterable[Any], **kwargs: Any) -> FeatureStore:
        """A store computing what ``detectors`` read (the union of ``reads`` and ``fit_reads`` per preprocessor)."""
        reads: dict[str, set[str]] = {}
        for det in detectors:
            own = det.reads_for(net) if hasattr(det, "reads_for") else det.reads
            reads.setdefault(det.preprocessor, set()).update(own, det.fit_reads)
        return cls(net, loader, reads, **kwargs)

    def split(self, preprocessor: str, name: str) -> Split:
        if preprocessor not in self.reads:
            raise KeyError(f"this feature store computes no features for the {preprocessor!r} preprocessor")
        return Split(self, preprocessor, name)

    def batches(self, preprocessor: str, name: str) -> tuple[list[Features], Tensor]:
        """(per-batch features, labels) of a split, computed on first use."""
        key = (preprocessor, name)
        if key not in self._cache:
            inputs = rng_neutral_iter(self.loader(name, preprocessor, False))
            seed = None if self.seed is None else split_seed(self.seed, preprocessor, name)
            with isolated_rng(seed, self.net.device):
                self._cache[key] = self._compute(inputs, preprocessor, name)
        return self._cache[key]

    @torch.no_grad()
    def _compute(self, inputs: Iterator[Batch], preprocessor: str, name: str) -> tuple[list[Features], Tensor]:
        self.net.eval()
        reads = self.reads[preprocessor]
        if self.encodings is not None:
            # every encoder pass first (they draw nothing), then the heads batch by batch: the same
            # random draws in the same order as encoder-then-heads per batch
            encs, y = self.encodings(preprocessor, name, inputs, self.net.encode)
            return [self.net.features_from_encoding(e, reads) for e in encs], y.long()
        batches, labels = [], []
        for data, y in inputs:
            x = data if isinstance(data, Tensor) else data[2]  # the plain view v3 of a three-view batch
            batches.append(self.net.features(x.to(self.net.device), reads))
            labels.append(y)
        return batches, torch.cat(labels).long() if labels else torch.empty(0, dtype=torch.long)
