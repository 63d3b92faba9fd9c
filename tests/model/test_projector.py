"""Projection heads and the batched per-MC-slice projector against the slice-by-slice loop of
``tests.reference.ssl_step.project_per_slice``.

The reference applies a deep copy of the head to each MC slice in turn, exactly as the original maps the
head over the M samples: per-slice BatchNorm batch statistics and M sequential running-stat updates.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from src.model.projector import ProjectionHead, batch_norm_per_slice, build_projection_head
from tests.model.devices import DEVICES, fp32_on
from tests.reference.ssl_step import project_per_slice

RTOL = 1e-5
ATOL = 1e-6


def randomise(head: nn.Module, seed: int) -> None:
    """Non-default affine BN parameters and running statistics, so every path is exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in head.modules():
            if isinstance(mod, nn.BatchNorm1d):
                if mod.affine:
                    mod.weight.copy_(1 + 0.5 * torch.randn(mod.weight.shape, generator=g))
                    mod.bias.copy_(0.5 * torch.randn(mod.bias.shape, generator=g))
                if mod.track_running_stats:
                    mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g))
                    mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)
                    mod.num_batches_tracked.fill_(3)


def assert_same_state(fast: nn.Module, ref: nn.Module) -> None:
    fast_buf, ref_buf = dict(fast.named_buffers()), dict(ref.named_buffers())
    assert fast_buf.keys() == ref_buf.keys()
    for name, buf in fast_buf.items():
        if buf.dtype == torch.long:
            assert torch.equal(buf, ref_buf[name]), name
        else:
            torch.testing.assert_close(buf, ref_buf[name], rtol=RTOL, atol=ATOL, msg=name)


def assert_same_grads(fast: nn.Module, ref: nn.Module) -> None:
    fast_p, ref_p = dict(fast.named_parameters()), dict(ref.named_parameters())
    assert fast_p.keys() == ref_p.keys()
    for name, p in fast_p.items():
        assert p.grad is not None and ref_p[name].grad is not None, name
        torch.testing.assert_close(p.grad, ref_p[name].grad, rtol=1e-4, atol=1e-5, msg=name)


# ----------------------------------------------------------------------------- layout


@pytest.mark.parametrize(
    ("dataset", "expected"),
    [
        ("cifar10", [("lin", 6, 10, False), ("bn", 10), ("relu",), ("lin", 10, 7, True)]),
        ("cifar100", [("lin", 6, 10, False), ("bn", 10), ("relu",), ("lin", 10, 7, True)]),
        ("ImageNet", [("lin", 6, 10, False), ("bn", 10), ("relu",), ("lin", 10, 7, True)]),  # exact string only
        (
            "imagenet",
            [
                ("lin", 6, 10, False),
                ("bn", 10),
                ("relu",),
                ("lin", 10, 10, False),
                ("bn", 10),
                ("relu",),
                ("lin", 10, 7, True),
            ],
        ),
    ],
)
def test_head_layout(dataset: str, expected: list[tuple]) -> None:
    head = build_projection_head(dataset, in_dim=6, hidden_dim=10, z_dim=7)
    assert isinstance(head, ProjectionHead)
    layers = list(head.layers)
    assert len(layers) == len(expected)
    for layer, exp in zip(layers, expected):
        if exp[0] == "lin":
            assert type(layer) is nn.Linear
            assert (layer.in_features, layer.out_features, layer.bias is not None) == exp[1:]
        elif exp[0] == "bn":
            assert type(layer) is nn.BatchNorm1d
            assert layer.num_features == exp[1]
            assert layer.eps == 1e-5 and layer.momentum == 0.1
            assert layer.affine and layer.track_running_stats
        else:
            assert type(layer) is nn.ReLU and not layer.inplace
    # a Linear has a bias iff no BatchNorm follows it
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.Linear):
            followed_by_bn = i + 1 < len(layers) and isinstance(layers[i + 1], nn.BatchNorm1d)
            assert (layer.bias is not None) == (not followed_by_bn)


@pytest.mark.parametrize(("dataset", "indices"), [("cifar10", {0, 1, 3}), ("imagenet", {0, 1, 3, 4, 6})])
def test_head_state_dict_keys(dataset: str, indices: set[int]) -> None:
    head = build_projection_head(dataset, in_dim=6, hidden_dim=10, z_dim=7)
    assert {int(k.split(".")[1]) for k in head.state_dict()} == indices
    expected = set()
    for i in indices:
        layer = head.layers[i]
        if isinstance(layer, nn.Linear):
            expected |= {f"layers.{i}.weight"} | ({f"layers.{i}.bias"} if layer.bias is not None else set())
        else:
            expected |= {
                f"layers.{i}.{n}" for n in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
            }
    assert set(head.state_dict()) == expected
    assert "layers.0.bias" not in head.state_dict()
    assert f"layers.{max(indices)}.bias" in head.state_dict()


