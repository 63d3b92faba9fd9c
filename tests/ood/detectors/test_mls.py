"""mls against a per-sample maximum logit written here, ties, no fit and no hyper-parameters."""

from __future__ import annotations

import torch

from src.ood.detectors import build_detector
from src.ood.detectors.mls import MLS
from tests.ood.fakes import features


def test_mls_matches_per_sample_max_logit() -> None:
    logits = 3 * torch.randn(33, 6, generator=torch.Generator().manual_seed(5))
    pred, conf = MLS().postprocess(features(logits))
    assert pred.dtype == torch.int64 and conf.dtype == torch.float32 and conf.shape == (33,)
    for b, row in enumerate(logits.tolist()):
        best = max(range(len(row)), key=lambda c: (row[c], -c))  # the first of equal maxima
        assert int(pred[b]) == best
        assert float(conf[b]) == row[best]


def test_mls_ties_take_the_first_class_as_argmax_does() -> None:
    logits = torch.tensor([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])
    pred, conf = MLS().score(features(logits))
    assert pred.tolist() == [1, 0] and conf.tolist() == [3.0, 2.0]


def test_mls_config() -> None:
    det = build_detector("mls")
    assert isinstance(det, MLS) and det.reads == {"logits"} and not det.needs_fit and not det.fit_reads
    assert det.candidates() == [] and det.get_hyperparam() == []
