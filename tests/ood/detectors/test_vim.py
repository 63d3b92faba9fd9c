"""vim: the virtual-logit score against a per-sample implementation of its formula (numpy: the pseudo-
inverse, the covariance about u, a general eigendecomposition, then a loop over samples), the dim cap, the
search grid, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from src.ood.detectors import build_detector, detector_config
from src.ood.detectors.base import NotFittedError
from src.ood.detectors.vim import ViM, principal_dim
from src.ood.features import Features
from tests.ood.fakes import features


def data(n: int, e: int, c: int, seed: int, scale: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """(feats [n, e] with correlated, non-negative entries, W [c, e], b [c]), float32."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(e, e, generator=g) * torch.linspace(1.5, 0.1, e)
    feats = scale * (torch.randn(n, e, generator=g) @ mix).abs()
    g2 = torch.Generator().manual_seed(100)  # one head for every split
    return feats, torch.randn(c, e, generator=g2) / e**0.5, torch.randn(c, generator=g2)


def per_sample_vim(train: Tensor, test: Tensor, weight: Tensor, bias: Tensor, dim: int) -> tuple[list, list]:
    x_train, w, b = train.double().numpy(), weight.double().numpy(), bias.double().numpy()
    u = -np.linalg.pinv(w) @ b
    cov = sum(np.outer(x - u, x - u) for x in x_train) / len(x_train)
    eigenvalues, eigenvectors = np.linalg.eig(cov)
    residual = eigenvectors[:, np.argsort(-eigenvalues.real)[dim:]].real
    max_logits = [max(w @ x + b) for x in x_train]
    norms = [np.linalg.norm((x - u) @ residual) for x in x_train]
    alpha = np.mean(max_logits) / np.mean(norms)
    preds, confs = [], []
    for x in test.double().numpy():
        logits = w @ x + b
        energy = np.log(np.sum(np.exp(logits - logits.max()))) + logits.max()
        confs.append(-(alpha * np.linalg.norm((x - u) @ residual) - energy))
        preds.append(int(np.argmax(logits)))
    return preds, confs


def fitted(dim: int, train: Tensor, weight: Tensor, bias: Tensor) -> ViM:
    det = ViM(dim=dim)
    det.set_head(weight, bias)
    det.fit(features(torch.zeros(len(train), 4), feats=train), torch.zeros(len(train), dtype=torch.long))
    return det


@pytest.mark.parametrize("dim", [1, 5, 9])
def test_vim_matches_the_per_sample_formula(dim: int) -> None:
    train, weight, bias = data(300, 12, 4, seed=0)
    test = torch.cat([data(10, 12, 4, seed=1)[0], data(10, 12, 4, seed=2, scale=3.0)[0]])
    det = fitted(dim, train, weight, bias)
    pred, conf = det.postprocess(features(torch.zeros(20, 4), feats=test))
    expected_pred, expected_conf = per_sample_vim(train, test, weight, bias, dim)
    assert pred.dtype == torch.int64 and conf.dtype == torch.float32 and conf.shape == (20,)
    np.testing.assert_allclose(conf.numpy(), expected_conf, rtol=1e-4, atol=1e-4)
    assert pred.tolist() == expected_pred
    assert det.record_info() == {"principal_dim": dim, "feature_dim": 12}


def test_vim_caps_a_dim_without_residual() -> None:
    assert principal_dim(256, 512) == 256 and principal_dim(1000, 512) == 256 and principal_dim(12, 12) == 6
    train, weight, bias = data(300, 12, 4, seed=3)
    test = data(8, 12, 4, seed=4, scale=2.0)[0]
    det = fitted(1000, train, weight, bias)
    assert det.used_dim == 6 and det.get_hyperparam() == [1000]
    assert det.record_info() == {"principal_dim": 6, "feature_dim": 12}
    _, conf = det.postprocess(features(torch.zeros(8, 4), feats=test))
    np.testing.assert_allclose(conf.numpy(), per_sample_vim(train, test, weight, bias, 6)[1], rtol=1e-4, atol=1e-4)


def test_vim_grid_refits_the_residual_without_a_new_fit() -> None:
    assert detector_config("vim")["sweep"] == {"dim_list": [256, 1000]}
    det = build_detector("vim")
    assert isinstance(det, ViM) and det.dim == 256 and det.candidates() == [[256], [1000]]
    train, weight, bias = data(200, 10, 4, seed=5)
    test = features(torch.zeros(6, 4), feats=data(6, 10, 4, seed=6)[0])
    det = fitted(2, train, weight, bias)
    for dim in (7, 3):
        det.set_hyperparam([dim])
        assert det.get_hyperparam() == [dim]
        torch.testing.assert_close(det.postprocess(test), fitted(dim, train, weight, bias).postprocess(test))


def test_vim_errors() -> None:
    train, weight, bias = data(50, 6, 4, seed=7)
    det = ViM(dim=2)
    with pytest.raises(NotFittedError, match="set_head"):
        det.fit(features(torch.zeros(50, 4), feats=train), torch.zeros(50, dtype=torch.long))
    det.set_head(weight, bias)
    with pytest.raises(NotFittedError):
        det.postprocess(features(torch.zeros(50, 4), feats=train))
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="dim"):
            ViM(dim=bad)


def test_vim_mc_form_averages_the_score_over_the_samples() -> None:
    train, weight, bias = data(300, 12, 4, seed=8)
    samples = torch.stack([data(7, 12, 4, seed=9 + s)[0] for s in range(3)])
    bayes_h = Features(logits=torch.zeros(7, 4), feats=samples.mean(0), samples=samples, space="H")
    det = ViM(dim=5, mc=True)
    det.set_head(weight, bias)
    det.fit(features(torch.zeros(300, 4), feats=train), torch.zeros(300, dtype=torch.long))
    assert "samples" in det.reads and "samples" not in det.fit_reads
    pred, conf = det.postprocess(bayes_h)
    per_draw = [per_sample_vim(train, h, weight, bias, 5)[1] for h in samples]
    np.testing.assert_allclose(conf.numpy(), np.mean(per_draw, axis=0), rtol=1e-4, atol=1e-4)
    assert pred.tolist() == (samples @ weight.T + bias).mean(0).argmax(1).tolist()
    closed = fitted(5, train, weight, bias)
    np.testing.assert_allclose(
        closed.postprocess(bayes_h)[1].numpy(), per_sample_vim(train, samples.mean(0), weight, bias, 5)[1], rtol=1e-4
    )
    ssl = Features(logits=torch.zeros(7, 4), feats=samples[0])
    torch.testing.assert_close(det.postprocess(ssl), closed.postprocess(ssl))
