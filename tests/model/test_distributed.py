"""Multi-process correctness of the SSL losses (global batch under DDP) and of the synced per-slice BatchNorm.

Two CPU processes (gloo) each take one half of a fixed batch. Every check runs in ONE spawn (the
module fixture ``ranks``), whose per-rank results come back through ``torch.save`` files; the tests
compare them, in float64, with plain single-process references on the concatenated batch: the loss
formulas of ``tests.reference.losses`` and a slice-by-slice loop of ``nn.BatchNorm1d``. The tests
that need the two processes are marked ``slow``.

Why the gradients must match: with ``gather_distributed=True`` every rank evaluates the same global
loss L, the gather's backward sums the ranks' dL/dz_local (W times this rank's share), and DDP's
mean over ranks then leaves exactly dL/dtheta of one process on the concatenated batch.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from src.model.loss import LOSSES
from src.model.projector import ProjectionHead, batch_norm_per_slice
from tests.reference.losses import barlow_twins as ref_barlow_twins
from tests.reference.losses import mc
from tests.reference.losses import vicreg as ref_vicreg

WORLD = 2
N = 8  # global batch; each rank holds N // WORLD rows
M = 3  # MC samples
D_IN, D_HID, D_OUT = 5, 6, 4
LOSS_NAMES = ["barlow_twins", "mc_barlow_twins", "vicreg", "mc_vicreg"]
BN_MOMENTA = [0.1, None]
TOL = {"rtol": 1e-10, "atol": 1e-12}
F64 = torch.float64  # everything in float64, so the tolerance can stay tight


# ----------------------------------------------------------------------------- shared fixed data


def rank_rows(rank: int) -> slice:
    """This rank's rows of the global batch (dim -2 of every [.., N, ..] tensor)."""
    b = N // WORLD
    return slice(rank * b, (rank + 1) * b)


def loss_inputs(name: str) -> tuple[Tensor, Tensor]:
    """Two correlated views of the global batch: [N, D_IN], or [M, N, D_IN] for the MC losses."""
    g = torch.Generator().manual_seed(LOSS_NAMES.index(name))
    shape = (M, N, D_IN) if name.startswith("mc_") else (N, D_IN)
    base = torch.randn(shape, generator=g, dtype=F64)
    noise = torch.randn((2, *shape), generator=g, dtype=F64)
    return base + 0.4 * noise[0], base + 0.4 * noise[1]


