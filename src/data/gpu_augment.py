"""The CIFAR SSL views computed per sample, in batches, on the accelerator (issue 8).

``DeviceSSLAugment`` maps a uint8 batch ``[B, 3, H, W]`` (already on the training device) to
the three float32 views ``(v1, v2, v3)`` of ``cifar_ssl_transform`` (``src/data/transforms.py``,
spec data_evaluation.md §4.1). Every random choice is drawn per sample, on the device of the
batch, from torch's default generator of that device; per-sample decisions are masks used
through ``torch.where``, so nothing reads a tensor value back to the host (no ``.item()``, no
Python branch on data): one call is a fixed sequence of kernels whatever the draws.

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
             have blur p 0 (spec Q22), so the default views never blur.
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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: torchvision's tensor ``rgb_to_grayscale`` weights (ITU-R 601-2 luma, R written 0.2989)
LUMA_WEIGHTS: tuple[float, float, float] = (0.2989, 0.587, 0.114)

#: RandomResizedCrop defaults of the BYOL views (torchvision's)
CROP_RATIO: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
CROP_ATTEMPTS = 10


# ---------------------------------------------------------------------------------------- crop


def crop_boxes_from_draws(
    area_draws: Tensor,
    log_ratio_draws: Tensor,
    offset_draws: Tensor,
    height: int,
    width: int,
    ratio: tuple[float, float] = CROP_RATIO,
) -> Tensor:
    """torchvision's ``RandomResizedCrop.get_params`` for every sample, given its random draws.

    For attempt a of sample b: target area A = H·W·s with s = ``area_draws[b, a]``, aspect
    r = exp(``log_ratio_draws[b, a]``) (exp in float32 as torchvision, the rest in float64 as its
    Python floats), w = round(sqrt(A·r)), h = round(sqrt(A/r)) with round half to even (Python's
    ``round``). The first attempt with 0 < w <= W and 0 < h <= H gives the box, with
    top = floor(u0·(H-h+1)) and left = floor(u1·(W-w+1)) for u = ``offset_draws[b]`` in [0, 1)
    (uniform integers in [0, H-h] and [0, W-w], torchvision's ``randint``). When no attempt is
    valid, torchvision's fallback: the whole image when W/H lies in ``ratio``, else the
    centred crop of the extreme ratio.

    Args:
        area_draws: [B, A] draws of s ~ U(scale) (float32, as torchvision draws them).
        log_ratio_draws: [B, A] draws of log r ~ U(log ratio[0], log ratio[1]).
        offset_draws: [B, 2] uniforms in [0, 1) for the top and left offsets.
        height, width: H, W of the images.
        ratio: the aspect-ratio range (w/h).

    Returns:
        int64 [B, 4]: (top, left, h, w) per sample.
    """
    area = float(height * width)
    target_area = area * area_draws.to(torch.float64)
    aspect = torch.exp(log_ratio_draws.to(torch.float32)).to(torch.float64)
    w = torch.round(torch.sqrt(target_area * aspect)).to(torch.int64)
    h = torch.round(torch.sqrt(target_area / aspect)).to(torch.int64)
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    # argmax returns the first maximum: the first valid attempt, as torchvision's loop stops there.
    first = valid.to(torch.int32).argmax(dim=1, keepdim=True)
    any_valid = valid.any(dim=1)
    h_sel = h.gather(1, first).squeeze(1)
    w_sel = w.gather(1, first).squeeze(1)

    # The fallback depends on the image shape only: plain Python, as in torchvision.
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        fb_w, fb_h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fb_h, fb_w = height, round(height * max(ratio))
    else:
        fb_w, fb_h = width, height

    offsets = offset_draws.to(torch.float64)
    # min(..., n - 1) guards the u -> 1 rounding edge; floor(u·n) is uniform on {0..n-1}.
    top = torch.minimum(torch.floor(offsets[:, 0] * (height - h_sel + 1)).to(torch.int64), height - h_sel)
    left = torch.minimum(torch.floor(offsets[:, 1] * (width - w_sel + 1)).to(torch.int64), width - w_sel)
    # Python-int fallbacks enter torch.where as scalars: no host-to-device copy (which would sync).
    return torch.stack(
        [
            torch.where(any_valid, top, (height - fb_h) // 2),
            torch.where(any_valid, left, (width - fb_w) // 2),
            torch.where(any_valid, h_sel, fb_h),
            torch.where(any_valid, w_sel, fb_w),
        ],
        dim=1,
    )


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


def _aa_bilinear_taps(start: Tensor, length: Tensor, in_size: int, out_size: int) -> tuple[Tensor, Tensor]:
    """Source indices and weights of an antialiased bilinear resize of one axis segment per sample.

    The segment [start, start + length) of an axis of ``in_size`` pixels is resampled to
    ``out_size`` pixels with the weights of torch's ``interpolate(..., antialias=True)`` and PIL's
    bilinear ``resize`` (both implement the same filter): with scale = length / out_size,
    support = max(scale, 1) and centre c_k = scale·(k + 0.5),

        w_k(p) ∝ max(0, 1 - |p - c_k + 0.5| / support),  p in [trunc(c_k - support + 0.5), trunc(c_k + support + 0.5))
                                                          ∩ [0, length),

    normalised to sum 1 (pixels outside the segment get no weight: the crop edge is clamped, not
    read through). For upscaling this is bilinear with align_corners=False and edge clamping.

    Args:
        start, length: int64 [B] segment start and length.
        in_size, out_size: axis length of the image and of the output.

    Returns:
        (index int64 [B, out_size, K], weight float32 [B, out_size, K]) with a static tap count
        K = ceil(2·max(in_size / out_size, 1)) + 1 (enough for any segment length <= in_size).
    """
    dtype = torch.float32
    device = start.device
    length_f = length.to(dtype)[:, None]
    scale = length_f / out_size
    support = scale.clamp(min=1.0)
    center = scale * (torch.arange(out_size, device=device, dtype=dtype) + 0.5)
    first = torch.trunc(center - support + 0.5).clamp(min=0)
    stop = torch.minimum(torch.trunc(center + support + 0.5), length_f)
    max_taps = math.ceil(2 * max(in_size / out_size, 1.0)) + 1
    taps = first[..., None] + torch.arange(max_taps, device=device, dtype=dtype)
    weight = (1.0 - ((taps - center[..., None] + 0.5) / support[..., None]).abs()).clamp(min=0.0)
    weight = torch.where(taps < stop[..., None], weight, torch.zeros_like(weight))
    weight = weight / weight.sum(dim=-1, keepdim=True)
    # Taps past the segment have weight 0; clamping keeps their (unused) index inside the image.
    index = (start[:, None, None] + taps.to(torch.int64)).clamp(0, in_size - 1)
    return index, weight


def _resample_rows(x: Tensor, index: Tensor, weight: Tensor) -> Tensor:
    """out[b, c, k, :] = Σ_t weight[b, k, t] · x[b, c, index[b, k, t], :]  (gather + multiply-add, no matmul,
    so TF32/bf16 matmul settings cannot change the result)."""
    b, c, _, w = x.shape
    s, k = index.shape[1:]
    rows = x.gather(2, index.reshape(b, 1, s * k, 1).expand(b, c, s * k, w)).view(b, c, s, k, w)
    return (rows * weight.view(b, 1, s, k, 1)).sum(dim=3)


def _resample_cols(x: Tensor, index: Tensor, weight: Tensor) -> Tensor:
    """out[b, c, :, k] = Σ_t weight[b, k, t] · x[b, c, :, index[b, k, t]]."""
    b, c, h, _ = x.shape
    s, k = index.shape[1:]
    cols = x.gather(3, index.reshape(b, 1, 1, s * k).expand(b, c, h, s * k)).view(b, c, h, s, k)
    return (cols * weight.view(b, 1, 1, s, k)).sum(dim=-1)


def resized_crop(x: Tensor, boxes: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Crop each image to its box and resize it to ``size`` (antialiased bilinear).

    Per sample the same function as torchvision ``F.resized_crop(x[b], top, left, h, w, size,
    InterpolationMode.BILINEAR, antialias=True)`` on a float tensor (weights: ``_aa_bilinear_taps``).

    Args:
        x: float [B, C, H, W].
        boxes: int64 [B, 4] (top, left, h, w).
        size: output side S or (S_h, S_w).

    Returns:
        float [B, C, S_h, S_w].
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    _, _, height, width = x.shape
    row_index, row_weight = _aa_bilinear_taps(boxes[:, 0], boxes[:, 2], height, out_h)
    col_index, col_weight = _aa_bilinear_taps(boxes[:, 1], boxes[:, 3], width, out_w)
    return _resample_rows(_resample_cols(x, col_index, col_weight), row_index, row_weight)


def resize(x: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Squash-resize every image to ``size`` (``T.Resize((S, S))``); returns ``x`` itself when the sizes match."""
    out_h, out_w = (size, size) if isinstance(size, int) else size
    b, _, height, width = x.shape
    if (height, width) == (out_h, out_w):
        return x
    # the whole image as the box, built on the device (torch.tensor(list, device=cuda) would sync)
    full = torch.zeros(b, 4, dtype=torch.int64, device=x.device)
    full[:, 2] = height
    full[:, 3] = width
    return resized_crop(x, full, (out_h, out_w))


# ------------------------------------------------------------------------------ flip, colour


def _per_sample(values: Tensor) -> Tensor:
    """[B] → [B, 1, 1, 1], to broadcast one value per image."""
    return values.view(-1, 1, 1, 1)


def horizontal_flip(x: Tensor, mask: Tensor) -> Tensor:
    """Mirror the images where ``mask`` [B] (bool) is set (``F.hflip``)."""
    return torch.where(_per_sample(mask), x.flip(-1), x)


def rgb_to_grayscale(x: Tensor) -> Tensor:
    """Luma 0.2989 R + 0.587 G + 0.114 B of float [B, 3, H, W] as [B, 1, H, W] (torchvision's tensor weights)."""
    r, g, b = x.unbind(dim=-3)
    return (LUMA_WEIGHTS[0] * r + LUMA_WEIGHTS[1] * g + LUMA_WEIGHTS[2] * b).unsqueeze(-3)


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """torchvision's ``_blend`` for float images: clamp(f·x + (1-f)·other, 0, 1), f [B].

    With f = 1 the result is x exactly (1·x + 0·other), which ``color_jitter`` relies on."""
    f = _per_sample(factor)
    return (f * x + (1.0 - f) * other).clamp(0.0, 1.0)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """clamp(b·x, 0, 1) per sample (``F.adjust_brightness``), b [B]."""
    return _blend(x, torch.zeros_like(x), factor)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """clamp(c·x + (1-c)·m, 0, 1) per sample, m the image's mean luma (``F.adjust_contrast``), c [B]."""
    mean = rgb_to_grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(x, mean, factor)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """clamp(s·x + (1-s)·gray(x), 0, 1) per sample (``F.adjust_saturation``), s [B]."""
    return _blend(x, rgb_to_grayscale(x), factor)


def rgb_to_hsv(x: Tensor) -> Tensor:
    """torchvision's ``_rgb2hsv`` (float, [..., 3, H, W] in [0, 1]; hue in turns [0, 1))."""
    r, g, b = x.unbind(dim=-3)
    maxc = x.amax(dim=-3)
    minc = x.amin(dim=-3)
    eqc = maxc == minc  # gray pixels: hue and saturation 0, no division by zero
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc = (maxc - r) / cr_divisor
    gc = (maxc - g) / cr_divisor
    bc = (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=-3)


def hsv_to_rgb(x: Tensor) -> Tensor:
    """torchvision's ``_hsv2rgb`` (float [B, 3, H, W]) with an exact elementwise selection.

    torchvision picks, per hue sextant i in 0..5, R from (v, q, p, p, t, v), G from
    (t, v, v, q, p, p) and B from (p, p, t, v, v, q) through a one-hot einsum. G's and B's rows
    are R's row read at sextant i - 2 and i - 4, so channel c takes R's pattern at
    k = (i - 2c) mod 6: v for k in {0, 5}, q for 1, t for 4, p for 2 and 3. Selecting with
    ``torch.where`` gives the same values without a matmul (which TF32/bf16 settings could
    round) and without a lookup table copied to the device.
    """
    h, s, v = x.unbind(dim=-3)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    sextant = (i.to(torch.int64) % 6).unsqueeze(-3)
    p = (v * (1.0 - s)).clamp(0.0, 1.0).unsqueeze(-3)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0).unsqueeze(-3)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0).unsqueeze(-3)
    v = v.unsqueeze(-3)
    channel = torch.arange(3, device=x.device).view(3, 1, 1)
    k = (sextant - 2 * channel) % 6  # [..., 3, H, W]
    return torch.where((k == 0) | (k == 5), v, torch.where(k == 1, q, torch.where(k == 4, t, p)))


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue by ``shift`` [B] turns: hsv → (h + shift) mod 1 → rgb (``F.adjust_hue`` on float tensors)."""
    h, s, v = rgb_to_hsv(x).unbind(dim=-3)
    h = torch.remainder(h + shift.view(-1, 1, 1), 1.0)
    return hsv_to_rgb(torch.stack((h, s, v), dim=-3))


def _blend_op(x: Tensor, op: Tensor, brightness: Tensor, contrast: Tensor, saturation: Tensor) -> Tensor:
    """Apply, per sample, the blend op with id ``op`` [B] (0 brightness, 1 contrast, 2 saturation;
    any other id: identity). The three torchvision ops are one blend clamp(f·x + (1-f)·other, 0, 1)
    with other = 0, the mean luma, or the luma image; selecting f and other per sample runs them
    in one pass. An unselected sample gets f = 1, i.e. x exactly."""
    gray = rgb_to_grayscale(x)
    mean = gray.mean(dim=(-3, -2, -1), keepdim=True)
    op4 = _per_sample(op)
    other = torch.where(op4 == 0, torch.zeros_like(gray), torch.where(op4 == 1, mean, gray))
    one = torch.ones_like(brightness)
    factor = torch.where(op == 0, brightness, torch.where(op == 1, contrast, torch.where(op == 2, saturation, one)))
    return _blend(x, other, factor)


def color_jitter(
    x: Tensor, brightness: Tensor, contrast: Tensor, saturation: Tensor, hue: Tensor, order: Tensor, apply: Tensor
) -> Tensor:
    """torchvision's ``ColorJitter`` with per-sample factors and per-sample op order.

    Op ids: 0 brightness, 1 contrast, 2 saturation, 3 hue; ``order[b]`` is the permutation of
    sample b (the ``fn_idx`` of ``ColorJitter.get_params``). The sample's ops before its hue
    position run first (``_blend_op`` per position, identity past the hue), then the hue
    rotation (once for the batch, kept by ``torch.where`` where ``apply``), then its ops after
    the hue. So each jittered sample sees exactly its four ops in its order, with no
    data-dependent branch and one HSV round trip per batch.

    Args:
        x: float [B, 3, H, W] in [0, 1].
        brightness, contrast, saturation: [B] factors (1 where the jitter is off).
        hue: [B] shifts in turns.
        order: int64 [B, 4], a permutation of 0..3 per row.
        apply: bool [B], the ``RandomApply`` coin; samples without it come back unchanged.
    """
    hue_position = (order == 3).to(torch.int64).argmax(dim=1)
    none = torch.full_like(hue_position, 3)  # op id 3 is no blend: the identity in _blend_op
    # before the hue: positions 0..2 (hue at position 0 leaves none)
    for position in range(3):
        op = torch.where(position < hue_position, order[:, position], none)
        x = _blend_op(x, op, brightness, contrast, saturation)
    x = torch.where(_per_sample(apply), adjust_hue(x, hue), x)
    # after the hue: positions 1..3
    for position in range(1, 4):
        op = torch.where(position > hue_position, order[:, position], none)
        x = _blend_op(x, op, brightness, contrast, saturation)
    return x


def random_grayscale(x: Tensor, mask: Tensor) -> Tensor:
    """Replace the images where ``mask`` [B] is set by their luma on all 3 channels (``RandomGrayscale``)."""
    return torch.where(_per_sample(mask), rgb_to_grayscale(x).expand_as(x), x)


# ---------------------------------------------------------------------------------------- blur


def pil_box_blur_radius(sigma: Tensor | float, passes: int = 3) -> Tensor:
    """The extended-box radius PIL's ``GaussianBlur(radius=sigma)`` uses (Pillow ``_gaussian_blur_radius``).

    PIL approximates a Gaussian of standard deviation sigma by ``passes`` (3) box blurs whose
    fractional radius r = l + a has, over the passes, variance exactly sigma² (Gwosdek et al.,
    "Theoretical foundations of Gaussian convolution by extended box filtering", 2011):

        σ_p² = σ² / passes,  L = sqrt(12 σ_p² + 1),  l = floor((L - 1) / 2),
        a = (2l + 1)(l(l + 1) - 3 σ_p²) / (6 (σ_p² - (l + 1)²)).
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    sigma2 = sigma * sigma / passes
    box = torch.sqrt(12.0 * sigma2 + 1.0)
    whole = torch.floor((box - 1.0) / 2.0)
    frac = (2.0 * whole + 1.0) * (whole * (whole + 1.0) - 3.0 * sigma2) / (6.0 * (sigma2 - (whole + 1.0) ** 2))
    return whole + frac


