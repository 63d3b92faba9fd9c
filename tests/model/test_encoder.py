"""Encoders (``ENCODERS``): output widths, per-dataset stems and their initialisation."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from src.model.encoder import ENCODERS, STEMS, encoder_out_dim, get_encoder


@functools.cache
def encoder(name: str, dataset: str) -> nn.Module:
    """One build per (encoder, stem), shared by the read-only tests below (eval mode)."""
    torch.manual_seed(0)
    return get_encoder(name, dataset).eval()


@pytest.mark.parametrize("name", list(ENCODERS))
def test_output_width_of_every_encoder(name: str) -> None:
    with torch.no_grad():
        out = encoder(name, "cifar10")(torch.randn(2, 3, 8, 8))
    assert out.shape == (2, encoder_out_dim(name))
    assert encoder_out_dim(name) == {"resnet18": 512, "resnet34": 512, "resnet50": 2048}[name]


@pytest.mark.parametrize(
    ("dataset", "channels", "size"),
    # small inputs: every stem still ends in a 1x1 feature map
    # (cifar100 shares cifar10's stem: test_cifar100_has_the_cifar10_stem)
    [("cifar10", 3, 8), ("mnist", 1, 8), ("tinyimagenet", 3, 8), ("imagenet", 3, 32)],
)
def test_output_shape_for_every_stem(dataset: str, channels: int, size: int) -> None:
    with torch.no_grad():
        out = encoder("resnet18", dataset)(torch.randn(2, channels, size, size))
    assert out.shape == (2, 512)


@pytest.mark.parametrize("name", list(ENCODERS))
def test_cifar_stem(name: str) -> None:
    net = encoder(name, "cifar10")
    conv = net.conv1
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding) == (
        3,
        64,
        (3, 3),
        (1, 1),
        (1, 1),
    )
    assert conv.bias is None
    assert isinstance(net.maxpool, nn.Identity)
    assert isinstance(net.fc, nn.Identity)
    # The stem does not downsample: 16x16 gives a 2x2 map before pooling (32x32 CIFAR images give 4x4).
    feats: dict[str, torch.Size] = {}

    def keep_shape(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        feats["map"] = output.shape

    if name == "resnet18":  # the stem is the same for every encoder; one forward shows it
        handle = net.layer4.register_forward_hook(keep_shape)
        with torch.no_grad():
            net(torch.randn(1, 3, 16, 16))
        handle.remove()
        assert feats["map"][-2:] == (2, 2)


@pytest.mark.parametrize("name", list(ENCODERS))
def test_cifar_stem_identity_equals_the_references_1x1_max_pool(name: str) -> None:
    """The stem's identity pool gives the values of the reference's MaxPool2d(1, 1) and the same state dict."""
    torch.manual_seed(0)
    net = get_encoder(name, "cifar10")
    ref = get_encoder(name, "cifar10")
    ref.maxpool = nn.MaxPool2d(kernel_size=1, stride=1)
    ref.load_state_dict(net.state_dict())
    assert list(net.state_dict()) == list(ref.state_dict())
    x = torch.randn(3, 3, 8, 8)
    net.train(), ref.train()
    assert torch.equal(net(x), ref(x))  # train mode: also the same BatchNorm running statistics after
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), ref.state_dict().values(), strict=True))


def test_cifar100_has_the_cifar10_stem() -> None:
    assert STEMS["cifar100"] == STEMS["cifar10"]


def test_mnist_stem_takes_one_channel() -> None:
    assert encoder("resnet18", "mnist").conv1.in_channels == 1


def test_tinyimagenet_stem_only_for_resnet18() -> None:
    assert encoder("resnet18", "tinyimagenet").conv1.kernel_size == (4, 4)
    assert STEMS["tinyimagenet"].only_for == ("resnet18",)
    assert encoder("resnet34", "tinyimagenet").conv1.kernel_size == (7, 7)  # the standard stem


def test_standard_stem_for_other_datasets() -> None:
    net = encoder("resnet18", "imagenet")
    assert net.conv1.kernel_size == (7, 7) and net.conv1.stride == (2, 2) and net.conv1.padding == (3, 3)
    assert net.maxpool.kernel_size == 3 and net.maxpool.stride == 2


def test_initialisation() -> None:
    """torchvision's fan-out Kaiming-normal for its convs, PyTorch's default for the new conv1."""
    torch.manual_seed(0)
    net = get_encoder("resnet18", "cifar10")
    w = net.conv1.weight.detach()
    bound = 1 / math.sqrt(3 * 3 * 3)  # kaiming_uniform(a=sqrt(5)) -> U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert w.abs().max() <= bound
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)
    inner = net.layer1[0].conv1.weight.detach()  # 64 -> 64, 3x3: std sqrt(2 / fan_out)
    assert inner.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.05)
    bn = net.layer1[0].bn1
    assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(bn.bias, torch.zeros_like(bn.bias))
    # zero_init_residual is false: the last BN of each block starts at 1 as well
    assert torch.equal(net.layer1[0].bn2.weight, torch.ones(64))


def test_unknown_encoder_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="resnet18"):
        get_encoder("vit", "cifar10")


# ------------------------------------------------------------------------------------ timm


def test_timm_encoder_width_is_read_from_the_model() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = get_encoder("timm/test_resnet", "cifar10").eval()
    reference = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    assert encoder_out_dim("timm/test_resnet") == reference.num_features == 96  # not a ResNet-18's 512
    assert net.num_classes == 0 and isinstance(net.get_classifier(), nn.Identity)  # pooled feature, no head
    with torch.no_grad():
        out = net(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 96) and torch.isfinite(out).all()
    assert repr(net.conv1) == repr(reference.conv1)  # timm's own stem, not the CIFAR 3x3 conv


def test_timm_width_is_the_output_width_with_a_pre_logits_layer() -> None:
    """MobileNetV3 pools 576 channels, then its conv_head gives 1024: the encoder's E is the output's width."""
    pytest.importorskip("timm")
    net = get_encoder("timm/mobilenetv3_small_050", "imagenet").eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 32, 32))
    assert net.num_features != out.shape[1] == encoder_out_dim("timm/mobilenetv3_small_050") == 1024


def test_timm_encoder_kwargs_and_one_channel_stem() -> None:
    pytest.importorskip("timm")
    vit = get_encoder("timm/test_vit", "demo", {"img_size": 16, "patch_size": 8}).eval()
    assert encoder_out_dim("timm/test_vit", {"img_size": 16, "patch_size": 8}) == vit.num_features == 64
    with torch.no_grad():
        assert vit(torch.randn(2, 3, 16, 16)).shape == (2, 64)
    # a one-channel dataset stem gives timm in_chans=1
    conv = get_encoder("timm/test_resnet", "mnist").conv1
    first = conv[0] if isinstance(conv, nn.Sequential) else conv
    assert first.in_channels == 1


def test_timm_encoder_errors() -> None:
    pytest.importorskip("timm")
    with pytest.raises(
        ValueError, match=r"model.backbone.name='test_resnett' is not a timm .*Close names: test_resnet"
    ):
        get_encoder("timm/test_resnett", "cifar10")
    with pytest.raises(ValueError, match=r"model\.backbone\.name='no_such_net'"):
        encoder_out_dim("timm/no_such_net")
    with pytest.raises(ValueError, match=r"model.backbone.kwargs.pretrained is set by the project"):
        get_encoder("timm/test_resnet", "cifar10", {"pretrained": True})
    with pytest.raises(ValueError, match=r"does not accept model\.backbone\.kwargs"):
        get_encoder("timm/test_resnet", "cifar10", {"no_such_argument": 1})
    with pytest.raises(ValueError, match="only for timm encoders"):
        get_encoder("resnet18", "cifar10", {"img_size": 32})
    with pytest.raises(ValueError, match=r"encoder='resnet101' is not known.*'timm/<name>'"):
        get_encoder("resnet101", "cifar10")
