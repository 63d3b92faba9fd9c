"""The SSL views of CIFAR and Fashion-MNIST computed per sample, in batches, on the accelerator: view
parameters and their sampling.

``DeviceSSLAugment`` maps a uint8 batch ``[B, 3, H, W]`` (already on the training device) to
the three float32 views ``(v1, v2, v3)`` of ``cifar_ssl_transform`` (``src/data/augment/transforms.py``),
or, with ``fashion_mnist_views``, a grey batch ``[B, 1, H, W]`` to those of
``fashion_mnist_ssl_transform`` (grey expanded to three channels first, crop scale (0.2, 1),
brightness and contrast jitter only, no grayscale step). A phase that reads only some views asks for
those (``views``): the others are None and draw nothing.
Every random choice is drawn per sample, on the device of the
batch, from torch's default generator of that device; per-sample decisions are masks used
through ``torch.where``, so nothing reads a tensor value back to the host (no ``.item()``, no
Python branch on data): one call is a fixed sequence of kernels whatever the draws.

The ops themselves are the pure functions of ``src/data/augment/tensor_ops.py``; this module draws
their parameters (``sample_view_params``) and chains them (``apply_view``, ``DeviceSSLAugment``).

Per view (views 1 and 2), with the parameter distributions of the CPU transforms:

    crop     torchvision ``RandomResizedCrop.get_params``: 10 attempts of
             area fraction s ~ U(0.08, 1), log r ~ U(log 3/4, log 4/3),
             w = round(sqrt(s·H·W·r)), h = round(sqrt(s·H·W/r)) (round half to even, as Python),
             first attempt with 0 < w <= W and 0 < h <= H wins, top ~ U{0..H-h}, left ~ U{0..W-w};
             none valid → torchvision's centre-crop fallback.
    resize   the crop box resized to (size, size) with antialiased bilinear weights: the triangle
             filter of PIL's / torch's ``antialias=True`` resampling (support max(1, in/out)),
             i.e. the same weights as torchvision ``F.resized_crop`` on a tensor.
    flip     horizontal, p 0.5.
    jitter   with p 0.8, brightness b ~ U[0.6, 1.4], contrast c ~ U[0.6, 1.4],
             saturation s ~ U[0.8, 1.2], hue shift h ~ U[-0.1, 0.1] (turns), applied in a
             uniformly random order of the four ops per sample (torchvision ``ColorJitter``);
             the op formulas are torchvision's tensor ones:
                 brightness  clamp(b·x, 0, 1)
                 contrast    clamp(c·x + (1-c)·mean(gray(x)), 0, 1)
                 saturation  clamp(s·x + (1-s)·gray(x), 0, 1)
                 hue         hsv → (h_hsv + h) mod 1 → rgb
    gray     p 0.2, gray = 0.2989 R + 0.587 G + 0.114 B (torchvision's ITU-R 601-2 weights),
             copied to the three channels.
    blur     with the view's probability, sigma ~ U(0.1, 2) used as PIL's GaussianBlur radius,
             computed with PIL's own algorithm (see ``gaussian_blur_pil``). For CIFAR both views
             have blur p 0 (D-Q22), so the default views never blur.
    solarize with the view's probability (0 / 0.2): x >= 0.5 → 1 - x (see ``solarize``).
    normalize (x - mean) / std with the dataset statistics.

View 3 is ``FinetuneViewTransform``: resize to (size, size) (a no-op for 32 px CIFAR), then
normalise; with an identity resize it is bit-identical to the CPU path.

What differs from the CPU path (the distributions of all parameters are the same):

- The CPU path runs on PIL images and rounds to uint8 after every step (PIL's blends truncate,
  its resampling and box blur round); here every step stays in float32, so pixel values differ
  by rounding, at most about one uint8 step per step applied.
- PIL's hue step shifts the uint8 HSV hue by ``int(h·255)`` 256ths of a turn; here the shift is
  h turns exactly (torchvision's tensor semantics), a difference below 1/256 of a turn.
- PIL converts to grayscale with 0.299 R (fixed point); here 0.2989 R as torchvision's tensor
  ops, a difference below 1e-4.
- The random streams differ (batched draws from the device generator instead of per-image draws
  in DataLoader workers), so one seed gives different, equally distributed, views.

Why not kornia: its ``ColorJitter`` shares one op order across the batch (torchvision draws it per
image), its ``RandomResizedCrop`` resizes without antialiasing and crops sample by sample with the
boxes read on the host (a device synchronisation per call); ``benchmarks/augment_kornia.py`` measures
both paths (docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from src.data.augment.tensor_ops import (
    CROP_ATTEMPTS,
    CROP_RATIO,
    color_jitter,
    crop_boxes_from_draws,
    gaussian_blur_pil,
    horizontal_flip,
    normalize,
    per_sample,
    random_grayscale,
    resize,
    resized_crop,
    solarize,
)

# ---------------------------------------------------------------------------------------- crop


def sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = CROP_RATIO,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw ``n`` RandomResizedCrop boxes with torchvision's distribution (see ``crop_boxes_from_draws``).

    s ~ U(scale) and log r ~ U(log ratio) are float32 draws like torchvision's
    ``torch.empty(1).uniform_``; the offsets use float64 uniforms.

    Returns:
        int64 [n, 4]: (top, left, h, w).
    """
    log_lo, log_hi = torch.log(torch.tensor(ratio, dtype=torch.float32)).tolist()
    area_draws = torch.empty(n, CROP_ATTEMPTS, device=device).uniform_(scale[0], scale[1], generator=generator)
    log_ratio_draws = torch.empty(n, CROP_ATTEMPTS, device=device).uniform_(log_lo, log_hi, generator=generator)
    offset_draws = torch.rand(n, 2, device=device, dtype=torch.float64, generator=generator)
    return crop_boxes_from_draws(area_draws, log_ratio_draws, offset_draws, height, width, ratio)