def _box_kernel(radius: Tensor, half_width: int) -> Tensor:
    """Per-sample extended box kernels [B, 2·half_width + 1] of radius r = l + a (PIL ``ImagingLineBoxBlur``):
    weight 1/(2r + 1) on |k| <= l and a/(2r + 1) on |k| = l + 1, zero beyond (sums to 1)."""
    offsets = torch.arange(-half_width, half_width + 1, device=radius.device, dtype=torch.float32).abs()
    whole = torch.floor(radius)[:, None]
    frac = (radius[:, None] - whole).expand(-1, offsets.numel())
    body = torch.where(offsets <= whole, torch.ones_like(frac), torch.where(offsets == whole + 1, frac, 0.0))
    return body / (2.0 * radius[:, None] + 1.0)


def _box_pass(x: Tensor, kernel: Tensor, dim: int) -> Tensor:
    """One 1-D box pass along ``dim`` (-1 or -2) with edge pixels repeated (PIL's edge handling);
    shifted multiply-adds, not a convolution kernel, so cuDNN TF32 settings cannot change it."""
    half = (kernel.shape[1] - 1) // 2
    pad = (half, half, 0, 0) if dim == -1 else (0, 0, half, half)
    padded = F.pad(x, pad, mode="replicate")
    length = x.shape[dim]
    out = torch.zeros_like(x)
    for tap in range(kernel.shape[1]):
        out = out + _per_sample(kernel[:, tap]) * padded.narrow(dim, tap, length)
    return out


