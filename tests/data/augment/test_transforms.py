"""The CPU transforms (src/data/augment/transforms.py): view counts, shapes, value ranges, augmentation parameters."""

from __future__ import annotations

import math
import pickle
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from src.data.augment.transforms import (
    CIFAR10_NORMALIZE,
    CIFAR100_NORMALIZE,
    IMAGENET_NORMALIZE,
    BYOLView1Transform,
    BYOLView2Transform,
    BYOLViewTransform,
    FinetuneViewTransform,
    ImageNetSupervisedTransform,
    MultiViewTransform,
    RandomGaussianBlur,
    RandomSolarization,
    SupervisedTransform,
    ToRGB,
    cifar_ssl_transform,
    imagenet_ssl_transform,
)

DRAWS = 400
# Binomial(400, p) frequency bounds at about 4.5 standard deviations.
TOL = 4.5 * math.sqrt(0.25 / DRAWS)


def noise_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    return Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode=mode)


def gray_ramp(size: int = 32) -> Image.Image:
    """A gray image whose value grows from left (0) to right (255)."""
    row = np.linspace(0, 255, size).round().astype(np.uint8)
    return Image.fromarray(np.repeat(np.tile(row, (size, 1))[:, :, None], 3, axis=2))


def steps_of(transform: Any, kind: type) -> list[Any]:
    """Every step of type ``kind`` in a Compose, looking inside RandomApply."""
    found = []
    for step in transform.transforms:
        if isinstance(step, kind):
            found.append(step)
        if isinstance(step, T.RandomApply):
            found += [inner for inner in step.transforms if isinstance(inner, kind)]
    return found


def one(transform: Any, kind: type) -> Any:
    found = steps_of(transform, kind)
    assert len(found) == 1, f"{kind.__name__}: {found}"
    return found[0]


def unnormalize(x: torch.Tensor, normalize: dict[str, Any]) -> torch.Tensor:
    return x * torch.tensor(normalize["std"]).view(3, 1, 1) + torch.tensor(normalize["mean"]).view(3, 1, 1)