# ---------------------------------------------------------------------------------------- views


@dataclass(frozen=True)
class ViewSpec:
    """Parameters of one BYOL view; names and defaults as ``BYOLViewTransform`` (CPU path).

    Attributes:
        cj_prob: probability of the colour jitter.
        cj_strength: multiplier of the four jitter strengths.
        cj_bright, cj_contrast, cj_sat, cj_hue: jitter strengths; factors ~ U[max(0, 1-x), 1+x], hue ~ U[-x, x].
        min_scale, max_scale: crop area-fraction range.
        random_gray_scale: grayscale probability.
        gaussian_blur: blur probability.
        sigmas: blur σ range (PIL radius).
        solarization_prob: solarization probability.
        hf_prob: horizontal flip probability.
    """

    cj_prob: float = 0.8
    cj_strength: float = 1.0
    cj_bright: float = 0.4
    cj_contrast: float = 0.4
    cj_sat: float = 0.2
    cj_hue: float = 0.1
    min_scale: float = 0.08
    max_scale: float = 1.0
    random_gray_scale: float = 0.2
    gaussian_blur: float = 1.0
    sigmas: tuple[float, float] = (0.1, 2.0)
    solarization_prob: float = 0.0
    hf_prob: float = 0.5


#: lightly's BYOL views with all defaults (``BYOLView1Transform`` / ``BYOLView2Transform``):
#: blur p 1.0 / 0.1, solarization p 0 / 0.2
BYOL_VIEW1 = ViewSpec(gaussian_blur=1.0, solarization_prob=0.0)
BYOL_VIEW2 = ViewSpec(gaussian_blur=0.1, solarization_prob=0.2)
#: the two BYOL views of ``cifar_ssl_transform``: blur off in both (D-Q22), solarization 0 / 0.2
CIFAR_VIEW1 = ViewSpec(gaussian_blur=0.0, solarization_prob=0.0)
CIFAR_VIEW2 = ViewSpec(gaussian_blur=0.0, solarization_prob=0.2)

#: the positions of the three views in the SSL batch layout ``[[v1, v2, v3], y]``
ALL_VIEWS: tuple[int, int, int] = (0, 1, 2)


def fashion_mnist_views(min_scale: float = 0.2) -> tuple[ViewSpec, ViewSpec]:
    """The two views of ``fashion_mnist_ssl_transform``: CIFAR's with the crop scale (``min_scale``, 1),
    saturation and hue strengths 0 and no grayscale step (they change nothing on three equal channels)."""
    grey = dict(min_scale=min_scale, cj_sat=0.0, cj_hue=0.0, random_gray_scale=0.0, gaussian_blur=0.0)
    return ViewSpec(solarization_prob=0.0, **grey), ViewSpec(solarization_prob=0.2, **grey)


