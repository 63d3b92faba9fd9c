"""Pure tensor ops of the device SSL views (``src/data/augment/device_views.py``).

Each op maps a float batch ``[B, C, H, W]`` and per-sample parameters given as tensors (``[B]``
factors, shifts or bool masks, ``[B, 4]`` crop boxes) to a batch; nothing here draws a random
number. Per-sample decisions are masks used through ``torch.where`` and no op reads a tensor value
back to the host (no ``.item()``, no Python branch on data), so a batch is a fixed sequence of
kernels whatever the parameters. Resampling, blur and the HSV round trip use gathers and
multiply-adds rather than matmuls or convolutions, so TF32/bf16 settings cannot change them.

Each op computes, per sample, the torchvision tensor op (or PIL op) its docstring names:
crop boxes from given draws (``RandomResizedCrop.get_params``), antialiased resized crop and
resize, horizontal flip, brightness / contrast / saturation / hue and the whole ``ColorJitter``
in a per-sample order, grayscale, PIL's Gaussian blur, solarization and normalisation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

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


def per_sample(values: Tensor) -> Tensor:
    """[B] → [B, 1, 1, 1], to broadcast one value per image."""
    return values.view(-1, 1, 1, 1)


def horizontal_flip(x: Tensor, mask: Tensor) -> Tensor:
    """Mirror the images where ``mask`` [B] (bool) is set (``F.hflip``)."""
    return torch.where(per_sample(mask), x.flip(-1), x)


def rgb_to_grayscale(x: Tensor) -> Tensor:
    """Luma 0.2989 R + 0.587 G + 0.114 B of float [B, 3, H, W] as [B, 1, H, W] (torchvision's tensor weights)."""
    r, g, b = x.unbind(dim=-3)
    return (LUMA_WEIGHTS[0] * r + LUMA_WEIGHTS[1] * g + LUMA_WEIGHTS[2] * b).unsqueeze(-3)


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """torchvision's ``_blend`` for float images: clamp(f·x + (1-f)·other, 0, 1), f [B].

    With f = 1 the result is x exactly (1·x + 0·other), which ``color_jitter`` relies on."""
    f = per_sample(factor)
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
    op4 = per_sample(op)
    other = torch.where(op4 == 0, torch.zeros_like(gray), torch.where(op4 == 1, mean, gray))
    one = torch.ones_like(brightness)
    factor = torch.where(op == 0, brightness, torch.where(op == 1, contrast, torch.where(op == 2, saturation, one)))
    return _blend(x, other, factor)


def color_jitter(
    x: Tensor,
    brightness: Tensor,
    contrast: Tensor,
    saturation: Tensor,
    hue: Tensor | None,
    order: Tensor,
    apply: Tensor,
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
        hue: [B] shifts in turns, or None for no hue step (a jitter of hue strength 0, which
            torchvision leaves out; the blend ops keep their per-sample order).
        order: int64 [B, 4], a permutation of 0..3 per row.
        apply: bool [B], the ``RandomApply`` coin; samples without it come back unchanged.
    """
    hue_position = (order == 3).to(torch.int64).argmax(dim=1)
    none = torch.full_like(hue_position, 3)  # op id 3 is no blend: the identity in _blend_op
    # before the hue: positions 0..2 (hue at position 0 leaves none)
    for position in range(3):
        op = torch.where(position < hue_position, order[:, position], none)
        x = _blend_op(x, op, brightness, contrast, saturation)
    if hue is not None:
        x = torch.where(per_sample(apply), adjust_hue(x, hue), x)
    # after the hue: positions 1..3
    for position in range(1, 4):
        op = torch.where(position > hue_position, order[:, position], none)
        x = _blend_op(x, op, brightness, contrast, saturation)
    return x


def random_grayscale(x: Tensor, mask: Tensor) -> Tensor:
    """Replace the images where ``mask`` [B] is set by their luma on all 3 channels (``RandomGrayscale``)."""
    return torch.where(per_sample(mask), rgb_to_grayscale(x).expand_as(x), x)


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
        out = out + per_sample(kernel[:, tap]) * padded.narrow(dim, tap, length)
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
    return torch.where(per_sample(mask) & (x >= threshold), 1.0 - x, x)


def normalize(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """(x - mean) / std per channel, subtract then divide as ``T.Normalize`` (mean, std: [C])."""
    return x.sub(mean.view(-1, 1, 1)).div(std.view(-1, 1, 1))