def test_normalisation_constants_are_the_reference_numbers() -> None:
    assert CIFAR10_NORMALIZE["mean"] == pytest.approx((0.491373, 0.482353, 0.446667), abs=1e-6)
    assert CIFAR10_NORMALIZE["std"] == pytest.approx((0.247059, 0.243529, 0.261569), abs=1e-6)
    assert CIFAR10_NORMALIZE["mean"] == (125.3 / 255, 123.0 / 255, 113.9 / 255)
    assert CIFAR10_NORMALIZE["std"] == (63.0 / 255, 62.1 / 255, 66.7 / 255)
    assert CIFAR100_NORMALIZE == {
        "mean": (0.50707516, 0.48654887, 0.44091784),
        "std": (0.26733429, 0.25643846, 0.27615047),
    }
    assert IMAGENET_NORMALIZE == {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


# ---------------------------------------------------------------- structure and parameters


def check_byol_common(view: Any, size: int, normalize: dict[str, Any]) -> None:
    assert isinstance(view.transforms[0], ToRGB)
    crop = one(view, T.RandomResizedCrop)
    assert crop.size == (size, size)
    assert crop.scale == (0.08, 1.0)
    assert crop.ratio == pytest.approx((3 / 4, 4 / 3))
    assert crop.interpolation == T.InterpolationMode.BILINEAR and crop.antialias is True
    assert one(view, T.RandomHorizontalFlip).p == 0.5
    assert not steps_of(view, T.RandomVerticalFlip)
    jitter_apply = one(view, T.RandomApply)
    assert jitter_apply.p == 0.8
    jitter = one(view, T.ColorJitter)
    assert jitter.brightness == pytest.approx((0.6, 1.4))
    assert jitter.contrast == pytest.approx((0.6, 1.4))
    assert jitter.saturation == pytest.approx((0.8, 1.2))
    assert jitter.hue == pytest.approx((-0.1, 0.1))
    assert one(view, T.RandomGrayscale).p == 0.2
    norm = one(view, T.Normalize)
    assert list(norm.mean) == list(normalize["mean"]) and list(norm.std) == list(normalize["std"])
    # order: crop, flip, jitter, gray, [blur], [solarize], ToTensor, Normalize
    kinds = [type(step) for step in view.transforms]
    assert kinds[:5] == [ToRGB, T.RandomResizedCrop, T.RandomHorizontalFlip, T.RandomApply, T.RandomGrayscale]
    assert kinds[-2:] == [T.ToTensor, T.Normalize]


def test_cifar_ssl_transform_structure() -> None:
    transform = cifar_ssl_transform(32, CIFAR10_NORMALIZE["mean"], CIFAR10_NORMALIZE["std"])
    assert isinstance(transform, MultiViewTransform) and len(transform.transforms) == 3
    view1, view2, view3 = transform.transforms
    for view in (view1, view2):
        check_byol_common(view, 32, CIFAR10_NORMALIZE)
        assert not steps_of(view, RandomGaussianBlur), "blur is disabled in both CIFAR views"
    assert not steps_of(view1, RandomSolarization), "view 1 has no solarization"
    solarize = one(view2, RandomSolarization)
    assert (solarize.prob, solarize.threshold) == (0.2, 128)
    assert isinstance(view3, FinetuneViewTransform)
    assert [type(s) for s in view3.transforms] == [ToRGB, T.Resize, T.ToTensor, T.Normalize]
    assert one(view3, T.Resize).size == (32, 32)


def test_imagenet_ssl_transform_structure() -> None:
    view1, view2, view3 = imagenet_ssl_transform().transforms
    for view in (view1, view2):
        check_byol_common(view, 224, IMAGENET_NORMALIZE)
    blur1, blur2 = one(view1, RandomGaussianBlur), one(view2, RandomGaussianBlur)
    assert (blur1.prob, blur1.sigmas) == (1.0, (0.1, 2.0))
    assert (blur2.prob, blur2.sigmas) == (0.1, (0.1, 2.0))
    assert not steps_of(view1, RandomSolarization)
    assert (one(view2, RandomSolarization).prob, one(view2, RandomSolarization).threshold) == (0.2, 128)
    assert one(view3, T.Resize).size == (224, 224)
    assert list(one(view3, T.Normalize).mean) == list(IMAGENET_NORMALIZE["mean"])


def test_byol_view_defaults_follow_lightly() -> None:
    assert one(BYOLView1Transform(), RandomGaussianBlur).prob == 1.0
    assert not steps_of(BYOLView1Transform(), RandomSolarization)
    assert one(BYOLView2Transform(), RandomGaussianBlur).prob == 0.1
    assert one(BYOLView2Transform(), RandomSolarization).prob == 0.2
    custom = BYOLViewTransform(input_size=16, vf_prob=0.3, cj_strength=0.5, normalize=None)
    assert one(custom, T.RandomVerticalFlip).p == 0.3
    assert one(custom, T.ColorJitter).brightness == pytest.approx((0.8, 1.2))
    assert not steps_of(custom, T.Normalize)


# ---------------------------------------------------------------- outputs


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P"])
def test_cifar_views_shapes_and_ranges(mode: str) -> None:
    transform = cifar_ssl_transform(32, CIFAR10_NORMALIZE["mean"], CIFAR10_NORMALIZE["std"])
    image = noise_image(32, 32).convert(mode)
    views = transform(image)
    assert isinstance(views, list) and len(views) == 3
    mean, std = torch.tensor(CIFAR10_NORMALIZE["mean"]), torch.tensor(CIFAR10_NORMALIZE["std"])
    for view in views:
        assert view.shape == (3, 32, 32) and view.dtype == torch.float32
        # after Normalize each channel lies in [(0 - m) / s, (1 - m) / s]
        low, high = (-mean / std).view(3, 1, 1), ((1 - mean) / std).view(3, 1, 1)
        assert bool(((view >= low - 1e-5) & (view <= high + 1e-5)).all())


def test_cifar_view3_is_deterministic_normalisation() -> None:
    transform = cifar_ssl_transform(32, CIFAR10_NORMALIZE["mean"], CIFAR10_NORMALIZE["std"])
    image = noise_image(32, 32, seed=3)
    first, second = transform(image)[2], transform(image)[2]
    assert torch.equal(first, second)
    expected = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(unnormalize(first, CIFAR10_NORMALIZE), expected, atol=1e-5, rtol=0)


def test_views_are_drawn_independently() -> None:
    torch.manual_seed(0)
    transform = cifar_ssl_transform(32, CIFAR10_NORMALIZE["mean"], CIFAR10_NORMALIZE["std"])
    v1, v2, _ = transform(noise_image(32, 32))
    assert not torch.equal(v1, v2)


@pytest.mark.parametrize(("size", "mode"), [((300, 200), "RGB"), ((64, 96), "L")])
def test_imagenet_views_ignore_input_size(size: tuple[int, int], mode: str) -> None:
    views = imagenet_ssl_transform()(noise_image(*size, mode=mode))
    assert [v.shape for v in views] == [(3, 224, 224)] * 3
    assert all(v.dtype == torch.float32 for v in views)
    assert imagenet_ssl_transform(finetune_size=64)(noise_image(*size))[2].shape == (3, 64, 64)


def test_finetune_view_transform() -> None:
    plain = FinetuneViewTransform()(noise_image(48, 20))
    assert plain.shape == (3, 32, 32) and 0.0 <= plain.min() and plain.max() <= 1.0  # no normalisation
    normalized = FinetuneViewTransform(224, IMAGENET_NORMALIZE)(noise_image(48, 20))
    assert normalized.shape == (3, 224, 224) and normalized.min() < 0


def test_supervised_transforms() -> None:
    train = SupervisedTransform(train=True, input_height=32, normalize=CIFAR10_NORMALIZE)
    val = SupervisedTransform(train=False, input_height=32, normalize=CIFAR10_NORMALIZE)
    assert [type(s) for s in train.transforms] == [
        ToRGB,
        T.RandomResizedCrop,
        T.RandomHorizontalFlip,
        T.ToTensor,
        T.Normalize,
    ]
    assert one(train, T.RandomResizedCrop).scale == (0.08, 1.0)
    assert [type(s) for s in val.transforms] == [ToRGB, T.Resize, T.ToTensor, T.Normalize]
    assert train(noise_image(32, 32)).shape == (3, 32, 32)
    # shorter-side resize, no crop: 64×48 → 42×32 (width × height)
    assert val(noise_image(64, 48)).shape == (3, 32, 42)
    image = noise_image(32, 32)
    assert torch.equal(val(image), val(image))


def test_imagenet_supervised_transforms() -> None:
    train = ImageNetSupervisedTransform(train=True)
    val = ImageNetSupervisedTransform(train=False)
    assert one(train, T.RandomResizedCrop).size == (224, 224)
    assert one(train, T.RandomHorizontalFlip).p == 0.5
    assert one(val, T.Resize).size == 256 and one(val, T.CenterCrop).size == (224, 224)
    assert list(one(val, T.Normalize).std) == list(IMAGENET_NORMALIZE["std"])
    image = noise_image(400, 300, mode="L")
    assert train(image).shape == (3, 224, 224) and val(image).shape == (3, 224, 224)
    assert torch.equal(val(image), val(image))
    small = ImageNetSupervisedTransform(train=False, resize_height=80, input_height=64)
    assert small(image).shape == (3, 64, 64)


def test_transforms_pickle() -> None:
    """DataLoader workers started with spawn pickle the transforms."""
    transforms = [
        cifar_ssl_transform(32, CIFAR10_NORMALIZE["mean"], CIFAR10_NORMALIZE["std"]),
        imagenet_ssl_transform(),
        SupervisedTransform(),
        ImageNetSupervisedTransform(),
        FinetuneViewTransform(),
    ]
    image = noise_image(32, 32)
    for transform in transforms:
        clone = pickle.loads(pickle.dumps(transform))
        torch.manual_seed(0)
        a = transform(image)
        torch.manual_seed(0)
        b = clone(image)
        assert all(
            torch.equal(x, y) for x, y in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b])
        )


