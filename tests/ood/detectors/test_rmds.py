"""rmds: the relative Mahalanobis score against a per-sample implementation of its formula (numpy, one
sample and one class at a time), the config, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from src.ood.detectors import build_detector, detector_config
from src.ood.detectors.base import NotFittedError
from src.ood.detectors.rmds import RMDS
from src.ood.features import Features
from tests.ood.fakes import features


def random_features(n: int, d: int, classes: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """(logits [n, classes], feats [n, d] with class-dependent means, labels [n]) in float32."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centres = 2 * torch.randn(classes, d, generator=g)
    feats = centres[labels] + torch.randn(n, d, generator=g) @ torch.randn(d, d, generator=g) / d**0.5
    return torch.randn(n, classes, generator=g), feats, labels


def per_sample_rmds(train: np.ndarray, labels: np.ndarray, test: np.ndarray, classes: int) -> np.ndarray:
    """conf(x) = −min_c (MD_c(x) − MD_0(x)): class Gaussians with the pooled ML covariance, one background
    Gaussian of all training features; float64, a loop over samples and classes."""
    train = train.astype(np.float64)
    means = [train[labels == c].mean(0) for c in range(classes)]
    centred = np.stack([train[i] - means[labels[i]] for i in range(len(train))])
    precision = np.linalg.pinv(centred.T @ centred / len(train))
    mean0 = train.mean(0)
    precision0 = np.linalg.pinv((train - mean0).T @ (train - mean0) / len(train))
    out = []
    for x in test.astype(np.float64):
        md0 = (x - mean0) @ precision0 @ (x - mean0)
        relative = [(x - means[c]) @ precision @ (x - means[c]) - md0 for c in range(classes)]
        out.append(-min(relative))
    return np.array(out)


def test_rmds_matches_the_per_sample_formula() -> None:
    logits, feats, labels = random_features(400, 6, 3, seed=0)
    test_logits, test_feats, _ = random_features(40, 6, 3, seed=1)
    test_feats = torch.cat([test_feats, 3 * test_feats[:20]])  # some far from the training data
    test_logits = torch.cat([test_logits, test_logits[:20]])
    det = RMDS()
    det.fit(features(logits, feats=feats), labels)
    pred, conf = det.postprocess(features(test_logits, feats=test_feats))
    expected = per_sample_rmds(feats.numpy(), labels.numpy(), test_feats.numpy(), 3)
    assert pred.dtype == torch.int64 and conf.dtype == torch.float32 and conf.shape == (60,)
    np.testing.assert_allclose(conf.numpy(), expected, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(pred.numpy(), test_logits.argmax(1).numpy())
    # farther from the training data: lower confidence on average
    assert conf[40:].mean() < conf[:20].mean()


def test_rmds_config_and_errors() -> None:
    assert detector_config("rmds") == {"aps_mode": False, "args": {"mc": False}, "sweep": {}}
    det = build_detector("rmds")
    assert isinstance(det, RMDS) and det.candidates() == [] and det.needs_fit
    logits, feats, _ = random_features(30, 4, 3, seed=2)
    with pytest.raises(NotFittedError):
        det.postprocess(features(logits, feats=feats))
    with pytest.raises(ValueError, match="no training feature"):
        det.fit(features(logits, feats=feats), torch.zeros(30, dtype=torch.long))


def test_rmds_mc_form_averages_the_score_over_the_samples() -> None:
    logits, feats, labels = random_features(400, 6, 3, seed=3)
    test_logits, _, _ = random_features(10, 6, 3, seed=4)
    samples = torch.randn(5, 10, 6, generator=torch.Generator().manual_seed(5)) * 2
    bayes_h = Features(logits=test_logits, feats=samples.mean(0), samples=samples, space="H")
    det = RMDS(mc=True)
    assert "samples" in det.reads and "samples" not in det.fit_reads
    det.fit(features(logits, feats=feats), labels)
    pred, conf = det.postprocess(bayes_h)
    per_draw = [per_sample_rmds(feats.numpy(), labels.numpy(), h.numpy(), 3) for h in samples]
    np.testing.assert_allclose(conf.numpy(), np.mean(per_draw, axis=0), rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(pred.numpy(), test_logits.argmax(1).numpy())
    # the default reads no samples; for a deterministic model the MC form is the default
    closed = RMDS()
    closed.fit(features(logits, feats=feats), labels)
    np.testing.assert_allclose(
        closed.postprocess(bayes_h)[1].numpy(),
        per_sample_rmds(feats.numpy(), labels.numpy(), samples.mean(0).numpy(), 3),
        rtol=1e-4,
        atol=1e-3,
    )
    ssl = Features(logits=test_logits, feats=samples[0])
    torch.testing.assert_close(det.postprocess(ssl), closed.postprocess(ssl))