def gaussian_blur_pil(x: Tensor, sigma: Tensor, sigma_max: float = 2.0, passes: int = 3) -> Tensor:
    """PIL's ``ImageFilter.GaussianBlur(radius=sigma)`` per sample, in float (lightly's blur semantics).

    PIL's "radius" is the standard deviation σ; PIL blurs with ``passes`` extended box filters
    of radius ``pil_box_blur_radius(σ)`` horizontally, then ``passes`` vertically, repeating the
    edge pixels. The same passes run here in float32 without PIL's per-pass uint8 rounding. The
    taps are bounded by the largest σ of the distribution, so the kernel width is static.

    Args:
        x: float [B, C, H, W].
        sigma: [B] PIL radii (σ), each <= ``sigma_max``.
        sigma_max: upper bound of σ (fixes the kernel width).
        passes: PIL's number of box passes (3).
    """
    half_width = math.floor(float(pil_box_blur_radius(sigma_max, passes))) + 1
    kernel = _box_kernel(pil_box_blur_radius(sigma, passes), half_width)
    for dim in (-1, -2):
        for _ in range(passes):
            x = _box_pass(x, kernel, dim)
    return x


def solarize(x: Tensor, mask: Tensor, threshold: float = 0.5) -> Tensor:
    """Invert x >= ``threshold`` (x → 1 - x) in the images where ``mask`` [B] is set.

    PIL's ``solarize(threshold=128)`` inverts uint8 v >= 128 (v → 255 - v). The CPU path
    reaches it with pixels already rounded to uint8, and round(255·x) >= 128 ⇔ x >= 0.5, so 0.5
    is the float threshold of the same rule (it is also torchvision's for float tensors).
    """
    return torch.where(_per_sample(mask) & (x >= threshold), 1.0 - x, x)