# ---------------------------------------------------------------- statistics over many draws


def test_flip_probability_of_cifar_view() -> None:
    """Gray ramp: crop, jitter and grayscale keep left < right, so a flip shows as left > right."""
    torch.manual_seed(1)
    view1 = cifar_ssl_transform(32, CIFAR10_NORMALIZE["mean"], CIFAR10_NORMALIZE["std"]).transforms[0]
    image = gray_ramp(32)
    flipped = 0
    for _ in range(DRAWS):
        x = view1(image)[0]
        flipped += int(x[:, :16].mean() > x[:, 16:].mean())
    assert abs(flipped / DRAWS - 0.5) < TOL


def test_grayscale_probability_of_cifar_view() -> None:
    """Saturation jitter never reaches 0, so equal channels come only from RandomGrayscale (p 0.2)."""
    torch.manual_seed(2)
    view1 = cifar_ssl_transform(32, CIFAR10_NORMALIZE["mean"], CIFAR10_NORMALIZE["std"]).transforms[0]
    image = noise_image(32, 32, seed=5)
    gray = 0
    for _ in range(DRAWS):
        x = unnormalize(view1(image), CIFAR10_NORMALIZE)
        gray += int(torch.allclose(x[0], x[1], atol=1e-4) and torch.allclose(x[1], x[2], atol=1e-4))
    assert abs(gray / DRAWS - 0.2) < TOL