@dataclass
class ViewParams:
    """The random parameters of one view for a batch of B images (all tensors on the batch's device).

    Attributes:
        boxes: int64 [B, 4] crop boxes (top, left, h, w).
        flip: bool [B].
        jitter: bool [B], whether the colour jitter applies.
        brightness, contrast, saturation: [B] factors (1 where ``jitter`` is off).
        hue: [B] shifts in turns (0 where ``jitter`` is off).
        order: int64 [B, 4] op order (0 brightness, 1 contrast, 2 saturation, 3 hue).
        gray: bool [B].
        blur: bool [B].
        sigma: [B] blur σ (drawn for every sample, used where ``blur``).
        solarize: bool [B].
    """

    boxes: Tensor
    flip: Tensor
    jitter: Tensor
    brightness: Tensor
    contrast: Tensor
    saturation: Tensor
    hue: Tensor
    order: Tensor
    gray: Tensor
    blur: Tensor
    sigma: Tensor
    solarize: Tensor


def _jitter_factor(n: int, low: float, high: float, device: torch.device, generator: torch.Generator | None) -> Tensor:
    """n draws of U[low, high]; a degenerate range (strength 0) gives the constant ``low``, the identity
    factor (torchvision then skips the op, which has the same effect)."""
    if low == high:
        return torch.full((n,), low, device=device)
    return torch.empty(n, device=device).uniform_(low, high, generator=generator)