def normalize(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """(x - mean) / std per channel, subtract then divide as ``T.Normalize`` (mean, std: [C])."""
    return x.sub(mean.view(-1, 1, 1)).div(std.view(-1, 1, 1))


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
#: the two BYOL views of ``cifar_ssl_transform``: blur off in both (Q22), solarization 0 / 0.2
CIFAR_VIEW1 = ViewSpec(gaussian_blur=0.0, solarization_prob=0.0)
CIFAR_VIEW2 = ViewSpec(gaussian_blur=0.0, solarization_prob=0.2)


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
        x = color_jitter(
            x, params.brightness, params.contrast, params.saturation, params.hue, params.order, params.jitter
        )
    if spec.random_gray_scale > 0:
        x = random_grayscale(x, params.gray)
    if spec.gaussian_blur > 0:
        blurred = gaussian_blur_pil(x, params.sigma, sigma_max=spec.sigmas[1])
        x = torch.where(_per_sample(params.blur), blurred, x)
    if spec.solarization_prob > 0:
        x = solarize(x, params.solarize)
    return normalize(x, mean, std)


class DeviceSSLAugment(nn.Module):
    """The 3-view SSL transform of ``cifar_ssl_transform`` on uint8 batches, on their device.

    Args:
        size: view side S (the datamodule's ``input_height``).
        mean, std: the dataset's normalisation statistics (3 values each).
        view1, view2: the BYOL view parameters; the defaults are those of ``cifar_ssl_transform``
            (blur p 0 in both views, solarization p 0 / 0.2).

    ``forward(x)`` takes uint8 [B, 3, H, W] and returns ``(v1, v2, v3)``, each float32
    [B, 3, S, S]: v1 and v2 the augmented views, v3 the finetune view (resize + normalise).
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
    ) -> None:
        super().__init__()
        self.size = int(size)
        self.views = (view1, view2)
        # float32 like T.Normalize's tensors; not persistent: rebuilt from the config, never checkpointed.
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32), persistent=False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """uint8 [B, 3, H, W] → (v1, v2, v3) float32 [B, 3, S, S], normalised.

        Raises:
            TypeError: ``x`` is not a uint8 tensor of shape [B, 3, H, W].
        """
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise TypeError(f"DeviceSSLAugment expects uint8 [B, 3, H, W] images, got {x.dtype} {tuple(x.shape)}")
        mean, std = self.mean.to(x.device), self.std.to(x.device)  # no-ops once the module sits on x's device
        # ToTensor's conversion: float32, then / 255
        images = x.to(torch.float32).div(255)
        n, _, height, width = images.shape
        augmented = [
            apply_view(images, sample_view_params(spec, n, height, width, x.device), spec, self.size, mean, std)
            for spec in self.views
        ]
        finetune = normalize(resize(images, self.size), mean, std)
        return augmented[0], augmented[1], finetune

    def augment_batch(self, batch: Any) -> Any:
        """``[x_uint8, y]`` → ``[[v1, v2, v3], y]`` (the CPU path's SSL batch layout); other batches pass unchanged.

        Only a 2-element list/tuple whose first element is a 4-D uint8 tensor is augmented, so
        batches that are already views (another loader, a second call) are left alone.
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
            return [list(self(batch[0])), batch[1]]
        return batch

    def extra_repr(self) -> str:
        return f"size={self.size}, view1={self.views[0]}, view2={self.views[1]}"


def resolve_augment_on_device(value: bool | str) -> bool:
    """The ``dataset.augment_on_device`` option: true, false, or "auto" (on when CUDA is available).

    Raises:
        ValueError: any other value.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() == "auto":
        return torch.cuda.is_available()
    raise ValueError(f"dataset.augment_on_device must be true, false or auto, got {value!r}")
