"""``mds``: class-conditional Mahalanobis distance on backbone features (spec: ood.md §11.3, Quirk Q21;
Lee et al., 2018).

Setup on ID train features ``x_i`` [N, D] with true labels ``y_i``:

    μ_c = mean_{i: y_i = c} x_i                      (c = 0 … C−1)
    r_i = x_i − μ_{y_i},   r̄ = mean_i r_i            (≈ 0; kept as sklearn's assume_centered=False does)
    Σ   = (1/N) Σ_i (r_i − r̄)(r_i − r̄)ᵀ              (maximum-likelihood normalisation, float64)
    Π   = pinvh(Σ)                                    (symmetric pseudo-inverse, float64 → float32)

Score of a test feature ``x`` (float32):

    conf(x) = max_c −(x − μ_c)ᵀ Π (x − μ_c),    pred(x) = argmax_k f_k(x)

The feature is the wrapper's ``feats`` (encoder output; the stochastic MC mean ``h̄`` for Bayes-H,
Quirk Q12). ``fit_mahalanobis`` and ``mahalanobis_score`` are shared with ``umds``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import scipy.linalg
import torch
from torch import Tensor

from src.ood.detectors import register
from src.ood.detectors.base import Batch, Data, Detector, collect, plain_view
from src.ood.wrapper import OODNetwork

log = logging.getLogger(__name__)


def collect_features(net: OODNetwork, train_batches: Iterable[Batch]) -> tuple[Tensor, Tensor]:
    """The wrapper's ``feats`` over ID training batches, without gradients.

    Also logs the training accuracy of the logits, the reference's sanity check.

    Args:
        net: the network, already in eval mode.
        train_batches: ``(data, labels)`` batches (plain view used for three-view data).

    Returns:
        ``feats`` [N, D] (network dtype) and ``labels`` int64 [N], both on ``net.device``.

    Raises:
        ValueError: no training batches.
    """
    outs, labels = collect(net, train_batches, return_feature=True)
    if not outs:
        raise ValueError("setup got no training batches")
    logits = torch.cat([out[0] for out in outs])
    feats = torch.cat([out[1] for out in outs])
    labels = labels.to(device=feats.device, dtype=torch.long)
    log.info("training accuracy (sanity check): %.2f%%", 100 * logits.argmax(1).eq(labels).double().mean().item())
    return feats, labels


def fit_mahalanobis(features: Tensor, labels: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
    """Group means and the shared (pooled within-group) precision matrix.

    ``μ_g`` = mean of the features of group ``g``; ``Σ = (1/N) Σ_i (r_i − r̄)(r_i − r̄)ᵀ`` with
    ``r_i = x_i − μ_{y_i}``; ``Π = pinvh(Σ)``. Everything is computed in float64 (as sklearn's
    ``EmpiricalCovariance`` does through ``np.cov``) and cast to float32 at the end.

    Args:
        features: ``x`` [N, D].
        labels: group index ``y`` [N] in ``[0, num_groups)``.
        num_groups: number of groups ``G`` (classes or clusters).

    Returns:
        ``means`` float32 [G, D] and ``precision`` float32 [D, D], on the features' device.

    Raises:
        ValueError: a label is out of range or a group has no member (its mean would be NaN).
    """
    if features.dim() != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"features must be [N, D] and labels [N], got {tuple(features.shape)}, {tuple(labels.shape)}")
    labels = labels.to(device=features.device, dtype=torch.long)
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_groups):
        raise ValueError(f"labels must lie in [0, {num_groups}), got [{labels.min()}, {labels.max()}]")
    counts = torch.bincount(labels, minlength=num_groups)
    if (counts == 0).any():
        empty = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"groups {empty} have no training feature, so their means are undefined")
    x = features.to(torch.float64)
    means = torch.zeros(num_groups, x.shape[1], dtype=torch.float64, device=x.device).index_add_(0, labels, x)
    means /= counts.unsqueeze(1)
    centred = x - means[labels]
    # sklearn's assume_centered=False re-centres the (already centred) vectors: only rounding changes
    centred -= centred.mean(0)
    cov = centred.T @ centred / x.shape[0]
    precision = scipy.linalg.pinvh(cov.cpu().numpy())
    return means.float(), torch.from_numpy(precision).to(device=x.device, dtype=torch.float32)


def mahalanobis_score(features: Tensor, means: Tensor, precision: Tensor) -> Tensor:
    """Negative smallest squared Mahalanobis distance to the group means.

    ``conf_b = max_g −(x_b − μ_g)ᵀ Π (x_b − μ_g)``, all rows and groups at once ([B, G, D]
    differences; no per-group B×B matrix).

    Args:
        features: ``x`` [B, D].
        means: ``μ`` [G, D].
        precision: ``Π`` [D, D].

    Returns:
        ``conf`` [B] in the dtype of ``means`` (float32).
    """
    means = means.to(features.device)
    diff = features.to(means.dtype).unsqueeze(1) - means.unsqueeze(0)
    quad = ((diff @ precision.to(features.device)) * diff).sum(-1)
    return (-quad).max(dim=1).values


@register
class MDS(Detector):
    """Class-conditional Mahalanobis with a pooled covariance; true training labels group the features."""

    name = "mds"

    def __init__(self, sweep: dict[str, list[Any]] | None = None, corrected_sign: bool = False) -> None:
        super().__init__(sweep=sweep, corrected_sign=corrected_sign)
        self.means: Tensor | None = None
        self.precision: Tensor | None = None

    def setup(self, net: OODNetwork, train_batches: Iterable[Batch]) -> None:
        """Fit ``μ_c`` (c < ``net.num_classes``) and ``Π`` on the training features and true labels."""
        feats, labels = collect_features(net, train_batches)
        self.means, self.precision = fit_mahalanobis(feats, labels, net.num_classes)

    @torch.no_grad()
    def score(self, net: OODNetwork, data: Data) -> tuple[Tensor, Tensor]:
        """Score one batch.

        Args:
            net: the network; one call for logits and ``feats``.
            data: images [B, 3, H, W] (or a three-view list, whose plain view is used).

        Returns:
            ``pred`` int64 [B] (argmax of the logits) and ``conf`` float32 [B].

        Raises:
            RuntimeError: ``setup`` has not run.
        """
        if self.means is None or self.precision is None:
            raise RuntimeError(f"{self.name}: call setup(net, train_batches) before scoring")
        logits, feats = net(plain_view(data).to(net.device), return_feature=True)
        return logits.argmax(dim=1), mahalanobis_score(feats, self.means, self.precision)
