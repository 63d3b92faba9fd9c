"""react: the clipped energy score against a per-sample implementation of its formula (plain Python over
each sample's entries, the percentile by sorting and linear interpolation), the search grid, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from src.ood.detectors import build_detector, detector_config
from src.ood.detectors.base import NotFittedError
from src.ood.detectors.react import ReAct
from src.ood.features import Features
from tests.ood.fakes import features


def head(e: int, c: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(c, e, generator=g), torch.randn(c, generator=g)


def relu_feats(n: int, e: int, seed: int, scale: float = 1.0) -> Tensor:
    """Non-negative features like a ResNet's pooled ReLU output, float32."""
    return scale * torch.randn(n, e, generator=torch.Generator().manual_seed(seed)).abs()


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile with linear interpolation between the sorted values (numpy's default)."""
    s = sorted(values)
    rank = p / 100 * (len(s) - 1)
    lo, hi = math.floor(rank), math.ceil(rank)
    return s[lo] + (s[hi] - s[lo]) * (rank - lo)


def per_sample_react(train: Tensor, test: Tensor, weight: Tensor, bias: Tensor, p: float) -> tuple[list, list]:
    c = percentile([float(v) for row in train.tolist() for v in row], p)
    preds, confs = [], []
    for x in test.double().tolist():
        clipped = [min(v, c) for v in x]
        logits = [
            sum(w * v for w, v in zip(row, clipped)) + b for row, b in zip(weight.double().tolist(), bias.tolist())
        ]
        m = max(logits)
        confs.append(m + math.log(sum(math.exp(f - m) for f in logits)))
        preds.append(logits.index(m))
    return preds, confs


@pytest.mark.parametrize("p", [85, 90, 99])
def test_react_matches_the_per_sample_formula(p: float) -> None:
    train, test = relu_feats(50, 16, seed=0), relu_feats(12, 16, seed=1, scale=1.5)
    weight, bias = head(16, 5, seed=2)
    det = ReAct(percentile=p)
    det.set_head(weight, bias)
    det.fit(features(torch.zeros(50, 5), feats=train), torch.zeros(50, dtype=torch.long))
    pred, conf = det.postprocess(features(torch.zeros(12, 5), feats=test))
    expected_pred, expected_conf = per_sample_react(train, test, weight, bias, p)
    assert det.threshold == pytest.approx(percentile(train.flatten().tolist(), p), rel=1e-6)
    assert pred.dtype == torch.int64 and conf.dtype == torch.float32 and conf.shape == (12,)
    np.testing.assert_allclose(conf.numpy(), expected_conf, rtol=1e-5, atol=1e-5)
    assert pred.tolist() == expected_pred


def test_react_grid_recomputes_the_threshold_without_a_new_fit() -> None:
    assert detector_config("react")["sweep"] == {"percentile_list": [85, 90, 95, 99]}
    det = build_detector("react")
    assert isinstance(det, ReAct) and det.percentile == 90 and det.candidates() == [[85], [90], [95], [99]]
    train = relu_feats(40, 8, seed=3)
    det.set_head(*head(8, 3, seed=4))
    det.fit(features(torch.zeros(40, 3), feats=train), torch.zeros(40, dtype=torch.long))
    test = features(torch.zeros(6, 3), feats=relu_feats(6, 8, seed=5, scale=2.0))
    for values in det.candidates():
        det.set_hyperparam(values)
        assert det.get_hyperparam() == values
        assert det.threshold == pytest.approx(percentile(train.flatten().tolist(), values[0]), rel=1e-6)
        fresh = ReAct(percentile=values[0])
        fresh.set_head(*det.head)
        fresh.fit(features(torch.zeros(40, 3), feats=train), torch.zeros(40, dtype=torch.long))
        torch.testing.assert_close(det.postprocess(test), fresh.postprocess(test))


def test_react_errors() -> None:
    det = ReAct()
    batch = features(torch.zeros(4, 3), feats=relu_feats(4, 8, seed=6))
    with pytest.raises(NotFittedError, match="set_head"):
        det.postprocess(batch)
    det.set_head(*head(8, 3, seed=7))
    with pytest.raises(NotFittedError):
        det.postprocess(batch)
    with pytest.raises(ValueError, match="percentile"):
        ReAct(percentile=101)
    with pytest.raises(ValueError, match="percentile"):
        det.set_hyperparam([-1])
    with pytest.raises(ValueError, match="W \\[C, E\\]"):
        det.set_head(torch.zeros(3, 8), torch.zeros(8))


def test_react_mc_form_averages_the_score_over_the_samples() -> None:
    train, weight, bias = relu_feats(50, 16, seed=8), *head(16, 5, seed=9)
    samples = torch.randn(4, 6, 16, generator=torch.Generator().manual_seed(10)) + 1.0
    bayes_h = Features(logits=torch.zeros(6, 5), feats=samples.mean(0), samples=samples, space="H")
    dets = {}
    for mc in (False, True):
        dets[mc] = ReAct(percentile=90, mc=mc)
        dets[mc].set_head(weight, bias)
        dets[mc].fit(features(torch.zeros(50, 5), feats=train), torch.zeros(50, dtype=torch.long))
    assert "samples" in dets[True].reads and "samples" not in dets[False].reads
    pred, conf = dets[True].postprocess(bayes_h)
    per_draw = [per_sample_react(train, h, weight, bias, 90)[1] for h in samples]
    np.testing.assert_allclose(conf.numpy(), np.mean(per_draw, axis=0), rtol=1e-5, atol=1e-5)
    clipped = samples.clamp(max=dets[True].threshold)
    assert pred.tolist() == (clipped @ weight.T + bias).mean(0).argmax(1).tolist()
    closed = dets[False].postprocess(bayes_h)[1]
    np.testing.assert_allclose(closed.numpy(), per_sample_react(train, samples.mean(0), weight, bias, 90)[1], rtol=1e-5)
    ssl = Features(logits=torch.zeros(6, 5), feats=samples[0])
    torch.testing.assert_close(dets[True].postprocess(ssl), dets[False].postprocess(ssl))
