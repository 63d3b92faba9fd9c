"""``vim``: Virtual-logit Matching (Wang, Li, Feng & Zhang, 2022, "ViM: Out-of-distribution with
virtual-logit matching", CVPR), as OpenOOD v1.5 scores it.

With the finetuned head's linear layer ``W`` [C, E], ``b`` [C] (``reads_head``; ``logits = x Wᵀ + b``)
and the ID training features ``x_i`` [N, E], the fit (float64) is:

    u  = −W⁺ b                                      [E]   (W⁺ the pseudo-inverse, [E, C])
    Σ  = (1/N) Σ_i (x_i − u)(x_i − u)ᵀ              [E, E] (about u, not centred on the mean)
    R  = the eigenvectors of Σ outside its ``dim`` largest eigenvalues    [E, E − dim]
    α  = mean_i max_k (x_i Wᵀ + b)_k / mean_i ‖(x_i − u) R‖

and the score of a feature ``x`` [E]:

    conf(x) = −(α ‖(x − u) R‖ − logsumexp_k (x Wᵀ + b)_k),    pred(x) = argmax_k (x Wᵀ + b)_k

``dim`` (the principal subspace's size) defaults to 256 and is searched over ``[256, 1000]`` (OpenOOD's
``vim.yml``). A ``dim`` that leaves no residual (``dim ≥ E``; OpenOOD's 1000 with a ResNet-18's E = 512)
would make ``α`` undefined, so it is replaced by ``E // 2``, the ViM paper's choice for feature widths
below 768 (and OpenOOD's 256 for E = 512); the value used is logged and recorded
(``detector_info.principal_dim``). The feature is ``feats``, the head's input for every model (for
Bayes-H the MC mean ``h̄``: the closed form, since the study's MC-mean logits equal ``P(h̄)`` by
linearity); the logits are recomputed from it through the head, as OpenOOD does.

``mc=True`` (off by default): for Bayes-H the MC form, ``conf = mean_s conf(h_s)`` over the samples
``h_s`` [S, B, E] and ``pred = argmax_k mean_s (h_s Wᵀ + b)_k``, the fit still on ``feats``; it reads
``samples`` and changes nothing for ssl and Bayes-Z (their head input is deterministic).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from src.ood.detectors import register
from src.ood.detectors.base import Detector, head_inputs
from src.ood.features import Features

log = logging.getLogger(__name__)


def _check_dim(dim: Any) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"vim: dim must be a positive integer, got {dim!r}")
    return dim


def principal_dim(dim: int, width: int) -> int:
    """``dim``, or ``width // 2`` where ``dim ≥ width`` would leave no residual subspace."""
    return dim if dim < width else width // 2


@register
class ViM(Detector):
    """ViM: the energy minus a virtual logit from the residual of the training features' principal subspace.

    Args:
        dim: size of the principal subspace (OpenOOD's default 256; capped as in the module docstring).
        mc: Bayes-H's MC form (the module docstring); False: the closed form on ``feats``.
        sweep: APS grid ``{"dim_list": [...]}``.
        corrected_sign: unused (ViM's sign is not inverted).
    """

    name = "vim"
    needs_fit = True
    reads_head = True
    reads = frozenset({"feats"})
    fit_reads = frozenset({"feats"})

    def __init__(
        self,
        dim: int = 256,
        mc: bool = False,
        sweep: dict[str, list[Any]] | None = None,
        corrected_sign: bool = False,
    ) -> None:
        super().__init__(sweep=sweep, corrected_sign=corrected_sign)
        self.dim = _check_dim(dim)
        self.set_mc(mc)
        #: the fit: u [E], the eigenvectors of Σ by decreasing eigenvalue [E, E] (float64), the training
        #: features (kept to recompute α for another dim) and their mean max-logit
        self.u: Tensor | None = None
        self.eigenvectors: Tensor | None = None
        self.train_feats: Tensor | None = None
        self.mean_max_logit: float | None = None
        #: for the current dim: the residual basis R [E, E − dim] (float32), α, and the dim used
        self.residual: Tensor | None = None
        self.alpha: float | None = None
        self.used_dim: int | None = None

    def fit(self, train: Features, labels: Tensor) -> None:
        """Fit ``u``, the eigenvectors of ``Σ`` and ``α`` on the training ``feats`` [N, E] and the head.

        Raises:
            NotFittedError: the head was not set (``set_head``) before the fit.
        """
        feats = train.get("feats", self.name).detach()
        x = feats.double()
        logits = self.head_logits(x)  # the NotFittedError without a head
        assert self.head is not None
        weight, bias = (t.to(x) for t in self.head)
        self.u = -(torch.linalg.pinv(weight) @ bias)
        centred = x - self.u
        cov = centred.T @ centred / x.shape[0]
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
        self.eigenvectors = eigenvectors[:, eigenvalues.argsort(descending=True)]
        self.train_feats = feats
        self.mean_max_logit = float(logits.max(dim=1).values.mean())
        self._set_dim()

    def _set_dim(self) -> None:
        """The residual basis and ``α`` of ``self.dim`` (capped) from the fit."""
        assert self.eigenvectors is not None and self.train_feats is not None and self.u is not None
        width = self.eigenvectors.shape[0]
        used = principal_dim(self.dim, width)
        if used != self.dim:
            log.info("vim: dim %d leaves no residual of the %d-dimensional features; using %d", self.dim, width, used)
        residual = self.eigenvectors[:, used:]
        norms = torch.linalg.vector_norm((self.train_feats.double() - self.u) @ residual, dim=1)
        assert self.mean_max_logit is not None
        if float(norms.mean()) == 0.0:
            raise ValueError(f"vim: the training features have no component outside their first {used} principal axes")
        self.alpha = self.mean_max_logit / float(norms.mean())
        self.residual = residual
        self.used_dim = used

    def is_fitted(self) -> bool:
        return self.residual is not None

    def set_hyperparam(self, values: list[Any]) -> None:
        """``values = [dim]``; after the fit the residual basis and ``α`` follow without a new fit."""
        self.dim = _check_dim(values[0])
        if self.eigenvectors is not None:
            self._set_dim()

    def get_hyperparam(self) -> list[Any]:
        return [self.dim]

    def record_info(self) -> dict[str, Any]:
        """The principal subspace's size used (``dim`` or its cap) and the feature width, after the fit."""
        if self.used_dim is None or self.eigenvectors is None:
            return {}
        return {"principal_dim": self.used_dim, "feature_dim": int(self.eigenvectors.shape[0])}

    def score(self, features: Features) -> tuple[Tensor, Tensor]:
        """Score one batch.

        Args:
            features: reads ``feats`` [B, E] (with ``mc``, Bayes-H's ``samples`` [S, B, E]).

        Returns:
            ``pred`` int64 [B] (argmax of the head's logits) and ``conf`` [B] (the features' dtype).

        Raises:
            NotFittedError: before the fit or without the head.
        """
        self.check_fitted()
        assert self.residual is not None and self.u is not None and self.alpha is not None
        x = head_inputs(features, self.mc, self.name)  # [S, B, E]
        logits = self.head_logits(x)  # [S, B, C]
        virtual = torch.linalg.vector_norm((x - self.u.to(x)) @ self.residual.to(x), dim=2) * self.alpha
        return logits.mean(0).argmax(dim=1), (torch.logsumexp(logits, dim=2) - virtual).mean(0)
