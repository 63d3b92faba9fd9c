"""``rmds``: relative Mahalanobis distance (Ren et al., 2021, "A simple fix to Mahalanobis distance for
improving near-OOD detection", arXiv:2106.09022), as OpenOOD v1.5 scores it.

Fit on the ID training features ``x_i`` [N, D] with true labels ``y_i``: the class-conditional Gaussians
of ``mds`` (class means ``μ_c`` [C, D], shared precision ``Π`` [D, D] of the class-centred features) and
one background Gaussian of all training features (``μ_0`` = mean_i x_i [D], ``Π_0`` [D, D] the pseudo-
inverse of their maximum-likelihood covariance), both fitted by ``fit_mahalanobis`` (the background as one
group). With ``MD_c(x) = (x − μ_c)ᵀ Π (x − μ_c)`` and ``MD_0(x) = (x − μ_0)ᵀ Π_0 (x − μ_0)``:

    conf(x) = max_c −(MD_c(x) − MD_0(x)) = −min_c (MD_c(x) − MD_0(x)),    pred(x) = argmax_k f_k(x)

The feature is ``feats`` (encoder output e; for Bayes-H the MC mean ``h̄`` of the samples, as ``mds``);
``f`` the study's logits. No hyper-parameters (OpenOOD's ``rmds.yml``: no sweep).

``mc=True`` (off by default): for Bayes-H the MC form, ``conf = mean_s conf(h_s)`` over the samples
``h_s`` [S, B, D], the Gaussians still fitted on ``feats``; it reads ``samples`` and changes nothing for
ssl and Bayes-Z (their ``feats`` is deterministic).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from src.ood.detectors import register
from src.ood.detectors.base import Detector, head_inputs
from src.ood.detectors.mds import fit_mahalanobis, log_training_accuracy, mahalanobis_score
from src.ood.features import Features


@register
class RMDS(Detector):
    """Relative Mahalanobis: the class-conditional score minus a background Gaussian's; larger = more ID."""

    name = "rmds"
    needs_fit = True
    reads = frozenset({"logits", "feats"})
    fit_reads = frozenset({"logits", "feats"})  # the logits feed the logged training accuracy

    def __init__(
        self, mc: bool = False, sweep: dict[str, list[Any]] | None = None, corrected_sign: bool = False
    ) -> None:
        """``mc``: Bayes-H's MC form (the module docstring); False: the closed form on ``feats``."""
        super().__init__(sweep=sweep, corrected_sign=corrected_sign)
        self.set_mc(mc)
        self.means: Tensor | None = None
        self.precision: Tensor | None = None
        self.background_mean: Tensor | None = None
        self.background_precision: Tensor | None = None

    def fit(self, train: Features, labels: Tensor) -> None:
        """Fit ``μ_c``, ``Π`` (c < C, the logits' width) and ``μ_0``, ``Π_0`` on the training ``feats`` [N, D]."""
        log_training_accuracy(self.name, train, labels)
        feats = train.get("feats", self.name)
        self.means, self.precision = fit_mahalanobis(feats, labels, train.logits.shape[1])
        background = torch.zeros(feats.shape[0], dtype=torch.long)
        self.background_mean, self.background_precision = fit_mahalanobis(feats, background, 1)

    def is_fitted(self) -> bool:
        return self.means is not None and self.background_mean is not None

    def score(self, features: Features) -> tuple[Tensor, Tensor]:
        """Score one batch.

        Args:
            features: reads ``logits`` [B, C] and ``feats`` [B, D] (with ``mc``, Bayes-H's ``samples`` [S, B, D]).

        Returns:
            ``pred`` int64 [B] (argmax of the logits) and ``conf`` float32 [B].

        Raises:
            NotFittedError: before ``fit``.
        """
        self.check_fitted()
        assert self.means is not None and self.precision is not None
        assert self.background_mean is not None and self.background_precision is not None
        draws = head_inputs(features, self.mc, self.name)  # [S, B, D]
        feats = draws.flatten(0, 1)
        # max_c −MD_c − (−MD_0): the background term does not depend on c
        class_conf = mahalanobis_score(feats, self.means, self.precision)
        background_conf = mahalanobis_score(feats, self.background_mean, self.background_precision)
        conf = (class_conf - background_conf).unflatten(0, draws.shape[:2]).mean(0)
        return features.logits.argmax(dim=1), conf