def small_net() -> nn.Module:
    """Linear -> Tanh -> Linear, the same weights in every process."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D_IN, D_HID), nn.Tanh(), nn.Linear(D_HID, D_OUT)).to(F64)


def make_loss(name: str, batch_size: int, gather: bool) -> nn.Module:
    kwargs: dict[str, Any] = {"batch_size": batch_size, "gather_distributed": gather}
    if "vicreg" in name:
        kwargs["z_dim"] = D_OUT
    return LOSSES[name](**kwargs)


class Siamese(nn.Module):
    """Both views through one net and the loss inside forward, as Lightning's training_step runs in DDP."""

    def __init__(self, net: nn.Module, loss: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.loss = loss

    def forward(self, x1: Tensor, x2: Tensor) -> dict[str, Tensor]:
        return self.loss(self.net(x1), self.net(x2))


def randomise_bn(bn: nn.modules.batchnorm._BatchNorm, seed: int) -> None:
    """Non-default affine parameters and running statistics, so every path is exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.weight.copy_(1 + 0.5 * torch.randn(bn.weight.shape, generator=g))
        bn.bias.copy_(0.5 * torch.randn(bn.bias.shape, generator=g))
        bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=g))
        bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=g) + 0.5)
        bn.num_batches_tracked.fill_(3)


def bn_inputs(seed: int, channels: int) -> tuple[Tensor, Tensor]:
    """x [M, N, C] with a non-zero mean, and an upstream gradient weighting of the same shape."""
    g = torch.Generator().manual_seed(100 + seed)
    return 2 * torch.randn(M, N, channels, generator=g, dtype=F64) + 1.5, torch.randn(
        M, N, channels, generator=g, dtype=F64
    )


def projection_head() -> ProjectionHead:
    torch.manual_seed(1)
    head = ProjectionHead([(D_IN, D_HID, True, True), (D_HID, D_OUT, False, False)]).to(F64)
    randomise_bn(head.layers[1], seed=7)
    return head


def bn_state(bn: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in bn.state_dict().items()}


# ----------------------------------------------------------------------------- what each rank runs


def rank_losses(rank: int) -> dict[str, Any]:
    """Every loss, gathered and per-device, on a DDP-wrapped net: loss terms and averaged gradients."""
    out: dict[str, Any] = {}
    b = N // WORLD
    for name in LOSS_NAMES:
        x1, x2 = loss_inputs(name)
        for gather in (True, False):
            model = DistributedDataParallel(Siamese(small_net(), make_loss(name, b, gather)))
            terms = model(x1[..., rank_rows(rank), :], x2[..., rank_rows(rank), :])
            terms["cl_loss"].backward()  # DDP all-reduces (means) the parameter gradients here
            out[f"{name}/{gather}"] = {
                "terms": {k: v.detach() for k, v in terms.items()},
                "grads": {k: p.grad.clone() for k, p in model.module.net.named_parameters()},
            }
    return out


def rank_batch_norm(rank: int) -> dict[str, Any]:
    """batch_norm_per_slice with an nn.SyncBatchNorm on this rank's rows: outputs, gradients, state."""
    out: dict[str, Any] = {}
    for i, momentum in enumerate(BN_MOMENTA):
        bn = nn.SyncBatchNorm(D_OUT, momentum=momentum).to(F64)
        randomise_bn(bn, seed=i)
        x, upstream = bn_inputs(i, D_OUT)
        calls = []
        for step in range(2):  # running statistics accumulate over consecutive calls
            xr = (x + step)[:, rank_rows(rank)].clone().requires_grad_()
            y = batch_norm_per_slice(bn, xr)
            (y * upstream[:, rank_rows(rank)]).sum().backward()
            calls.append({"y": y.detach(), "x_grad": xr.grad, "state": bn_state(bn)})
        out[str(momentum)] = {
            "calls": calls,
            "weight_grad": bn.weight.grad.clone(),
            "bias_grad": bn.bias.grad.clone(),
        }
    return out


def rank_head(rank: int) -> dict[str, Any]:
    """A ProjectionHead as Lightning's sync_batchnorm leaves it (BatchNorm1d -> SyncBatchNorm) on [M, B, C].

    DDP refuses SyncBatchNorm on CPU modules, so its gradient averaging is done by hand (all-reduce / W).
    The per-rank loss is the local mean, so the averaged gradient is that of the global mean.
    """
    head = nn.SyncBatchNorm.convert_sync_batchnorm(projection_head())
    assert isinstance(head.layers[1], nn.SyncBatchNorm)
    x, upstream = bn_inputs(9, D_IN)
    upstream = upstream[..., :D_OUT]
    y = head(x[:, rank_rows(rank)])
    ((y * upstream[:, rank_rows(rank)]).sum() / y[0].shape[0]).backward()
    grads = {}
    for k, p in head.named_parameters():
        dist.all_reduce(p.grad)
        grads[k] = p.grad / WORLD
    return {"y": y.detach(), "grads": grads, "state": bn_state(head.layers[1])}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)  # two processes share two cores
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        result = {"losses": rank_losses(rank), "bn": rank_batch_norm(rank), "head": rank_head(rank)}
    finally:
        dist.destroy_process_group()
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Spawn the two gloo ranks once for the whole module; their results, in rank order."""
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


# ----------------------------------------------------------------------------- plain references


def ref_loss(name: str, z1: Tensor, z2: Tensor, batch_size: int) -> Tensor:
    """The plain reference's ``cl_loss`` (coefficients of the loss's defaults: 5e-3; 25/25/1)."""
    if "vicreg" in name:
        fn, kwargs = ref_vicreg, {"batch_size": batch_size, "z_dim": D_OUT}
    else:
        fn, kwargs = ref_barlow_twins, {"batch_size": batch_size}
    return (mc(fn, z1, z2, **kwargs) if name.startswith("mc_") else fn(z1, z2, **kwargs))["cl_loss"]


def ref_value_and_grads(name: str, rows: slice, batch_size: int) -> tuple[Tensor, dict[str, Tensor]]:
    """One process: the reference loss of ``small_net`` on rows ``rows`` of the views, and its gradients."""
    net = small_net()
    x1, x2 = loss_inputs(name)
    loss = ref_loss(name, net(x1[..., rows, :]), net(x2[..., rows, :]), batch_size)
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in net.named_parameters()}


# ----------------------------------------------------------------------------- tests


@pytest.mark.slow
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_gathered_loss_and_gradients_equal_single_process_on_global_batch(name: str, ranks) -> None:
    value, grads = ref_value_and_grads(name, slice(None), batch_size=N)
    x1, x2 = loss_inputs(name)
    net = small_net()
    with torch.no_grad():  # every term, against the same loss class on one process
        single = make_loss(name, N, gather=True)(net(x1), net(x2))
    for r in range(WORLD):
        got = ranks[r]["losses"][f"{name}/True"]
        torch.testing.assert_close(got["terms"]["cl_loss"], value, **TOL)
        assert got["terms"].keys() == single.keys()
        for k in single:
            torch.testing.assert_close(got["terms"][k], single[k], **TOL, msg=f"rank {r}: {k}")
        for k in grads:
            torch.testing.assert_close(got["grads"][k], grads[k], **TOL, msg=f"rank {r}: grad {k}")


@pytest.mark.slow
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_per_device_loss_without_gather(name: str, ranks) -> None:
    """gather_distributed=False: each rank's loss is its local loss (per-device batch_size), and
    DDP's gradient is the mean of the per-rank local-loss gradients (the reference's behaviour)."""
    local = [ref_value_and_grads(name, rank_rows(r), batch_size=N // WORLD) for r in range(WORLD)]
    for r in range(WORLD):
        got = ranks[r]["losses"][f"{name}/False"]
        torch.testing.assert_close(got["terms"]["cl_loss"], local[r][0], **TOL)
        for k, g in local[0][1].items():
            mean_grad = (g + local[1][1][k]) / WORLD
            torch.testing.assert_close(got["grads"][k], mean_grad, **TOL, msg=f"rank {r}: grad {k}")
    assert not torch.allclose(local[0][0], ranks[0]["losses"][f"{name}/True"]["terms"]["cl_loss"])


@pytest.mark.slow
@pytest.mark.parametrize("momentum", BN_MOMENTA)
def test_synced_per_slice_batch_norm_equals_slice_loop_on_global_batch(momentum: float | None, ranks) -> None:
    """Outputs and gradients against M sequential nn.BatchNorm1d calls on the full batch; running
    statistics against the single-process per-slice path on the full batch at the same tight
    tolerance, and against the loop at 1e-6 (the closed-form momentum weights are float32)."""
    i = BN_MOMENTA.index(momentum)
    ref = nn.BatchNorm1d(D_OUT, momentum=momentum).to(F64)
    randomise_bn(ref, seed=i)
    single = copy.deepcopy(ref)
    x, upstream = bn_inputs(i, D_OUT)
    for step in range(2):
        xs = (x + step).clone().requires_grad_()
        y = torch.stack([ref(xs[m]) for m in range(M)])  # M sequential calls on the full batch
        (y * upstream).sum().backward()
        batch_norm_per_slice(single, x + step)
        for r in range(WORLD):
            got = ranks[r]["bn"][str(momentum)]["calls"][step]
            torch.testing.assert_close(got["y"], y.detach()[:, rank_rows(r)], **TOL)
            torch.testing.assert_close(got["x_grad"], xs.grad[:, rank_rows(r)], **TOL)
            assert got["state"].keys() == ref.state_dict().keys()
            for k, v in single.state_dict().items():
                torch.testing.assert_close(got["state"][k], v, **TOL, msg=f"rank {r} step {step}: {k}")
            for k, v in ref.state_dict().items():
                torch.testing.assert_close(got["state"][k], v, rtol=1e-6, atol=1e-7, msg=f"rank {r} step {step}: {k}")
    # parameter gradients: each rank holds its rows' share; their sum is the full-batch gradient
    for k, p in (("weight_grad", ref.weight), ("bias_grad", ref.bias)):
        torch.testing.assert_close(ranks[0]["bn"][str(momentum)][k] + ranks[1]["bn"][str(momentum)][k], p.grad, **TOL)


@pytest.mark.slow
def test_projection_head_with_sync_batchnorm_over_mc_samples(ranks) -> None:
    """apply_per_slice accepts the SyncBatchNorm Lightning swaps in, and syncs the 3-D path."""
    head = projection_head()
    x, upstream = bn_inputs(9, D_IN)
    upstream = upstream[..., :D_OUT]
    single = copy.deepcopy(head)
    y = torch.stack([head(x[m]) for m in range(M)])  # 2-D calls: plain nn.Sequential, slice by slice
    ((y * upstream).sum() / N).backward()
    single(x)  # one process, per-slice path on the full batch: the running statistics to match exactly
    for r in range(WORLD):
        got = ranks[r]["head"]
        torch.testing.assert_close(got["y"], y.detach()[:, rank_rows(r)], **TOL)
        for k, p in head.named_parameters():
            torch.testing.assert_close(got["grads"][k], p.grad, **TOL, msg=f"rank {r}: grad {k}")
        for k, v in single.layers[1].state_dict().items():
            torch.testing.assert_close(got["state"][k], v, **TOL, msg=f"rank {r}: {k}")


def test_single_process_sync_batchnorm_is_the_batchnorm1d_path() -> None:
    """Without a process group a SyncBatchNorm goes through exactly the BatchNorm1d code path."""
    assert not dist.is_initialized()
    sync, plain = nn.SyncBatchNorm(D_OUT).to(F64), nn.BatchNorm1d(D_OUT).to(F64)
    randomise_bn(sync, seed=3)
    plain.load_state_dict(sync.state_dict())
    x, _ = bn_inputs(3, D_OUT)
    assert torch.equal(batch_norm_per_slice(sync, x), batch_norm_per_slice(plain, x))
    for k, v in plain.state_dict().items():
        assert torch.equal(sync.state_dict()[k], v), k
    sync.eval()
    plain.eval()
    assert torch.equal(batch_norm_per_slice(sync, x), batch_norm_per_slice(plain, x))


def test_losses_ignore_the_switch_in_a_single_process() -> None:
    """Single process: gather_distributed changes nothing, bit for bit."""
    assert not dist.is_initialized()
    for name in LOSS_NAMES:
        z1, z2 = (small_net()(x) for x in loss_inputs(name))
        on, off = make_loss(name, N, gather=True)(z1, z2), make_loss(name, N, gather=False)(z1, z2)
        for k in on:
            assert torch.equal(on[k], off[k]), (name, k)


def test_loss_switch_is_validated_and_shown() -> None:
    with pytest.raises(TypeError, match="gather_distributed"):
        make_loss("vicreg", N, gather="yes")  # type: ignore[arg-type]
    assert "gather_distributed=False" in repr(make_loss("barlow_twins", N, gather=False))
