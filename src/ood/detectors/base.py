"""The detector interface: a score over a batch's :class:`~src.ood.features.Features`, plus an optional fit.

A detector reads what the study computed once per (run, preprocessor, split, batch):

- ``fit(train, labels)``: fit on the ID training split's features (true labels ``[N]``), when
  ``needs_fit``; scoring an unfitted detector raises :class:`NotFittedError`;
- ``score(features) -> (pred, conf)``: per sample, ``pred`` int64 [B] and ``conf`` [B] with the
  convention **larger conf = more in-distribution**;
- optionally a hyper-parameter sweep (``sweep``, ``candidates``, ``set_hyperparam``): every
  candidate is scored on the same validation features.

It declares as class attributes which preprocessor it needs and which fields it reads
(``reads`` when scoring, ``fit_reads`` when fitting), so the study computes only those. A
detector that needs more than the features derives from :class:`NetworkDetector` and gets the
network and the input batch too (ODIN's input gradient, Gram's layer activations, logpprior's
augmented views).

The finetuned head: a detector that recomputes logits from modified features (ViM, ReAct, ASH) sets
``reads_head = True`` and gets the head's weights through :meth:`Detector.set_head` before its fit
(``fit_detector`` calls it with ``OODNetwork.head()``, for a detector with or without a fit). The head
is the finetuner's ``simple_mlp``, a single ``Linear(E, C)``, so ``logits = feats @ Wᵀ + b`` with
``W`` [C, E], ``b`` [C] and its input is the ``feats`` field for every model: ``e`` for ssl and
Bayes-Z; for Bayes-H the study's logits are the MC mean of ``P(h_s)``, which by linearity is
``P(h̄)`` with ``h̄`` = ``feats`` (up to rounding), so the closed form ``feats @ Wᵀ + b`` is the
deterministic counterpart the head-reading detectors use (:meth:`Detector.head_logits`). Their MC
form (an option, off by default) averages the score over Bayes-H's samples ``h_s`` instead
(:func:`head_inputs`).

Sign convention: the reference's signs are the default. Three detectors score in a direction
that looks inverted (O-Q8, O-Q10: sigmamean, kldivsimk, gram; ``reference_sign_inverted``);
``corrected_sign=True`` negates their scores (a documented, labelled variant).
"""

from __future__ import annotations

import abc
import itertools
from typing import Any, ClassVar

from torch import Tensor

from src.ood.features import Data, Features, Split
from src.ood.wrapper import OODNetwork


class NotFittedError(RuntimeError):
    """A detector that needs a fit on the training split was asked to score before it."""


