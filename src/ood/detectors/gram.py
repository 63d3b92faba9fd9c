"""``gram``: Gram-matrix deviations, as OpenOOD implements them (O-Q10, O-Q11).

A network detector: it reads the layer activations of the input batch (``net.feature_maps(x)``:
forward hooks on one encoder pass, which also gives the encoder output, hence the logits of ssl and
Bayes-Z; for Bayes-H the logits are the study's MC draws, read from the batch's features).

For each feature map ``l`` of ``net.feature_list`` (five ResNet maps, [B, C_l, H_l, W_l]) and each
power ``p``, one image gives the per-channel statistic

    F   = map^p reshaped [C_l, HW_l]
    r   = row sums of G = F Fᵀ = F (Fᵀ 1),   i.e. r_i = Σ_t F_{i,t} Σ_j F_{j,t}        [C_l]
    r̃   = sign(r) · |r|^{1/p}                                                       [C_l]

computed in float32 (``r`` without forming the C_l × C_l Gram matrix). This differs from the
GRAM paper in the ways the reference code does (O-Q10 (a)–(f)), all reproduced:

* fit, over ID train grouped by the TRUE label ``c``: one scalar ``min_{c,l,p}`` and
  ``max_{c,l,p}`` over all images of class ``c`` *and* all channels (the reference concatenates the
  per-image channel vectors into one flat list);
* score: the predicted class ``ĉ = argmax logits``, the channel SUM ``s_{l,p} = Σ_i r̃_i`` (float64)
  and

      dev = Σ_{l,p} relu(min_{ĉ,l,p} − s_{l,p}) / |min_{ĉ,l,p} + 1e-6|
                  + relu(s_{l,p} − max_{ĉ,l,p}) / |max_{ĉ,l,p} + 1e-6|
      conf = dev / 50         (float64, NOT negated: larger deviation = "more ID", O-Q10 (c))

The statistics are cast to float64 before the channel sum, the min/max and the deviation, as the
reference does by converting ``r̃`` to Python floats.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from src.ood.detectors import register
from src.ood.detectors.base import NetworkDetector, plain_view
from src.ood.features import Data, Features, Split
from src.ood.wrapper import OODNetwork

#: the reference's epsilon, added inside the absolute value of the normaliser (O-Q10 (e))
EPS: float = 1e-6
#: the reference's constant divisor of the summed deviations (O-Q10 (f))
DIVISOR: float = 50.0


def gram_channel_stat(feature_map: Tensor, power: float) -> Tensor:
    """The per-channel statistic ``r̃`` of every image of a batch, float32.

    ``F = map^p`` [B, C, HW]; ``r = F (Fᵀ 1)`` (the row sums of the Gram matrix ``F Fᵀ``, as a
    batched matrix-vector product: O(C·HW) instead of O(C²·HW)); ``r̃ = sign(r) |r|^{1/p}``.

    Args:
        feature_map: [B, C, ...] (any trailing spatial shape, flattened).
        power: the exponent ``p`` (> 0).

    Returns:
        ``r̃`` [B, C], float32.
    """
    f = feature_map.detach().float() ** power
    f = f.reshape(f.shape[0], f.shape[1], -1)  # [B, C, HW]
    col_sum = f.sum(dim=1, keepdim=True)  # [B, 1, HW] = (Fᵀ 1)ᵀ
    r = torch.bmm(f, col_sum.transpose(1, 2)).squeeze(-1)  # [B, C]
    return r.sign() * r.abs() ** (1.0 / power)


def _check_powers(powers: Sequence[Any]) -> list[float]:
    values = list(powers)
    if not values or any(isinstance(p, bool) or not isinstance(p, (int, float)) or p <= 0 for p in values):
        raise ValueError(f"gram: powers must be a non-empty list of positive numbers, got {powers!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"gram: powers must be distinct, got {powers!r}")
    return values


@register
class Gram(NetworkDetector):
    """GRAM as implemented in OpenOOD (reference sign: larger deviation = more ID).

    Args:
        powers: the exponents ``p`` (reference default ``[1, 2, 3, 4, 5]``).
        sweep: APS grid ``{"powers_list": [[...], ...]}`` (the reference has one candidate, O-Q11).
        corrected_sign: negate ``conf`` (so a larger deviation counts as more OOD).

    The min/max are fitted for the powers set at fit time; ``set_hyperparam`` may then only
    select among those (the reference indexes its tables by position and would silently mix
    powers; here any other power is an error).
    """

    name = "gram"
    reference_sign_inverted = True
    needs_fit = True  # on the network's layer activations of the training inputs: no training features

    def __init__(
        self,
        powers: Sequence[float] = (1, 2, 3, 4, 5),
        sweep: dict[str, list[Any]] | None = None,
        corrected_sign: bool = False,
    ) -> None:
        super().__init__(sweep=sweep, corrected_sign=corrected_sign)
        self.powers: list[float] = _check_powers(powers)
        #: powers the tables were fitted for, in table order
        self.fitted_powers: list[float] = []
        #: [num_classes, num_layers, num_fitted_powers] float64; None before the fit
        self.mins: Tensor | None = None
        self.maxs: Tensor | None = None
        #: score from ONE encoder pass per batch (hooks record the maps while the encoder runs, and the
        #: logits of ssl and Bayes-Z come from its output); False: the maps from ``feature_list`` and the
        #: logits from the study's features (two passes, the previous path; same scores, tested)
        self.one_pass = True

    def reads_for(self, net: OODNetwork) -> frozenset[str]:
        """No features for a deterministic-logits model with one pass (its own pass gives the logits);
        Bayes-H's logits are the study's MC draws, read from the features."""
        if self.one_pass and getattr(net, "stochastic_space", None) != "H":
            return frozenset()
        return self.reads

    def _maps(self, net: OODNetwork, x: Tensor) -> tuple[list[Tensor], Tensor | None]:
        """(maps, encoder output or None): one hooked pass (``net.feature_maps``) with ``one_pass``, else
        ``net.feature_list`` (also for a network that offers only that hook)."""
        if self.one_pass and hasattr(net, "feature_maps"):
            return net.feature_maps(x)
        return net.feature_list(x), None

    # -- fit ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def fit_network(self, net: OODNetwork, train: Split) -> None:
        """Per (true class, layer, power) scalar min and max of ``r̃`` over all images and channels.

        Running, vectorised: per batch the per-image channel min/max [B, L·P] are reduced into the
        class tables with ``scatter_reduce`` (no per-sample Python loop, no lists of floats).

        Raises:
            ValueError: a label outside ``[0, net.num_classes)``, or a class without training
                images (the reference crashes in that case too: its statistics list stays None).
        """
        num_classes = net.num_classes
        powers = list(self.powers)
        mins: Tensor | None = None
        maxs: Tensor | None = None
        seen = torch.zeros(num_classes, dtype=torch.bool, device=net.device)
        for data, labels in train.inputs():
            maps = self._maps(net, plain_view(data).to(net.device))[0]
            labels = labels.to(net.device).long()
            if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
                found = labels.unique().tolist()
                raise ValueError(f"gram: training labels must lie in [0, {num_classes}), got {found}")
            # [B, L*P] per-image extremes over channels, layer-major then power (table order)
            stats = [gram_channel_stat(m, p).double() for m in maps for p in powers]
            batch_min = torch.stack([s.amin(dim=1) for s in stats], dim=1)
            batch_max = torch.stack([s.amax(dim=1) for s in stats], dim=1)
            if mins is None or maxs is None:
                shape = (num_classes, batch_min.shape[1])
                mins = torch.full(shape, float("inf"), dtype=torch.float64, device=net.device)
                maxs = torch.full(shape, float("-inf"), dtype=torch.float64, device=net.device)
            index = labels[:, None].expand_as(batch_min)
            mins.scatter_reduce_(0, index, batch_min, reduce="amin")
            maxs.scatter_reduce_(0, index, batch_max, reduce="amax")
            seen[labels] = True
        if mins is None or maxs is None:
            raise ValueError("gram: the fit received no training batches")
        if not bool(seen.all()):
            missing = torch.nonzero(~seen).flatten().tolist()
            raise ValueError(
                f"gram: no training images of classes {missing} (num_classes={num_classes}); "
                "their min/max are undefined (the reference crashes here as well)"
            )
        self.mins = mins.reshape(num_classes, -1, len(powers))
        self.maxs = maxs.reshape(num_classes, -1, len(powers))
        self.fitted_powers = powers

    # -- hyper-parameters -----------------------------------------------------------------------
    def set_hyperparam(self, values: list[Any]) -> None:
        """``values = [powers]`` (sweep key ``powers_list``).

        Raises:
            ValueError: after the fit, a power the tables were not fitted for.
        """
        powers = _check_powers(values[0])
        if self.mins is not None:
            self._power_columns(powers)
        self.powers = powers

    def get_hyperparam(self) -> list[Any]:
        return [list(self.powers)]

    def _power_columns(self, powers: Sequence[float]) -> list[int]:
        missing = [p for p in powers if p not in self.fitted_powers]
        if missing:
            raise ValueError(f"gram: powers {missing} were not fitted (the fit used {self.fitted_powers}); fit again")
        return [self.fitted_powers.index(p) for p in powers]

    def is_fitted(self) -> bool:
        return self.mins is not None and self.maxs is not None

    # -- scoring ----------------------------------------------------------------------------------
    @torch.no_grad()
    def score_network(self, net: OODNetwork, data: Data, features: Features | None) -> tuple[Tensor, Tensor]:
        """Score one batch.

        Args:
            net: the network; ``feature_list`` of the batch's plain view gives the maps.
            data: images [B, 3, H, W] (or a three-view list, whose plain view is used).
            features: reads ``logits`` [B, C] (the predicted class selects the tables).

        Returns:
            ``pred`` int64 [B] (argmax of the logits) and ``conf`` float64 [B] (``dev / 50``).

        Raises:
            NotFittedError: before the fit.
            ValueError: a power or layer count that does not match the fitted tables.
        """
        self.check_fitted()
        assert self.mins is not None and self.maxs is not None
        columns = self._power_columns(self.powers)
        x = plain_view(data).to(net.device)
        maps, encoding = self._maps(net, x)
        if len(maps) != self.mins.shape[1]:
            raise ValueError(f"gram: the network gives {len(maps)} feature maps, the fit saw {self.mins.shape[1]}")
        if features is None and encoding is not None:  # ssl, Bayes-Z: the logits of this same pass
            logits = net.features_from_encoding(encoding).logits
        elif features is None:  # an encoder without identity max-pool: a second pass for the logits
            logits = net.logits(x)
        else:
            logits = features.logits
        # argmax softmax = argmax logits; the class tables are gathered by the PREDICTED class (O-Q10 (d))
        pred = logits.argmax(dim=1)
        mins = self.mins.to(pred.device)[pred]  # [B, L, P_fitted]
        maxs = self.maxs.to(pred.device)[pred]
        dev = torch.zeros(pred.shape[0], dtype=torch.float64, device=pred.device)
        # Layer-major, then power, min term before max term: the reference's accumulation order.
        for layer, feature_map in enumerate(maps):
            for power, col in zip(self.powers, columns):
                s = gram_channel_stat(feature_map, power).double().sum(dim=1)  # [B]
                lo, hi = mins[:, layer, col], maxs[:, layer, col]
                dev = dev + F.relu(lo - s) / torch.abs(lo + EPS)
                dev = dev + F.relu(s - hi) / torch.abs(hi + EPS)
        return pred.long(), dev / DIVISOR