def sample_view_params(
    spec: ViewSpec,
    n: int,
    height: int,
    width: int,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> ViewParams:
    """Draw the per-sample parameters of one view for ``n`` images of H×W (distributions in ``ViewSpec``).

    Each coin is a uniform u in [0, 1) compared as torchvision / lightly do: flip, grayscale,
    blur and solarize fire when u < p, the jitter's ``RandomApply`` when u <= p.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")

    def coin() -> Tensor:
        return torch.rand(n, device=device, generator=generator)

    boxes = sample_crop_boxes(n, height, width, (spec.min_scale, spec.max_scale), CROP_RATIO, device, generator)
    flip = coin() < spec.hf_prob
    jitter = coin() <= spec.cj_prob  # RandomApply skips when p < u
    # torchvision's ColorJitter ranges for strength x: blends U[max(0, 1 - x), 1 + x], hue U[-x, x];
    # samples without the jitter get the identity (factor 1, shift 0).
    blends = [spec.cj_strength * x for x in (spec.cj_bright, spec.cj_contrast, spec.cj_sat)]
    brightness, contrast, saturation = (
        torch.where(jitter, _jitter_factor(n, max(0.0, 1.0 - x), 1.0 + x, device, generator), 1.0) for x in blends
    )
    x_hue = spec.cj_strength * spec.cj_hue
    hue = torch.where(jitter, _jitter_factor(n, -x_hue, x_hue, device, generator), 0.0)
    # argsort of iid uniforms is a uniformly random permutation (torchvision: randperm(4))
    order = torch.rand(n, 4, device=device, generator=generator).argsort(dim=1)
    gray = coin() < spec.random_gray_scale
    blur = coin() < spec.gaussian_blur
    sigma = torch.empty(n, device=device).uniform_(spec.sigmas[0], spec.sigmas[1], generator=generator)
    solar = coin() < spec.solarization_prob
    return ViewParams(boxes, flip, jitter, brightness, contrast, saturation, hue, order, gray, blur, sigma, solar)


def apply_view(x: Tensor, params: ViewParams, spec: ViewSpec, size: int, mean: Tensor, std: Tensor) -> Tensor:
    """One BYOL view of float images in [0, 1]: crop+resize → flip → jitter → gray → blur → solarize → normalize.

    Steps whose probability in ``spec`` is 0 are skipped outright (a static, config-level choice,
    as the CPU path leaves them out); every other step runs for the whole batch and takes effect
    through its per-sample mask.

    Args:
        x: float [B, 3, H, W] in [0, 1].
        params: the draws of ``sample_view_params``.
        spec: the view's probabilities (to skip the steps that never fire).
        size: output side S.
        mean, std: [3] normalisation statistics.

    Returns:
        float32 [B, 3, S, S].
    """
    x = resized_crop(x, params.boxes, size)
    if spec.hf_prob > 0:
        x = horizontal_flip(x, params.flip)
    if spec.cj_prob > 0:
        # a hue strength of 0 (torchvision then leaves the op out) skips the HSV round trip
        hue = params.hue if spec.cj_strength * spec.cj_hue != 0 else None
        x = color_jitter(x, params.brightness, params.contrast, params.saturation, hue, params.order, params.jitter)
    if spec.random_gray_scale > 0:
        x = random_grayscale(x, params.gray)
    if spec.gaussian_blur > 0:
        blurred = gaussian_blur_pil(x, params.sigma, sigma_max=spec.sigmas[1])
        x = torch.where(per_sample(params.blur), blurred, x)
    if spec.solarization_prob > 0:
        x = solarize(x, params.solarize)
    return normalize(x, mean, std)


class DeviceSSLAugment(nn.Module):
    """The 3-view SSL transform of ``cifar_ssl_transform`` on uint8 batches, on their device.

    Args:
        size: view side S (the datamodule's ``input_height``).
        mean, std: the dataset's normalisation statistics (3 values each).
        view1, view2: the BYOL view parameters; the defaults are those of ``cifar_ssl_transform``
            (blur p 0 in both views, solarization p 0 / 0.2); ``fashion_mnist_views`` gives those of
            ``fashion_mnist_ssl_transform``.

        compiled: run ``apply_view`` (the ops, given the drawn parameters) through ``torch.compile``
            (``dataset.compile_augment``, opt-in): fewer, fused kernels, the same values up to float
            round-off; the draws stay eager, so the random streams are those of the eager path.

    ``forward(x)`` takes uint8 [B, 3, H, W] (or grey [B, 1, H, W]) and returns ``(v1, v2, v3)``, each
    float32 [B, 3, S, S]: v1 and v2 the augmented views, v3 the finetune view (resize + normalise).
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        view1: ViewSpec = CIFAR_VIEW1,
        view2: ViewSpec = CIFAR_VIEW2,
        compiled: bool = False,
    ) -> None:
        super().__init__()
        self.size = int(size)
        self.views = (view1, view2)
        self.compiled = bool(compiled)
        # a plain attribute (not a sub-module): the compiled function holds no state to save
        self._apply_view = torch.compile(apply_view, dynamic=False) if self.compiled else apply_view
        # float32 like T.Normalize's tensors; not persistent: rebuilt from the config, never checkpointed.
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32), persistent=False)

    @torch.no_grad()
    def forward(self, x: Tensor, views: Sequence[int] = ALL_VIEWS) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """uint8 [B, C, H, W] (C 3, or 1 for grey images) → (v1, v2, v3) float32 [B, 3, S, S], normalised.

        A grey batch (C = 1) is first expanded to three equal channels, as ``ToRGB`` does on the CPU
        path. Only the views listed in ``views`` (positions 0, 1, 2) are computed; the others are None
        and draw no random number.

        Raises:
            TypeError: ``x`` is not a uint8 tensor of shape [B, 3, H, W] or [B, 1, H, W].
            ValueError: ``views`` names a position outside 0..2.
        """
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] not in (1, 3):
            raise TypeError(
                f"DeviceSSLAugment expects uint8 [B, 3, H, W] (or grey [B, 1, H, W]) images, got {x.dtype} "
                f"{tuple(x.shape)}"
            )
        if not set(views) <= set(ALL_VIEWS):
            raise ValueError(f"DeviceSSLAugment: views must be positions in 0..2, got {tuple(views)}")
        mean, std = self.mean.to(x.device), self.std.to(x.device)  # no-ops once the module sits on x's device
        # ToRGB for grey images (three equal channels), then ToTensor's conversion: float32, then / 255
        images = x.expand(-1, 3, -1, -1).to(torch.float32).div(255)
        n, _, height, width = images.shape
        out: list[Tensor | None] = [None, None, None]
        for position, spec in enumerate(self.views):
            if position in views:
                params = sample_view_params(spec, n, height, width, x.device)
                out[position] = self._apply_view(images, params, spec, self.size, mean, std)
        if 2 in views:
            out[2] = normalize(resize(images, self.size), mean, std)
        return out[0], out[1], out[2]

    def augment_batch(self, batch: Any, views: Sequence[int] = ALL_VIEWS) -> Any:
        """``[x_uint8, y]`` → ``[[v1, v2, v3], y]`` (the CPU path's SSL batch layout); other batches pass unchanged.

        Views not in ``views`` are None in the layout (not computed). Only a 2-element list/tuple
        whose first element is a 4-D uint8 tensor is augmented, so batches that are already views
        (another loader, a second call) are left alone.
        """
        if (
            isinstance(batch, (list, tuple))
            and len(batch) == 2
            and isinstance(batch[0], Tensor)
            and batch[0].dtype == torch.uint8
            and batch[0].dim() == 4
        ):
            if self.mean.device != batch[0].device:
                self.to(batch[0].device)  # once: the buffers follow the batch's device
            return [list(self(batch[0], views)), batch[1]]
        return batch

    def extra_repr(self) -> str:
        return f"size={self.size}, view1={self.views[0]}, view2={self.views[1]}, compiled={self.compiled}"