class Detector(abc.ABC):
    """Base class of every detector; register a subclass with ``@register`` in ``src/ood/detectors/``.

    Constructor arguments come from the detector's config (``conf/ood/<name>.yaml``): ``args`` as
    keywords, and ``sweep`` (the APS grid, keys in order, the first varying fastest) when
    ``aps_mode`` is true.

    Class attributes:
        name: registry key (``--postprocessor-name``).
        preprocessor: ``"default"`` or ``"barlowtwins"`` (three views, 0.5/0.5 normalisation;
            the features are those of the plain view v3).
        probabilistic: needs a Bayes model; the study records ``null`` for ``ssl`` runs.
        reference_sign_inverted: the reference's score looks inverted (see the module docstring).
        needs_fit: must be fitted on the ID training split before scoring.
        reads: ``Features`` fields read by ``score`` (``logits``, ``feats``, ``embeddings``, ``mu``,
            ``log_var``, ``sample_mean``, ``samples``; see ``src/ood/features.py``). A network
            detector that reads none gets no features (``None``).
        fit_reads: fields read by ``fit`` on the training split.
        uses_augmented_views: a network detector that reads the random views v1/v2 of the Barlow
            Twins preprocessor.
        reads_head: needs the finetuned head's linear layer ``(W [C, E], b [C])``, whose input is
            ``feats``; the evaluator hands it over with :meth:`set_head` before the fit, and
            scoring without it raises :class:`NotFittedError`.

    ``reads``, ``fit_reads``, ``uses_augmented_views`` and ``reads_head`` may be set per instance in
    ``__init__`` when a config argument changes what is read (e.g. the MC form ``mc: true`` of ebo,
    mls and gen reads Bayes-H's ``samples`` and the head).
    """

    name: ClassVar[str]
    preprocessor: ClassVar[str] = "default"
    probabilistic: ClassVar[bool] = False
    reference_sign_inverted: ClassVar[bool] = False
    needs_fit: ClassVar[bool] = False
    reads: frozenset[str] = frozenset({"logits"})
    fit_reads: frozenset[str] = frozenset()
    uses_augmented_views: bool = False
    reads_head: bool = False
    #: Bayes-H's MC form is on (the ``mc`` option of the detectors that have one; :meth:`set_mc`)
    mc: bool = False
    #: the finetuned head's ``(W [C, E], b [C])`` (detached) once :meth:`set_head` ran; None before
    head: tuple[Tensor, Tensor] | None = None
    #: hyper-parameter values (in ``sweep`` key order) fixed by the user: the study sets them instead
    #: of searching (``build_detector(..., hyperparam=...)``, the script's ``--hyperparam``)
    fixed_hyperparam: list[Any] | None = None

    def __init__(self, sweep: dict[str, list[Any]] | None = None, corrected_sign: bool = False) -> None:
        #: APS grid {hyper-parameter: candidates} from the detector's config; empty = no search
        self.sweep: dict[str, list[Any]] = dict(sweep or {})
        self.corrected_sign = bool(corrected_sign)

    def reads_for(self, net: OODNetwork) -> frozenset[str]:
        """What ``score`` reads from the features of ``net``'s batches: ``reads`` (a network detector
        may need less for some models, e.g. Gram's logits from its own pass)."""
        return self.reads

    # -- the finetuned head --------------------------------------------------------------------------
    def set_head(self, weight: Tensor, bias: Tensor) -> None:
        """The finetuned head's linear layer, ``logits = feats @ Wᵀ + b``: ``weight`` [C, E], ``bias`` [C]
        (``OODNetwork.head()``). Called by the evaluator before the fit of a detector with ``reads_head``.

        Raises:
            ValueError: the shapes do not form one linear layer.
        """
        if weight.dim() != 2 or bias.shape != weight.shape[:1]:
            raise ValueError(
                f"{self.name}: the head must be W [C, E] and b [C], got {tuple(weight.shape)}, {tuple(bias.shape)}"
            )
        self.head = (weight.detach(), bias.detach())

    def head_logits(self, feats: Tensor) -> Tensor:
        """``feats @ Wᵀ + b`` [B, C] for (modified) head inputs ``feats`` [B, E], in the features' dtype.

        Raises:
            NotFittedError: :meth:`set_head` has not run.
        """
        if self.head is None:
            raise NotFittedError(f"{self.name}: set_head(W, b) with the finetuned head's linear layer first")
        weight, bias = self.head
        return feats @ weight.to(feats).T + bias.to(feats)

    # -- the MC form -----------------------------------------------------------------------------------
    def set_mc(self, mc: Any, head: bool = False) -> None:
        """Set ``self.mc``, the option of Bayes-H's MC form (off by default), checked by :func:`mc_flag`.
        When on, the detector also reads ``samples`` and, with ``head`` (per-sample logits through the
        finetuned head), the head."""
        self.mc = mc_flag(mc, self.name)
        if self.mc:
            self.reads = self.reads | {"samples"}
            self.reads_head = self.reads_head or head

    # -- fitting ------------------------------------------------------------------------------------
    def fit(self, train: Features, labels: Tensor) -> None:
        """Fit on the ID training split: ``train`` holds every training sample's features (``fit_reads``),
        ``labels`` the true classes int64 [N]. Default: nothing to fit."""
        return None

    def is_fitted(self) -> bool:
        """Whether scoring may start (always true for a detector without a fit)."""
        return True

    def check_fitted(self) -> None:
        """Raises:
        NotFittedError: ``needs_fit`` and the fit has not run, or ``reads_head`` and no head was set."""
        if self.reads_head and self.head is None:
            raise NotFittedError(f"{self.name}: set_head(W, b) with the finetuned head's linear layer before scoring")
        if self.needs_fit and not self.is_fitted():
            raise NotFittedError(f"{self.name}: fit it on the training split before scoring")

    # -- hyper-parameters ---------------------------------------------------------------------------
    def candidates(self) -> list[list[Any]]:
        """The APS grid as value lists, the first sweep key varying fastest (the reference's order)."""
        if not self.sweep:
            return []
        keys = list(self.sweep)
        grid = itertools.product(*(self.sweep[k] for k in reversed(keys)))
        return [list(reversed(values)) for values in grid]

    def set_hyperparam(self, values: list[Any]) -> None:
        """Set the searched hyper-parameters (in ``sweep`` key order)."""
        if self.sweep:
            raise TypeError(f"{type(self).__name__} has a hyper-parameter sweep, so it must define set_hyperparam")

    def get_hyperparam(self) -> list[Any]:
        return []

    def record_info(self) -> dict[str, Any]:
        """How this detector ran, for the run's OOD record (``detector_info``, plain JSON values); empty when
        nothing varies between installations or runs beyond the config (the default)."""
        return {}

    # -- scoring ------------------------------------------------------------------------------------
    @abc.abstractmethod
    def score(self, features: Features) -> tuple[Tensor, Tensor]:
        """(pred [B] int64, conf [B]) of one batch, with the reference's sign."""

    def score_candidates(self, features: Features, candidates: list[list[Any]]) -> list[tuple[Tensor, Tensor]] | None:
        """Optional: (pred, conf) of one batch for every hyper-parameter candidate at once (each equal to
        ``set_hyperparam(c)`` then ``score``), for a search that shares work between candidates (the
        kNN/KL detectors: the max(K)+1 nearest once, sliced per K). None: not offered (the default)."""
        return None

    def signed(self, pred: Tensor, conf: Tensor) -> tuple[Tensor, Tensor]:
        """``conf`` negated for ``corrected_sign`` when the reference's sign looks inverted."""
        if self.corrected_sign and self.reference_sign_inverted:
            conf = -conf
        return pred, conf

    def postprocess(self, features: Features) -> tuple[Tensor, Tensor]:
        """The study's call: ``score`` after the fit check, with the sign convention applied."""
        self.check_fitted()
        return self.signed(*self.score(features))


