"""gram against the per-sample reference transcribed from OpenOOD (flat lists of floats per
(class, layer, power), Python min/max/sum, the full C×C Gram matrix): on a stand-in network whose
maps make both deviation branches fire, and on real ResNets (the layer activations hook)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import pytest
import torch
from torch import Tensor

from src.ood.detectors import build_detector
from src.ood.detectors.gram import Gram
from src.ood.features import Batch
from tests.ood.fakes import InMemoryProtocol, features, store_for, tiny_network
from tests.reference import detectors as ref

POWERS = [1, 2, 3, 4, 5]


class MapsNet:
    """The hooks gram uses: the 'maps' are the input itself and two reductions of it, so the scale
    of a test image decides whether its deviation comes from the min or the max branch."""

    device = torch.device("cpu")
    num_classes = 3

    def feature_list(self, x: Tensor) -> list[Tensor]:
        return [x, x[:, :, ::2, ::2], x.mean(dim=(2, 3), keepdim=True)]

    def logits(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))[:, : self.num_classes]


class Inputs:
    """A training split that only hands out its input batches (all gram's fit reads)."""

    def __init__(self, batches: list[Batch]) -> None:
        self.batches = batches

    def inputs(self, augmented_views: bool = False) -> Iterable[Batch]:
        return self.batches


def fit_reference(net: Any, batches: list[Batch], powers: list) -> tuple[list, list]:
    x = [data if isinstance(data, Tensor) else data[2] for data, _ in batches]
    return ref.gram_fit([net.feature_list(b) for b in x], [y for _, y in batches], net.num_classes, powers)


def test_gram_matches_reference_on_both_branches() -> None:
    g = torch.Generator().manual_seed(0)
    train: list[Batch] = [(1 + torch.rand(6, 3, 4, 4, generator=g), torch.arange(6) % 3) for _ in range(3)]
    base = 1 + torch.rand(4, 3, 4, 4, generator=g)
    test = torch.cat([base, 0.01 * base, 100 * base, 0.2 * base])
    net = MapsNet()
    det = Gram(powers=POWERS)
    det.fit_network(net, Inputs(train))  # type: ignore[arg-type]
    mins, maxs = fit_reference(net, train, POWERS)
    torch.testing.assert_close(det.mins, torch.tensor(mins, dtype=torch.float64), rtol=1e-6, atol=0)
    torch.testing.assert_close(det.maxs, torch.tensor(maxs, dtype=torch.float64), rtol=1e-6, atol=0)
    logits = net.logits(test)
    pred, conf = det.postprocess_network(net, test, features(logits))  # type: ignore[arg-type]
    ref_pred, ref_conf = ref.gram_score(logits, net.feature_list(test), mins, maxs, POWERS)
    assert pred.tolist() == ref_pred
    assert conf.dtype == torch.float64 and pred.dtype == torch.int64 and conf.shape == (16,)
    torch.testing.assert_close(conf, torch.tensor(ref_conf, dtype=torch.float64), rtol=1e-5, atol=1e-12)
    # both branches are exercised: with an infinite max only the min branch can contribute, and
    # it does for the shrunken images; the enlarged ones deviate more than the unscaled ones
    no_max = [[[math.inf] * len(POWERS) for _ in range(3)] for _ in range(3)]
    small = 0.01 * base
    assert min(ref.gram_score(net.logits(small), net.feature_list(small), mins, no_max, POWERS)[1]) > 0
    assert conf[8:12].gt(conf[:4]).all()


@pytest.mark.parametrize("model_name", ["ssl", "ssl_bayes_h"])
def test_gram_matches_reference_on_resnet(model_name: str) -> None:
    net = tiny_network(model_name, seed=3)
    det = build_detector("gram")
    assert isinstance(det, Gram) and det.powers == POWERS
    store = store_for(net, [det], InMemoryProtocol({"id/train": 16, "id/test": 8}))
    train = store.split("default", "id/train")
    det.fit_network(net, train)
    mins, maxs = fit_reference(net, list(train.inputs()), POWERS)
    assert det.mins is not None and det.mins.shape == (4, 5, 5)
    torch.testing.assert_close(det.mins, torch.tensor(mins, dtype=torch.float64), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(det.maxs, torch.tensor(maxs, dtype=torch.float64), rtol=1e-5, atol=1e-6)
    test = store.split("default", "id/test")
    (x, _), batch = next(iter(test.inputs())), test.batches[0]
    pred, conf = det.postprocess_network(net, x, batch)
    ref_pred, ref_conf = ref.gram_score(batch.logits, net.feature_list(x), mins, maxs, POWERS)
    assert pred.tolist() == ref_pred  # the predicted class comes from the batch's logits
    torch.testing.assert_close(conf, torch.tensor(ref_conf, dtype=torch.float64), rtol=1e-5, atol=1e-9)
    # a three-view batch is scored on its plain view
    torch.testing.assert_close(det.postprocess_network(net, [x + 1, x - 1, x], batch), (pred, conf))


def test_gram_hyperparam_selects_fitted_powers() -> None:
    g = torch.Generator().manual_seed(1)
    train: list[Batch] = [(1 + torch.rand(6, 3, 4, 4, generator=g), torch.arange(6) % 3)]
    test = torch.cat([1 + torch.rand(3, 3, 4, 4, generator=g), 0.01 + torch.zeros(2, 3, 4, 4)])
    net = MapsNet()
    det = Gram(powers=[1, 2, 3], sweep={"powers_list": [[1, 2, 3]]})
    assert det.candidates() == [[[1, 2, 3]]]
    det.fit_network(net, Inputs(train))  # type: ignore[arg-type]
    det.set_hyperparam([[2, 1]])
    assert det.get_hyperparam() == [[2, 1]]
    mins, maxs = fit_reference(net, train, [2, 1])
    _, conf = det.postprocess_network(net, test, features(net.logits(test)))  # type: ignore[arg-type]
    _, expected = ref.gram_score(net.logits(test), net.feature_list(test), mins, maxs, [2, 1])
    torch.testing.assert_close(conf, torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-12)
    with pytest.raises(ValueError, match="not fitted"):
        det.set_hyperparam([[4]])
    with pytest.raises(ValueError, match="positive"):
        Gram(powers=[0, 1])


def test_gram_epsilon_inside_the_absolute_value() -> None:
    """O-Q10 (e): the normaliser is |max + 1e-6|, not |max| + 1e-6 (visible when max ≈ −1e-6)."""
    g = torch.Generator().manual_seed(2)
    train: list[Batch] = [(1 + torch.rand(6, 3, 4, 4, generator=g), torch.arange(6) % 3)]
    test = 1 + torch.rand(4, 3, 4, 4, generator=g)
    net = MapsNet()
    det = Gram(powers=[1, 2])
    det.fit_network(net, Inputs(train))  # type: ignore[arg-type]
    assert det.mins is not None and det.maxs is not None
    det.mins = torch.full_like(det.mins, -1.0)
    det.maxs = torch.full_like(det.maxs, -5e-7)
    _, conf = det.postprocess_network(net, test, features(net.logits(test)))  # type: ignore[arg-type]
    _, expected = ref.gram_score(net.logits(test), net.feature_list(test), det.mins.tolist(), det.maxs.tolist(), [1, 2])
    torch.testing.assert_close(conf, torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=0)


def test_gram_errors() -> None:
    net = MapsNet()
    det = Gram()
    with pytest.raises(ValueError, match=r"no training images of classes \[2\]"):
        det.fit_network(net, Inputs([(torch.rand(4, 3, 4, 4), torch.tensor([0, 1, 0, 1]))]))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="labels"):
        det.fit_network(net, Inputs([(torch.rand(4, 3, 4, 4), torch.tensor([0, 1, 2, 3]))]))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no training batches"):
        det.fit_network(net, Inputs([]))  # type: ignore[arg-type]
