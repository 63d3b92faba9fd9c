"""The MC form of the logit detectors (ebo, mls, gen with ``mc: true``): for Bayes-H the score averaged over
the per-sample logits P(h_s) = h_s Wᵀ + b of the finetuned head, against per-sample formulas written here in
plain Python (float64); unchanged for ssl and Bayes-Z; off by default; no head, no score."""

from __future__ import annotations

import inspect
import math
from typing import Any

import pytest
import torch
from torch import Tensor

from src.ood.detectors import DETECTORS, build_detector
from src.ood.detectors.base import NotFittedError
from src.ood.features import Features


def energy(row: list[float], temperature: float) -> float:
    scaled = [v / temperature for v in row]
    top = max(scaled)
    return temperature * (top + math.log(sum(math.exp(v - top) for v in scaled)))


def neg_generalized_entropy(row: list[float], gamma: float, m: int) -> float:
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    probs = sorted((e / sum(exps) for e in exps), reverse=True)[: min(m, len(row))]
    return -sum(p**gamma * (1 - p) ** gamma for p in probs)


#: detector -> (hyper-parameters, the per-sample score of one row of logits)
FORMULAS: dict[str, tuple[dict[str, Any], Any]] = {
    "ebo": ({"temperature": 10.0}, lambda row: energy(row, 10.0)),
    "mls": ({}, max),
    "gen": ({"gamma": 0.5, "M": 3}, lambda row: neg_generalized_entropy(row, 0.5, 3)),
}


def bayes_h(seed: int = 0, s: int = 4, b: int = 9, e: int = 6, c: int = 5) -> tuple[Features, Tensor, Tensor]:
    """Bayes-H features of one batch (samples h_s [S, B, E], their mean as feats, the head's MC-mean logits)
    and a head W [C, E], b [C]."""
    g = torch.Generator().manual_seed(seed)
    samples = 2 * torch.randn(s, b, e, generator=g, dtype=torch.float64)
    weight = torch.randn(c, e, generator=g, dtype=torch.float64)
    bias = torch.randn(c, generator=g, dtype=torch.float64)
    logits = (samples @ weight.T + bias).mean(0)
    feats = Features(logits=logits, feats=samples.mean(0), samples=samples, space="H")
    return feats, weight, bias


def built(name: str, mc: bool) -> Any:
    args, _ = FORMULAS[name]
    return build_detector(name, hyperparam={**args, "mc": mc})


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_mc_form_is_the_mean_of_the_per_sample_scores(name: str) -> None:
    feats, weight, bias = bayes_h()
    det = built(name, mc=True)
    assert det.reads_head and "samples" in det.reads
    det.set_head(weight, bias)
    pred, conf = det.postprocess(feats)
    _, formula = FORMULAS[name]
    samples = feats.get("samples", "test")
    expected = []
    for i in range(samples.shape[1]):  # one test sample at a time, one draw at a time
        per_draw = []
        for h in samples[:, i].tolist():
            row = [sum(w * x for w, x in zip(w_row, h)) + b_c for w_row, b_c in zip(weight.tolist(), bias.tolist())]
            per_draw.append(formula(row))
        expected.append(sum(per_draw) / len(per_draw))
    torch.testing.assert_close(conf, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-10)
    assert torch.equal(pred, feats.logits.argmax(1))  # the study's prediction
    closed = built(name, mc=False)
    assert not closed.reads_head and "samples" not in closed.reads
    assert not torch.allclose(closed.postprocess(feats)[1], conf)  # the MC average is not the closed form


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_mc_form_changes_nothing_without_bayes_h_samples(name: str) -> None:
    feats, weight, bias = bayes_h(seed=1)
    ssl = Features(logits=feats.logits, feats=feats.get("feats", "test"))
    # Bayes-Z: its samples are z, after the projector, and the head reads e: the MC form has nothing to average
    bayes_z = Features(logits=feats.logits, feats=feats.get("feats", "test"), samples=torch.zeros(4, 9, 3), space="Z")
    for plain in (ssl, bayes_z):
        det = built(name, mc=True)
        det.set_head(weight, bias)
        torch.testing.assert_close(det.postprocess(plain), built(name, mc=False).postprocess(plain), rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_mc_form_without_the_head_is_an_error(name: str) -> None:
    feats, _, _ = bayes_h(seed=2)
    with pytest.raises(NotFittedError, match=rf"{name}: set_head"):
        built(name, mc=True).postprocess(feats)


def test_gen_mc_search_equals_per_candidate() -> None:
    feats, weight, bias = bayes_h(seed=3, c=4)
    det = build_detector("gen", hyperparam={"mc": True})
    det.set_head(weight, bias)
    candidates = [[0.1, 2], [0.5, 10], [2.0, 100]]
    shared = det.score_candidates(feats, candidates)
    for values, (pred, conf) in zip(candidates, shared):
        det.set_hyperparam(values)
        one = det.score(feats)
        assert torch.equal(pred, one[0]) and torch.equal(conf, one[1])


def test_every_mc_option_takes_only_a_boolean() -> None:
    """Every registered detector with an ``mc`` option refuses a non-boolean (``"false"`` would read as true)."""
    with_mc = [name for name in DETECTORS if "mc" in inspect.signature(DETECTORS[name].__init__).parameters]
    assert set(with_mc) == {"ash", "ebo", "gen", "knn", "mls", "react", "rmds", "vim"}
    for name in with_mc:
        assert build_detector(name, hyperparam={"mc": True}).mc is True
        for bad in ("false", 1, None):
            with pytest.raises(ValueError, match=rf"{name}: mc must be true or false"):
                build_detector(name, hyperparam={"mc": bad})