class NetworkDetector(Detector):
    """A detector that needs the network beyond the features (a network-level hook).

    ``fit_network(net, train)`` gets the training :class:`~src.ood.features.Split` (its features,
    labels and input batches); ``score_network(net, data, features)`` the input batch ``data``
    (moved to the network's device: images [B, 3, H, W], or ``[v1, v2, v3]`` for the Barlow Twins
    preprocessor, v1/v2 random only with ``uses_augmented_views``) and its features (None when
    the detector reads none).
    """

    def fit_network(self, net: OODNetwork, train: Split) -> None:
        """Default: :meth:`fit` on the training features."""
        self.fit(train.all(), train.labels)

    @abc.abstractmethod
    def score_network(self, net: OODNetwork, data: Data, features: Features | None) -> tuple[Tensor, Tensor]:
        """(pred [B] int64, conf [B]) of one batch, with the reference's sign."""

    def score(self, features: Features) -> tuple[Tensor, Tensor]:
        raise TypeError(f"{self.name} scores through the network: call score_network(net, data, features)")

    def features_of(self, features: Features | None) -> Features:
        """``features``, which a detector with ``reads`` always gets (a clear error otherwise)."""
        if features is None:
            raise ValueError(f"{self.name} reads {sorted(self.reads)} but got no features for the batch")
        return features

    def postprocess_network(self, net: OODNetwork, data: Data, features: Features | None) -> tuple[Tensor, Tensor]:
        """The study's call: ``score_network`` after the fit check, with the sign convention applied."""
        self.check_fitted()
        return self.signed(*self.score_network(net, data, features))


def head_inputs(features: Features, mc: bool, reader: str) -> Tensor:
    """The finetuned head's inputs of a batch as draws [S, B, E]: ``feats`` [1, B, E] (the closed form, the
    default), or with ``mc`` for Bayes-H its samples ``h_s`` [S, B, E] (the MC form: a detector averages its
    score over them; it must then read ``samples``). For ssl and Bayes-Z the head's input e is deterministic
    (Bayes-Z's samples are z, after the projector), so ``mc`` changes nothing there."""
    if mc and features.space == "H":
        return features.get("samples", reader)
    return features.get("feats", reader).unsqueeze(0)


def percentile_arg(value: Any, detector: str) -> float:
    """A percentile hyper-parameter (ReAct's clipping, ASH's pruning), checked to be a number in [0, 100];
    returned as given (an int stays an int in the records).

    Raises:
        ValueError: not a number, or outside [0, 100].
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise ValueError(f"{detector}: percentile must be a number in [0, 100], got {value!r}")
    return value


def mc_flag(value: Any, detector: str) -> bool:
    """The ``mc`` option of a detector, checked: a YAML/JSON boolean (a string such as ``"false"`` would
    otherwise read as true).

    Raises:
        ValueError: not a bool.
    """
    if not isinstance(value, bool):
        raise ValueError(f"{detector}: mc must be true or false, got {value!r}")
    return value


def sample_logits(detector: Detector, features: Features, mc: bool) -> Tensor:
    """The logits of a batch as draws [S, B, C]: the study's ``logits`` [1, B, C] (the default), or with ``mc``
    for Bayes-H the per-sample logits ``P(h_s) = h_s Wᵀ + b`` [S, B, C] of the finetuned head over the samples
    ``h_s`` [S, B, E] (the MC form of a logit detector, which averages its score over them; it must read
    ``samples`` and the head). For ssl and Bayes-Z the head's input e is deterministic, so ``mc`` changes
    nothing there."""
    if mc and features.space == "H":
        return detector.head_logits(features.get("samples", detector.name))
    return features.logits.unsqueeze(0)


def plain_view(data: Data) -> Tensor:
    """The image tensor of a batch: itself, or the plain view v3 of a three-view batch."""
    if isinstance(data, Tensor):
        return data
    return data[2]
