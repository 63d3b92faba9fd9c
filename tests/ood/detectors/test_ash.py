"""ash: the ASH-S energy score against a per-sample implementation of its formula (plain Python over each
sample's entries), the search grid, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from src.ood.detectors import build_detector, detector_config
from src.ood.detectors.ash import ASH, ash_s
from src.ood.detectors.base import NotFittedError
from src.ood.evaluator import fit_detector
from src.ood.features import Features
from tests.ood.fakes import features


def head(e: int, c: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(c, e, generator=g) / e**0.5, torch.randn(c, generator=g)


def relu_feats(n: int, e: int, seed: int, scale: float = 1.0) -> Tensor:
    """Non-negative features like a ResNet's pooled ReLU output, float32."""
    return scale * torch.randn(n, e, generator=torch.Generator().manual_seed(seed)).abs()


def per_sample_ash(test: Tensor, weight: Tensor, bias: Tensor, p: float) -> tuple[list, list]:
    preds, confs = [], []
    for x in test.double().tolist():
        n = len(x)
        k = n - int(np.round(n * p / 100.0))
        top = sorted(range(n), key=lambda j: -x[j])[:k]
        s1, s2 = sum(x), sum(x[j] for j in top)
        shaped = [x[j] * math.exp(s1 / s2) if j in top else 0.0 for j in range(n)]
        logits = [
            sum(w * v for w, v in zip(row, shaped)) + b for row, b in zip(weight.double().tolist(), bias.tolist())
        ]
        m = max(logits)
        confs.append(m + math.log(sum(math.exp(f - m) for f in logits)))
        preds.append(logits.index(m))
    return preds, confs


@pytest.mark.parametrize("p", [65, 90, 95])
def test_ash_matches_the_per_sample_formula(p: float) -> None:
    test = relu_feats(12, 40, seed=1)
    weight, bias = head(40, 5, seed=2)
    det = ASH(percentile=p)
    det.set_head(weight, bias)
    pred, conf = det.postprocess(features(torch.zeros(12, 5), feats=test))
    expected_pred, expected_conf = per_sample_ash(test, weight, bias, p)
    assert pred.dtype == torch.int64 and conf.dtype == torch.float32 and conf.shape == (12,)
    np.testing.assert_allclose(conf.numpy(), expected_conf, rtol=1e-5, atol=1e-5)
    assert pred.tolist() == expected_pred


def test_ash_s_keeps_the_rounded_count() -> None:
    x = relu_feats(3, 16, seed=3)
    shaped = ash_s(x, 90)  # 16 − round(14.4) = 2 kept
    assert (shaped != 0).sum(dim=1).tolist() == [2, 2, 2]
    assert shaped.shape == x.shape and torch.equal(x, relu_feats(3, 16, seed=3))  # the input is not modified


def test_ash_grid_and_errors() -> None:
    assert detector_config("ash")["sweep"] == {"percentile_list": [65, 70, 75, 80, 85, 90, 95]}
    det = build_detector("ash")
    assert isinstance(det, ASH) and det.percentile == 90 and not det.needs_fit and det.reads_head
    assert det.candidates() == [[65], [70], [75], [80], [85], [90], [95]]
    det.set_hyperparam([75])
    assert det.get_hyperparam() == [75]
    batch = features(torch.zeros(4, 3), feats=relu_feats(4, 8, seed=4))
    with pytest.raises(NotFittedError, match="set_head"):
        det.postprocess(batch)
    with pytest.raises(ValueError, match="percentile"):
        ASH(percentile=-5)
    with pytest.raises(ValueError, match="keeps none"):
        ash_s(batch.feats, 100)


def test_ash_mc_form_averages_the_score_over_the_samples() -> None:
    weight, bias = head(40, 5, seed=8)
    samples = torch.randn(4, 6, 40, generator=torch.Generator().manual_seed(9)).abs()
    bayes_h = Features(logits=torch.zeros(6, 5), feats=samples.mean(0), samples=samples, space="H")
    dets = {mc: ASH(percentile=80, mc=mc) for mc in (False, True)}
    for det in dets.values():
        det.set_head(weight, bias)
    assert "samples" in dets[True].reads and "samples" not in dets[False].reads
    pred, conf = dets[True].postprocess(bayes_h)
    per_draw = [per_sample_ash(h, weight, bias, 80)[1] for h in samples]
    np.testing.assert_allclose(conf.numpy(), np.mean(per_draw, axis=0), rtol=1e-5, atol=1e-5)
    shaped = torch.stack([ash_s(h, 80) for h in samples])
    assert pred.tolist() == (shaped @ weight.T + bias).mean(0).argmax(1).tolist()
    closed = dets[False].postprocess(bayes_h)[1]
    np.testing.assert_allclose(closed.numpy(), per_sample_ash(samples.mean(0), weight, bias, 80)[1], rtol=1e-5)
    ssl = Features(logits=torch.zeros(6, 5), feats=samples[0])
    torch.testing.assert_close(dets[True].postprocess(ssl), dets[False].postprocess(ssl))


def test_fit_detector_hands_over_the_head_of_the_network() -> None:
    weight, bias = head(8, 3, seed=10)

    class Net:  # the one hook fit_detector needs for a head-reading detector without a fit
        def head(self) -> tuple[Tensor, Tensor]:
            return weight, bias

    det = build_detector("ash")
    fit_detector(det, Net(), None)  # type: ignore[arg-type]
    assert det.head is not None and torch.equal(det.head[0], weight) and torch.equal(det.head[1], bias)
    batch = features(torch.zeros(4, 3), feats=relu_feats(4, 8, seed=11))
    assert det.postprocess(batch)[1].shape == (4,)


def test_ash_an_all_zero_feature_stays_zero() -> None:
    """A row whose kept activations sum to 0 (a dead ReLU feature) is shaped to zeros, so its logits are the
    bias, not NaN; the other rows are those of the formula."""
    test = relu_feats(4, 20, seed=5)
    test[1] = 0.0
    weight, bias = head(20, 3, seed=6)
    det = ASH(percentile=90)
    det.set_head(weight, bias)
    pred, conf = det.postprocess(features(torch.zeros(4, 3), feats=test))
    assert torch.isfinite(conf).all()
    assert conf[1].item() == pytest.approx(torch.logsumexp(bias, 0).item(), rel=1e-6)
    assert pred[1].item() == int(bias.argmax())
    rows = [0, 2, 3]
    expected_pred, expected_conf = per_sample_ash(test[rows], weight, bias, 90)
    np.testing.assert_allclose(conf[rows].numpy(), expected_conf, rtol=1e-5, atol=1e-5)
    assert pred[rows].tolist() == expected_pred
