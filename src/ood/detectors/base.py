"""The detector interface (spec: ood.md §8.3, §10, §11).

A detector is fitted on ID training data once (``setup``), may have hyper-parameters searched
on validation data (``sweep``, ``set_hyperparam``), and scores batches: ``postprocess(net, data)``
returns ``(pred, conf)`` per sample, **larger conf = more in-distribution**.

``data`` is a tensor [B, 3, H, W] for the default preprocessor, or the list ``[v1, v2, v3]`` of
three such tensors for the Barlow Twins preprocessor (``preprocessor = "barlowtwins"``).

Sign convention: the reference's signs are the default. Three detectors score in a direction
that looks inverted (Quirks Q8, Q10: sigmamean, kldivsimk, gram; ``reference_sign_inverted``);
``corrected_sign=True`` negates their scores (a documented, labelled variant).
"""

from __future__ import annotations

import abc
import itertools
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from src.ood.wrapper import OODNetwork

Data = Tensor | Sequence[Tensor]
Batch = tuple[Data, Tensor]


class Detector(abc.ABC):
    """Base class of the nine detectors.

    Constructor arguments come from the detector's config (``conf/ood/<name>.yaml``):
    ``args`` as keywords, and ``sweep`` (the APS grid, keys in order, the first varying fastest)
    when ``aps_mode`` is true.

    Class attributes:
        name: registry key.
        preprocessor: ``"default"`` or ``"barlowtwins"`` (three views, 0.5/0.5 normalisation).
        probabilistic: needs a Bayes model (no score for ``ssl``: recorded as null).
        reference_sign_inverted: the reference's score looks inverted (see module docstring).
        uses_augmented_views: the detector reads v1/v2 (only logpprior does).
    """

    name: ClassVar[str]
    preprocessor: ClassVar[str] = "default"
    probabilistic: ClassVar[bool] = False
    reference_sign_inverted: ClassVar[bool] = False
    #: reads the augmented views v1/v2 of the Barlow Twins preprocessor (else only v3 is computed)
    uses_augmented_views: ClassVar[bool] = True

    def __init__(self, sweep: dict[str, list[Any]] | None = None, corrected_sign: bool = False) -> None:
        #: APS grid {hyper-parameter: candidates} from the detector's config; empty = no search
        self.sweep: dict[str, list[Any]] = dict(sweep or {})
        self.corrected_sign = bool(corrected_sign)

    # -- ID training statistics -------------------------------------------------------------------
    def setup(self, net: OODNetwork, train_batches: Iterable[Batch]) -> None:
        """Fit on ID training batches ``(data, labels)`` (true labels). Default: nothing to fit."""
        return None

    # -- hyper-parameters ---------------------------------------------------------------------------
    def candidates(self) -> list[list[Any]]:
        """The APS grid as value lists, the first sweep key varying fastest (spec §10)."""
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

    # -- scoring ------------------------------------------------------------------------------------
    @abc.abstractmethod
    def score(self, net: OODNetwork, data: Data) -> tuple[Tensor, Tensor]:
        """(pred [B] int64, conf [B]) with the reference's sign."""

    def postprocess(self, net: OODNetwork, data: Data) -> tuple[Tensor, Tensor]:
        pred, conf = self.score(net, data)
        if self.corrected_sign and self.reference_sign_inverted:
            conf = -conf
        return pred, conf


def plain_view(data: Data) -> Tensor:
    """The image tensor of a batch: itself, or the plain view v3 of a three-view batch."""
    if isinstance(data, Tensor):
        return data
    return data[2]


@torch.no_grad()
def collect(net: OODNetwork, batches: Iterable[Batch], **flags: bool) -> tuple[list[Any], Tensor]:
    """Run ``net`` over batches (plain view) with ``flags``; return the per-batch outputs and labels."""
    outs, labels = [], []
    for data, y in batches:
        outs.append(net(plain_view(data).to(net.device), **flags))
        labels.append(y)
    return outs, torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)
