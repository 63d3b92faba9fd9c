"""``running_stats_as_if_twice``: one forward leaves the BatchNorm state of two identical forwards."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from src.model.batchnorm import running_stats_as_if_twice


class TwoPaths(nn.Module):
    """BatchNorm layers of several momenta on the forward path, and one that the forward never reaches."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn2d = nn.BatchNorm2d(4, momentum=0.3)
        self.bn1d = nn.BatchNorm1d(4, momentum=None)
        self.bn_default = nn.BatchNorm1d(4)
        self.unused = nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn2d(self.conv(x)).mean((-2, -1))
        return self.bn_default(self.bn1d(h))


@pytest.mark.parametrize("train", [True, False])
def test_one_forward_leaves_the_buffers_of_two(train: bool) -> None:
    torch.manual_seed(0)
    once = TwoPaths().double().train(train)
    with torch.no_grad():  # non-trivial starting statistics and counters (cumulative average past 0)
        for _ in range(3):
            once(torch.randn(6, 3, 5, 5, dtype=torch.float64) * 2 + 1)
    twice = copy.deepcopy(once)
    x = torch.randn(6, 3, 5, 5, dtype=torch.float64) * 3 - 1
    with torch.no_grad(), running_stats_as_if_twice(once):
        out = once(x)
    with torch.no_grad():
        twice(x)
        expected = twice(x)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)  # train mode: batch statistics, the same
    for (name, a), b in zip(once.named_buffers(), twice.buffers(), strict=True):
        if name.endswith("num_batches_tracked"):
            assert torch.equal(a, b), name
        else:
            torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-14, msg=name)
    assert int(once.unused.num_batches_tracked) == 0 and int(once.bn1d.num_batches_tracked) == (5 if train else 0)


def test_a_forward_with_autograd_is_refused() -> None:
    """The running statistics change in place after the forward, which its backward would refuse: the context
    asks for no_grad up front rather than failing in the backward."""
    net = TwoPaths()
    with pytest.raises(RuntimeError, match=r"run the forward under torch\.no_grad\(\)"):
        with running_stats_as_if_twice(net):
            net(torch.randn(4, 3, 5, 5))