# ----------------------------------------------------------------------------- batched vs slice loop


@pytest.mark.parametrize("dataset", ["cifar10", "imagenet"])
@pytest.mark.parametrize(("m", "b"), [(1, 8), (4, 8), (3, 5)])
def test_projector_over_mc_samples_matches_slice_loop_train_mode(dataset: str, m: int, b: int) -> None:
    torch.manual_seed(m * 10 + b)
    head = build_projection_head(dataset, in_dim=6, hidden_dim=12, z_dim=5)
    randomise(head, seed=m + b)
    ref = copy.deepcopy(head)
    head.train()
    ref.train()
    for step in range(3):  # consecutive calls: running statistics keep matching
        x = torch.randn(m, b, 6) * 2 + 0.5
        upstream = torch.randn(m, b, 5)
        x_fast, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
        out = head(x_fast)
        expected = project_per_slice(ref, x_ref)
        assert out.shape == (m, b, 5)
        torch.testing.assert_close(out, expected, rtol=RTOL, atol=ATOL, msg=f"step {step}")
        (out * upstream).sum().backward()
        (expected * upstream).sum().backward()  # gradients accumulate over steps in both
        torch.testing.assert_close(x_fast.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
        assert_same_grads(head, ref)
        assert_same_state(head, ref)
    # every BN saw M updates per call
    for mod in head.modules():
        if isinstance(mod, nn.BatchNorm1d):
            assert mod.num_batches_tracked.item() == 3 + 3 * m


@pytest.mark.parametrize("dataset", ["cifar10", "imagenet"])
def test_projector_over_mc_samples_matches_slice_loop_eval_mode(dataset: str) -> None:
    torch.manual_seed(11)
    head = build_projection_head(dataset, in_dim=6, hidden_dim=12, z_dim=5)
    randomise(head, seed=12)
    head.eval()
    ref = copy.deepcopy(head)
    before = copy.deepcopy(head.state_dict())
    x = torch.randn(4, 7, 6)
    upstream = torch.randn(4, 7, 5)
    x_fast, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, expected = head(x_fast), project_per_slice(ref, x_ref)
    torch.testing.assert_close(out, expected, rtol=RTOL, atol=ATOL)
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    torch.testing.assert_close(x_fast.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    assert_same_grads(head, ref)
    for name, value in head.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_projector_single_batch_input_is_the_plain_sequential() -> None:
    torch.manual_seed(13)
    head = build_projection_head("cifar10", in_dim=6, hidden_dim=12, z_dim=5)
    ref = copy.deepcopy(head)
    x = torch.randn(9, 6)
    torch.testing.assert_close(head(x), ref.layers(x))
    assert_same_state(head, ref)


def test_projector_rejects_other_ranks() -> None:
    head = build_projection_head("cifar10", in_dim=6, hidden_dim=12, z_dim=5)
    with pytest.raises(ValueError):
        head(torch.randn(2, 3, 4, 6))
    with pytest.raises(ValueError):
        head(torch.randn(6))


# ----------------------------------------------------------------------------- batch_norm_per_slice


def _check_bn_against_loop(bn: nn.BatchNorm1d, calls: int, m: int, b: int, c: int, seed: int) -> None:
    ref = copy.deepcopy(bn)
    g = torch.Generator().manual_seed(seed)
    for step in range(calls):
        x = torch.randn(m, b, c, generator=g) * 3 - 1
        upstream = torch.randn(m, b, c, generator=g)
        x_fast, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
        out = batch_norm_per_slice(bn, x_fast)
        expected = project_per_slice(ref, x_ref)
        torch.testing.assert_close(out, expected, rtol=RTOL, atol=ATOL, msg=f"step {step}")
        (out * upstream).sum().backward()
        (expected * upstream).sum().backward()
        torch.testing.assert_close(x_fast.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
        if bn.affine:
            assert_same_grads(bn, ref)
        assert_same_state(bn, ref)


@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_per_slice_train_mode(momentum: float | None, affine: bool) -> None:
    torch.manual_seed(20)
    bn = nn.BatchNorm1d(5, momentum=momentum, affine=affine)
    randomise(bn, seed=21)
    if momentum is None:
        bn.num_batches_tracked.zero_()  # cumulative average starting from scratch
    bn.train()
    _check_bn_against_loop(bn, calls=3, m=4, b=6, c=5, seed=22)
    assert bn.num_batches_tracked.item() == (0 if momentum is None else 3) + 12


def test_batch_norm_per_slice_cumulative_average_equals_plain_mean() -> None:
    """momentum=None from scratch: the running mean is the plain mean of all slice means seen so far."""
    torch.manual_seed(23)
    bn = nn.BatchNorm1d(3, momentum=None)
    x = torch.randn(5, 4, 3)
    batch_norm_per_slice(bn, x)
    torch.testing.assert_close(bn.running_mean, x.mean(1).mean(0))
    torch.testing.assert_close(bn.running_var, x.var(1, unbiased=True).mean(0))


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_per_slice_without_running_stats(training: bool) -> None:
    """track_running_stats=False: batch statistics per slice in train *and* eval mode, no buffers touched."""
    torch.manual_seed(24)
    bn = nn.BatchNorm1d(5, track_running_stats=False)
    randomise(bn, seed=25)
    bn.train(training)
    assert bn.running_mean is None
    _check_bn_against_loop(bn, calls=2, m=3, b=6, c=5, seed=26)


def test_batch_norm_per_slice_eval_mode_uses_running_stats() -> None:
    torch.manual_seed(27)
    bn = nn.BatchNorm1d(5)
    randomise(bn, seed=28)
    bn.eval()
    _check_bn_against_loop(bn, calls=2, m=3, b=4, c=5, seed=29)
    assert bn.num_batches_tracked.item() == 3


def test_batch_norm_per_slice_single_sample_slices_raise_like_torch() -> None:
    bn = nn.BatchNorm1d(4)
    x = torch.randn(3, 1, 4)
    with pytest.raises(ValueError):
        bn(x[0])
    with pytest.raises(ValueError):
        batch_norm_per_slice(bn, x)


# ----------------------------------------------------------------------------- native batch_norm on [B, M*C]

TOLERANCES = {torch.float32: (1e-5, 1e-6, 1e-4, 1e-5), torch.float64: (1e-12, 1e-13, 1e-11, 1e-12)}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("dataset", ["cifar10", "imagenet"])
def test_native_per_slice_batch_norm_matches_m_separate_calls(
    dataset: str, momentum: float | None, dtype: torch.dtype, device: str
) -> None:
    """The head over [M, B, C] (native batch_norm on [B, M*C], closed-form running statistics) against M
    separate calls of the plain head, three consecutive training steps: forward, the gradients of the
    input and of every parameter, and every running statistic, in float32 and float64."""
    with fp32_on(device) as dev:
        _check_head_against_loop(dataset, momentum, dtype, dev)


def _check_head_against_loop(dataset: str, momentum: float | None, dtype: torch.dtype, dev: torch.device) -> None:
    rtol, atol, grad_rtol, grad_atol = TOLERANCES[dtype]
    torch.manual_seed(31)
    head = build_projection_head(dataset, in_dim=6, hidden_dim=12, z_dim=5)
    randomise(head, seed=32)
    for mod in head.modules():
        if isinstance(mod, nn.BatchNorm1d):
            mod.momentum = momentum
    head = head.to(dev, dtype).train()
    ref = copy.deepcopy(head)
    g = torch.Generator().manual_seed(33)
    for step in range(3):
        x = (torch.randn(4, 8, 6, generator=g) * 2 + 0.5).to(dev, dtype)
        upstream = torch.randn(4, 8, 5, generator=g).to(dev, dtype)
        x_fast, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
        out, expected = head(x_fast), project_per_slice(ref, x_ref)
        assert out.dtype == dtype and out.is_contiguous()
        torch.testing.assert_close(out, expected, rtol=rtol, atol=atol, msg=f"step {step}")
        (out * upstream).sum().backward()
        (expected * upstream).sum().backward()
        torch.testing.assert_close(x_fast.grad, x_ref.grad, rtol=grad_rtol, atol=grad_atol)
        for (name, p), q in zip(head.named_parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, rtol=grad_rtol, atol=grad_atol, msg=name)
        for (name, buf), other in zip(head.named_buffers(), ref.buffers(), strict=True):
            if buf.dtype == torch.long:
                assert torch.equal(buf, other), name
            else:
                torch.testing.assert_close(buf, other, rtol=rtol, atol=atol, msg=name)


def test_per_slice_batch_norm_is_one_native_kernel_call() -> None:
    """One ``batch_norm`` over all slices per layer (not a chain of element-wise kernels or a loop)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            self.names.append(str(func.overloadpacket.__name__))
            return func(*args, **(kwargs or {}))

    head = build_projection_head("imagenet", in_dim=6, hidden_dim=12, z_dim=5).train()
    with Ops() as ops:
        head(torch.randn(4, 8, 6))
    norms = [n for n in ops.names if "batch_norm" in n]
    assert len(norms) == 2, norms  # two BatchNorm layers, one kernel each
    assert ops.names.count("rsqrt") == 0 and ops.names.count("var") == 0