def test_crop_scale_and_ratio_bounds() -> None:
    """A coordinate image (R = x, G = y) reveals each crop box; area in [0.08, 1], ratio in [3/4, 4/3]."""
    torch.manual_seed(3)
    side = 256
    coords = np.zeros((side, side, 3), dtype=np.uint8)
    coords[:, :, 0] = np.arange(side)[None, :]
    coords[:, :, 1] = np.arange(side)[:, None]
    image = Image.fromarray(coords)
    view = BYOLViewTransform(
        input_size=32, hf_prob=0, cj_prob=0, random_gray_scale=0, gaussian_blur=0, normalize=None
    )  # only the crop is random
    out = 32
    areas, ratios = [], []
    for _ in range(DRAWS):
        x = view(image) * 255
        # centres of the first/last output pixels sit half a (box / out) step inside the box
        width = (x[0, :, -1].mean() - x[0, :, 0].mean()).item() * out / (out - 1) + 1
        height = (x[1, -1, :].mean() - x[1, 0, :].mean()).item() * out / (out - 1) + 1
        areas.append(width * height / side**2)
        ratios.append(width / height)
    areas_t, ratios_t = torch.tensor(areas), torch.tensor(ratios)
    assert areas_t.min() > 0.08 * 0.9 and areas_t.max() <= 1.0 + 0.02
    assert areas_t.min() < 0.15 and areas_t.max() > 0.9  # the whole range is used
    assert ratios_t.min() > 0.75 * 0.93 and ratios_t.max() < 4 / 3 * 1.07
    # scale ~ U(0.08, 1) before the fallback for boxes that do not fit: the mean sits near 0.54
    assert 0.45 < areas_t.mean() < 0.62


def test_solarization_probability_and_threshold() -> None:
    torch.manual_seed(4)
    solarize = RandomSolarization(prob=0.2, threshold=128)
    image = Image.fromarray(np.array([[[10, 127, 128], [200, 255, 0]]], dtype=np.uint8))
    solarized = 0
    for _ in range(DRAWS):
        out = np.asarray(solarize(image))
        if not np.array_equal(out, np.asarray(image)):
            solarized += 1
            assert out.tolist() == [[[10, 127, 127], [55, 0, 0]]]  # values >= 128 inverted
    assert abs(solarized / DRAWS - 0.2) < TOL


def test_view2_solarizes_about_one_in_five() -> None:
    """View 2 of CIFAR with jitter/gray/crop disabled by a constant image: only solarization changes it."""
    torch.manual_seed(5)
    view2 = cifar_ssl_transform(32, CIFAR10_NORMALIZE["mean"], CIFAR10_NORMALIZE["std"]).transforms[1]
    view1 = cifar_ssl_transform(32, CIFAR10_NORMALIZE["mean"], CIFAR10_NORMALIZE["std"]).transforms[0]
    # Pure black: crop/flip/contrast/saturation/hue/grayscale keep it black, brightness scales 0 to 0;
    # solarization (threshold 128) leaves 0 alone, so use white, which only brightness < 1 dims.
    image = Image.new("RGB", (32, 32), (255, 255, 255))

    def count_inverted(view: Any) -> int:
        inverted = 0
        for _ in range(DRAWS):
            x = unnormalize(view(image), CIFAR10_NORMALIZE)
            # brightness/contrast keep white >= 0.6 (>= 153 > 128); solarized white is <= 0.4
            inverted += int(x.mean().item() < 0.45)
        return inverted

    assert abs(count_inverted(view2) / DRAWS - 0.2) < TOL
    assert count_inverted(view1) == 0


def test_gaussian_blur_probability_and_radius() -> None:
    torch.manual_seed(6)
    image = noise_image(24, 24, seed=9)
    for prob in (0.1, 1.0):
        blur = RandomGaussianBlur(prob=prob, sigmas=(0.1, 2.0))
        blurred = sum(not np.array_equal(np.asarray(blur(image)), np.asarray(image)) for _ in range(DRAWS))
        assert abs(blurred / DRAWS - prob) < TOL
    # the radius is drawn from U(0.1, 2): record it through a stand-in filter
    radii: list[float] = []

    class Recorder:
        def filter(self, f: Any) -> Recorder:
            radii.append(f.radius)
            return self

    blur = RandomGaussianBlur(prob=1.0)
    for _ in range(DRAWS):
        blur(Recorder())  # type: ignore[arg-type]
    assert 0.1 <= min(radii) < 0.2 and 1.9 < max(radii) <= 2.0
    assert abs(float(np.mean(radii)) - 1.05) < 0.1
