"""Image transforms of the datamodules, on PIL images (the CPU path).

Every transform takes a PIL image and converts it to RGB first (so grayscale PNGs and
palette images work), then returns float32 CHW tensors.

The SSL views reproduce lightly 1.5.0's ``BYOLView1Transform`` / ``BYOLView2Transform``
step for step, with torchvision's v1 transforms:

    RandomResizedCrop(size, scale (0.08, 1), ratio (3/4, 4/3))
    → RandomHorizontalFlip(0.5)
    → RandomApply([ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8)
    → RandomGrayscale(0.2)
    → Gaussian blur with probability p, sigma ~ U(0.1, 2) used as the PIL GaussianBlur radius
    → solarization with probability p at threshold 128
    → ToTensor → Normalize

Deliberate differences from lightly that do not change the distribution of the views:

- lightly also runs a 90° rotation and a vertical flip with probability 0 and keeps the blur
  and solarization steps when their probability is 0; those steps do nothing, so they are
  left out of the pipelines here (a view without solarization has no solarization step).
- lightly draws the blur and solarization coins (and the rotation coin) from NumPy's global
  RNG, one number per step per image even when the step is off. Here every draw comes from
  torch's RNG, which DataLoader workers already seed per worker. The same seed therefore
  gives different, equally distributed, augmentations than the reference; the NumPy draw
  sequence is not reproduced.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from PIL import Image, ImageFilter, ImageOps
from torch import Tensor
from torchvision import transforms as T

# {"mean": (r, g, b), "std": (r, g, b)}, the layout of lightly's IMAGENET_NORMALIZE.
Normalization = Mapping[str, Sequence[float]]

CIFAR10_NORMALIZE: dict[str, tuple[float, float, float]] = {
    "mean": (125.3 / 255, 123.0 / 255, 113.9 / 255),
    "std": (63.0 / 255, 62.1 / 255, 66.7 / 255),
}
CIFAR100_NORMALIZE: dict[str, tuple[float, float, float]] = {
    "mean": (0.50707516, 0.48654887, 0.44091784),
    "std": (0.26733429, 0.25643846, 0.27615047),
}
IMAGENET_NORMALIZE: dict[str, tuple[float, float, float]] = {
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
}

#: default size of the ImageNet views (lightly's default ``input_size``)
IMAGENET_SIZE = 224


class ToRGB:
    """Convert a PIL image to RGB (grayscale, palette, RGBA, ...); RGB images pass unchanged."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.mode == "RGB" else image.convert("RGB")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class RandomGaussianBlur:
    """PIL Gaussian blur applied with probability ``prob``; radius ~ U(sigmas) (lightly's ``GaussianBlur``).

    lightly 1.5.0 passes the sampled sigma as the PIL ``GaussianBlur`` radius (its kernel size
    argument is deprecated and unused); so does this class. Draws come from torch's RNG.

    Args:
        prob: probability of blurring an image.
        sigmas: (low, high) of the uniform radius distribution.
    """

    def __init__(self, prob: float = 0.5, sigmas: tuple[float, float] = (0.1, 2.0)) -> None:
        self.prob = prob
        self.sigmas = (float(sigmas[0]), float(sigmas[1]))

    def __call__(self, image: Image.Image) -> Image.Image:
        # `<` as in lightly: prob 1.0 always fires, since rand() lies in [0, 1).
        if torch.rand(()).item() < self.prob:
            radius = torch.empty(()).uniform_(self.sigmas[0], self.sigmas[1]).item()
            return image.filter(ImageFilter.GaussianBlur(radius=radius))
        return image

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prob={self.prob}, sigmas={self.sigmas})"


class RandomSolarization:
    """PIL solarization (values >= ``threshold`` inverted) with probability ``prob`` (lightly's).

    Args:
        prob: probability of solarizing an image.
        threshold: PIL ``ImageOps.solarize`` threshold; pixel values v >= threshold become 255 - v.
    """

    def __init__(self, prob: float = 0.5, threshold: int = 128) -> None:
        self.prob = prob
        self.threshold = threshold

    def __call__(self, image: Image.Image) -> Image.Image:
        if torch.rand(()).item() < self.prob:
            return ImageOps.solarize(image, threshold=self.threshold)
        return image

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prob={self.prob}, threshold={self.threshold})"


