"""OOD metrics against independent computations (threshold sweeps, Mann-Whitney) (O-Q16)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from src.ood.metrics import auroc_only, compute_all_metrics


def reference_metrics(conf: np.ndarray, label: np.ndarray, pred: np.ndarray) -> list[float]:
    """Plain computations from the definitions, without scikit-learn."""
    ood = label == -1
    c_id, c_ood = conf[~ood], conf[ood]
    # AUROC = P(c_ID > c_OOD) + 1/2 P(tie)
    greater = (c_id[:, None] > c_ood[None, :]).mean()
    ties = (c_id[:, None] == c_ood[None, :]).mean()
    auroc = greater + 0.5 * ties
    # FPR@95: flag "OOD" when -conf >= t; sweep thresholds from the most conservative
    fpr95 = None
    for t in sorted(set(-conf), reverse=True):
        tpr = (-c_ood >= t).mean()
        if tpr >= 0.95:
            fpr95 = (-c_id >= t).mean()
            break

    def aupr(pos: np.ndarray, score: np.ndarray) -> float:
        # precision/recall at every distinct threshold (decreasing recall order) + terminal (0, 1)
        points = []
        for t in sorted(set(score)):
            flagged = score >= t
            tp = (flagged & pos).sum()
            points.append((tp / pos.sum(), tp / flagged.sum()))
        points.append((0.0, 1.0))
        area = 0.0
        for (r1, p1), (r2, p2) in itertools.pairwise(points):
            area += (r1 - r2) * (p1 + p2) / 2
        return area

    acc = (pred[~ood] == label[~ood]).mean()
    return [fpr95, auroc, aupr(~ood, conf), aupr(ood, -conf), acc]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True])
def test_metrics_match_the_definitions(seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    n_id, n_ood = 60, 45
    conf = np.concatenate([rng.normal(1.0, 1.0, n_id), rng.normal(0.0, 1.0, n_ood)])
    if ties:
        conf = np.round(conf, 1)  # many tied scores, within and across the two groups
    label = np.concatenate([rng.integers(0, 5, n_id), -np.ones(n_ood, dtype=int)])
    pred = np.concatenate([rng.integers(0, 5, n_id), rng.integers(0, 5, n_ood)])
    got = compute_all_metrics(conf, label, pred)
    want = reference_metrics(conf, label, pred)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert auroc_only(conf, label) == pytest.approx(want[1])


def test_fpr95_convention_ood_is_positive() -> None:
    """FPR@95 is the share of ID flagged when >= 95 % of OOD are caught (OpenOOD v1.5)."""
    conf_id = np.arange(100, 200, dtype=float)  # ID scores 100..199
    conf_ood = np.concatenate([np.arange(0, 95, dtype=float), np.arange(150, 155, dtype=float)])  # 5 % overlap
    conf = np.concatenate([conf_id, conf_ood])
    label = np.concatenate([np.zeros(100, int), -np.ones(100, int)])
    fpr95, _auroc, *_ = compute_all_metrics(conf, label, np.zeros(200, int))
    assert fpr95 == 0.0  # the 95 low OOD scores are caught before any ID sample is flagged
    conf_ood[:10] = 180.0  # now 10 % of OOD score above most ID samples
    fpr95, *_ = compute_all_metrics(np.concatenate([conf_id, conf_ood]), label, np.zeros(200, int))
    assert fpr95 == pytest.approx(0.81)  # threshold must reach 180 in the ID range: ID 100..180 flagged


def test_perfect_and_inverted_detectors() -> None:
    label = np.concatenate([np.zeros(10, int), -np.ones(10, int)])
    conf = np.concatenate([np.ones(10), np.zeros(10)])
    fpr95, auroc, aupr_in, aupr_out, acc = compute_all_metrics(conf, label, np.zeros(20, int))
    assert (fpr95, auroc, aupr_in, aupr_out, acc) == (0.0, 1.0, 1.0, 1.0, 1.0)
    fpr95, auroc, *_ = compute_all_metrics(-conf, label, np.zeros(20, int))
    assert fpr95 == 1.0 and auroc == 0.0


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="both ID"):
        compute_all_metrics(np.ones(3), np.zeros(3, int), np.zeros(3, int))
    with pytest.raises(ValueError, match="non-finite"):
        compute_all_metrics(np.array([1.0, np.nan]), np.array([0, -1]), np.zeros(2, int))
