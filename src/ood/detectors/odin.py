"""``odin``: temperature scaling plus input perturbation (O-Q28; Liang et al., 2018).

A network detector: both passes go through the network (``net.logits``), the first one with
the input gradient; it reads nothing from the batch's features. For a batch ``x`` [B, C, H, W]
of normalised images, temperature ``T`` and noise ``ε``:

    ŷ = argmax_k f_k(x)                                   (detached)
    L = (1/B) Σ_b CE(f(x_b) / T, ŷ_b)
    s = +1 where ∂L/∂x ≥ 0 else −1,   s[:, c] /= std_c    (a zero gradient gives +1)
    x̃ = x − ε · s                                         (detached)
    conf = max_k softmax(f(x̃) / T)_k,   pred = argmax_k f_k(x̃)

``std`` is the per-channel std of the input normalisation (``net.input_std``; CIFAR-10:
(0.2470, 0.2435, 0.2616)). For Bayes-H the two forward passes draw independent MC noise (O-Q28).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from src.ood.detectors import register
from src.ood.detectors.base import NetworkDetector, plain_view
from src.ood.features import Data, Features
from src.ood.wrapper import OODNetwork


def _input_std(net: OODNetwork, channels: int | None = None) -> tuple[float, ...]:
    """``net.input_std``, checked: ODIN cannot scale its gradient sign without it."""
    std = net.input_std
    if std is None:
        raise ValueError(
            "odin needs the per-channel std of the input normalisation, but net.input_std is None; "
            "build the OODNetwork with input_std=(...) (CIFAR-10: (0.2470, 0.2435, 0.2616))"
        )
    if channels is not None and len(std) != channels:
        raise ValueError(f"net.input_std has {len(std)} entries but the input has {channels} channels")
    return tuple(float(s) for s in std)


@register
class ODIN(NetworkDetector):
    """ODIN with the reference's defaults ``T = 1000``, ``ε = 0.0014``; APS over ``[T, ε]``.

    Args:
        temperature: softmax temperature ``T`` (both passes).
        noise: perturbation size ``ε``.
        sweep: APS grid ``{"temperature": [...], "noise": [...]}`` (temperature varies fastest).
        corrected_sign: unused (ODIN's sign is not inverted).
    """

    name = "odin"
    reads: frozenset[str] = frozenset()

    def __init__(
        self,
        temperature: float = 1000.0,
        noise: float = 0.0014,
        sweep: dict[str, list[Any]] | None = None,
        corrected_sign: bool = False,
    ) -> None:
        super().__init__(sweep=sweep, corrected_sign=corrected_sign)
        self.temperature = float(temperature)
        self.noise = float(noise)

    def set_hyperparam(self, values: list[Any]) -> None:
        """``values = [T, ε]`` (the sweep key order)."""
        self.temperature, self.noise = float(values[0]), float(values[1])

    def get_hyperparam(self) -> list[Any]:
        return [self.temperature, self.noise]

    def score_network(self, net: OODNetwork, data: Data, features: Features | None) -> tuple[Tensor, Tensor]:
        """Score one batch.

        Args:
            net: the network; two forward passes and one backward pass to the input.
            data: images [B, C, H, W] (or a three-view list, whose plain view is used).
            features: None (ODIN reads no features: the scored pass is on the perturbed input).

        Returns:
            ``pred`` int64 [B] and ``conf`` float32 [B], both from the perturbed input.

        Raises:
            ValueError: ``net.input_std`` is None or does not match the channel count.
        """
        x0 = plain_view(data).to(net.device)
        std = torch.tensor(_input_std(net, x0.shape[1]), dtype=x0.dtype, device=x0.device)
        std = std.view(1, -1, *([1] * (x0.dim() - 2)))
        with torch.enable_grad():
            # a fresh leaf, and autograd.grad rather than backward(): only ∂L/∂x is computed, so
            # the model's parameter gradients are never touched (the reference accumulated them)
            x = x0.detach().clone().requires_grad_(True)
            logits = net.logits(x)
            target = logits.detach().argmax(dim=1)
            loss = F.cross_entropy(logits / self.temperature, target)
            (grad,) = torch.autograd.grad(loss, x)
        sign = (grad >= 0).to(x0.dtype).mul(2).sub(1) / std
        x_tilde = x0 - self.noise * sign
        with torch.no_grad():
            out = net.logits(x_tilde) / self.temperature
            # the reference's explicit max-shifted softmax
            out = out - out.max(dim=1, keepdim=True).values
            prob = out.exp() / out.exp().sum(dim=1, keepdim=True)
            conf, pred = prob.max(dim=1)
        return pred.long(), conf