class MultiViewTransform:
    """Apply each transform to the same image independently (lightly's ``MultiViewTransform``).

    Args:
        transforms: one transform per view.

    Returns (on call):
        A list with one tensor per view, e.g. ``[v1, v2, v3]``, each (3, H, H).
    """

    def __init__(self, transforms: Sequence[Callable[[Image.Image], Tensor]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Image.Image) -> list[Tensor]:
        return [transform(image) for transform in self.transforms]

    def __repr__(self) -> str:
        views = "\n".join(f"  {t!r}" for t in self.transforms)
        return f"{type(self).__name__}(\n{views}\n)"


def _tensor_steps(normalize: Normalization | None) -> list[Callable]:
    """ToTensor, then Normalize(mean, std) when ``normalize`` is given."""
    steps: list[Callable] = [T.ToTensor()]
    if normalize is not None:
        steps.append(T.Normalize(mean=list(normalize["mean"]), std=list(normalize["std"])))
    return steps


class BYOLViewTransform(T.Compose):
    """One BYOL augmentation view, parametrised like lightly 1.5.0's BYOL view transforms.

    Steps with probability 0 are omitted (see the module docstring).

    Args:
        input_size: output side H of the square crop.
        cj_prob: probability of applying the colour jitter.
        cj_strength: multiplier of the four jitter strengths.
        cj_bright, cj_contrast, cj_sat, cj_hue: jitter strengths before ``cj_strength``.
        min_scale, max_scale: RandomResizedCrop area-scale range (ratio stays (3/4, 4/3)).
        random_gray_scale: probability of converting to grayscale (3 equal channels).
        gaussian_blur: probability of the PIL Gaussian blur.
        sigmas: radius range of the blur.
        solarization_prob: probability of solarizing at ``solarization_threshold``.
        hf_prob, vf_prob: horizontal / vertical flip probabilities.
        normalize: ``{"mean", "std"}`` for the final Normalize, or None for none.

    Returns (on call):
        float32 tensor (3, input_size, input_size).
    """

    def __init__(
        self,
        input_size: int = IMAGENET_SIZE,
        cj_prob: float = 0.8,
        cj_strength: float = 1.0,
        cj_bright: float = 0.4,
        cj_contrast: float = 0.4,
        cj_sat: float = 0.2,
        cj_hue: float = 0.1,
        min_scale: float = 0.08,
        max_scale: float = 1.0,
        random_gray_scale: float = 0.2,
        gaussian_blur: float = 1.0,
        sigmas: tuple[float, float] = (0.1, 2.0),
        solarization_prob: float = 0.0,
        solarization_threshold: int = 128,
        hf_prob: float = 0.5,
        vf_prob: float = 0.0,
        normalize: Normalization | None = IMAGENET_NORMALIZE,
    ) -> None:
        steps: list[Callable] = [ToRGB(), T.RandomResizedCrop(size=input_size, scale=(min_scale, max_scale))]
        if hf_prob > 0:
            steps.append(T.RandomHorizontalFlip(p=hf_prob))
        if vf_prob > 0:
            steps.append(T.RandomVerticalFlip(p=vf_prob))
        if cj_prob > 0:
            jitter = T.ColorJitter(
                brightness=cj_strength * cj_bright,
                contrast=cj_strength * cj_contrast,
                saturation=cj_strength * cj_sat,
                hue=cj_strength * cj_hue,
            )
            steps.append(T.RandomApply([jitter], p=cj_prob))
        if random_gray_scale > 0:
            steps.append(T.RandomGrayscale(p=random_gray_scale))
        if gaussian_blur > 0:
            steps.append(RandomGaussianBlur(prob=gaussian_blur, sigmas=sigmas))
        if solarization_prob > 0:
            steps.append(RandomSolarization(prob=solarization_prob, threshold=solarization_threshold))
        steps += _tensor_steps(normalize)
        super().__init__(steps)


class BYOLView1Transform(BYOLViewTransform):
    """lightly's BYOL view 1 defaults: blur p 1.0, no solarization (other args as the base)."""

    def __init__(self, gaussian_blur: float = 1.0, solarization_prob: float = 0.0, **kwargs: Any) -> None:
        super().__init__(gaussian_blur=gaussian_blur, solarization_prob=solarization_prob, **kwargs)


class BYOLView2Transform(BYOLViewTransform):
    """lightly's BYOL view 2 defaults: blur p 0.1, solarization p 0.2 (other args as the base)."""

    def __init__(self, gaussian_blur: float = 0.1, solarization_prob: float = 0.2, **kwargs: Any) -> None:
        super().__init__(gaussian_blur=gaussian_blur, solarization_prob=solarization_prob, **kwargs)


class FinetuneViewTransform(T.Compose):
    """Squash-resize to (input_size, input_size) → ToTensor → Normalize if given.

    Deterministic: no crop, no augmentation. View 3 of the SSL transforms and the probe transform.

    Args:
        input_size: output side H.
        normalize: ``{"mean", "std"}``, or None for no normalisation (the default, as in the reference).

    Returns (on call):
        float32 tensor (3, input_size, input_size).
    """

    def __init__(self, input_size: int = 32, normalize: Normalization | None = None) -> None:
        super().__init__([ToRGB(), T.Resize((input_size, input_size)), *_tensor_steps(normalize)])


class SupervisedTransform(T.Compose):
    """Supervised transform of the base datamodule (CIFAR).

    train: RandomResizedCrop(input_height) → horizontal flip 0.5 → ToTensor → Normalize.
    val/test: Resize(input_height) of the shorter side (no crop) → ToTensor → Normalize.

    Args:
        train: training (augmenting) or evaluation mode.
        input_height: crop size / shorter-side size.
        normalize: ``{"mean", "std"}`` or None.
    """

    def __init__(self, train: bool = True, input_height: int = 32, normalize: Normalization | None = None) -> None:
        self.train = train
        head: list[Callable]
        if train:
            head = [T.RandomResizedCrop(input_height), T.RandomHorizontalFlip(p=0.5)]
        else:
            head = [T.Resize(input_height)]
        super().__init__([ToRGB(), *head, *_tensor_steps(normalize)])


class ImageNetSupervisedTransform(T.Compose):
    """Supervised transform of the ImageNet family (semi-supervised stages).

    train: RandomResizedCrop(input_height, scale (0.08, 1)) → horizontal flip 0.5 → ToTensor → Normalize.
    val/test: Resize(resize_height) of the shorter side → CenterCrop(input_height) → ToTensor → Normalize.

    Args:
        train: training (augmenting) or evaluation mode.
        resize_height: shorter-side size before the evaluation center crop (256).
        input_height: crop size H (224).
        normalize: ``{"mean", "std"}``; ImageNet statistics by default.

    Returns (on call):
        float32 tensor (3, input_height, input_height).
    """

    def __init__(
        self,
        train: bool = True,
        resize_height: int = 256,
        input_height: int = IMAGENET_SIZE,
        normalize: Normalization | None = IMAGENET_NORMALIZE,
    ) -> None:
        self.train = train
        head: list[Callable]
        if train:
            head = [T.RandomResizedCrop(input_height), T.RandomHorizontalFlip(p=0.5)]
        else:
            head = [T.Resize(resize_height), T.CenterCrop(input_height)]
        super().__init__([ToRGB(), *head, *_tensor_steps(normalize)])


def cifar_ssl_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> MultiViewTransform:
    """The base datamodule's 3-view SSL transform (CIFAR).

    Views 1 and 2 are the BYOL views at ``size`` with the dataset's mean/std and the blur
    disabled in both; view 2 keeps solarization at p 0.2 (D-Q22). View 3 is
    ``FinetuneViewTransform(size, normalize)``.

    Returns:
        A transform mapping a PIL image to ``[v1, v2, v3]``, each float32 (3, size, size).
    """
    normalize = {"mean": tuple(mean), "std": tuple(std)}
    return MultiViewTransform(
        [
            BYOLView1Transform(input_size=size, gaussian_blur=0.0, normalize=normalize),
            BYOLView2Transform(input_size=size, gaussian_blur=0.0, normalize=normalize),
            FinetuneViewTransform(input_size=size, normalize=normalize),
        ]
    )


def fashion_mnist_ssl_transform(
    size: int, mean: Sequence[float], std: Sequence[float], min_scale: float = 0.2
) -> MultiViewTransform:
    """The 3-view SSL transform of Fashion-MNIST: ``cifar_ssl_transform`` adapted to 28×28 grey images.

    The images arrive as PIL grey images and are expanded to three equal channels (``ToRGB``),
    so every step below is the CIFAR one where it acts on grey images:

    - RandomResizedCrop with scale (``min_scale``, 1) instead of CIFAR's (0.08, 1): an 8 % crop
      of a 28 px garment is a 8×8 patch of mostly background, which leaves the two views little
      to agree on; 0.2 keeps crops of at least ~12 px. Ratio (3/4, 4/3) and the flip as CIFAR.
    - ColorJitter(brightness 0.4, contrast 0.4) with p 0.8 as CIFAR; saturation and hue are 0 and
      RandomGrayscale is left out: on three equal channels they change nothing.
    - blur off in both views and solarization p 0.2 in view 2, as CIFAR (D-Q22).
    - view 3 is ``FinetuneViewTransform(size, normalize)``, as CIFAR.

    Returns:
        A transform mapping a PIL image to ``[v1, v2, v3]``, each float32 (3, size, size).
    """
    normalize = {"mean": tuple(mean), "std": tuple(std)}
    common: dict[str, Any] = dict(
        input_size=size,
        min_scale=min_scale,
        cj_sat=0.0,
        cj_hue=0.0,
        random_gray_scale=0.0,
        gaussian_blur=0.0,
        normalize=normalize,
    )
    return MultiViewTransform(
        [
            BYOLView1Transform(**common),
            BYOLView2Transform(**common),
            FinetuneViewTransform(input_size=size, normalize=normalize),
        ]
    )


def imagenet_ssl_transform(finetune_size: int = IMAGENET_SIZE) -> MultiViewTransform:
    """The ImageNet 3-view SSL transform.

    Views 1 and 2 are lightly's BYOL views with all defaults: 224 px and ImageNet statistics,
    whatever the datamodule's ``input_height`` (D-Q22); blur p 1.0 / 0.1, solarization p 0 / 0.2.
    View 3 squash-resizes to ``finetune_size`` (224) and normalises with ImageNet statistics.

    Args:
        finetune_size: side of view 3 (the datamodule passes its ``input_height``, 224 in every config).

    Returns:
        A transform mapping a PIL image to ``[v1, v2, v3]``, each float32 (3, H, H).
    """
    return MultiViewTransform(
        [
            BYOLView1Transform(),
            BYOLView2Transform(),
            FinetuneViewTransform(input_size=finetune_size, normalize=IMAGENET_NORMALIZE),
        ]
    )
