"""OOD metrics, exactly as OpenOOD v1.5 computes them (O-Q16).

Convention: larger ``conf`` = more in-distribution; labels are class indices (>= 0) for ID
samples and -1 for OOD samples. OOD is the positive class of the ROC (score ``-conf``):

- FPR@95: ``fpr`` at the first ROC point (thresholds decreasing) with ``tpr >= 0.95``, i.e. the
  share of ID samples flagged when at least 95 % of the OOD samples are caught;
- AUROC: trapezoidal area under (fpr, tpr);
- AUPR_IN: trapezoidal area under sklearn's precision-recall points with ID positive (score
  ``conf``), terminal point (recall 0, precision 1) included — not average precision;
- AUPR_OUT: the same with OOD positive (score ``-conf``);
- ACC: share of ID samples with ``pred == label``.

All returned as fractions; the study reports percentages.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

METRIC_NAMES = ("FPR@95", "AUROC", "AUPR_IN", "AUPR_OUT", "ACC")
RECALL_LEVEL = 0.95


def compute_all_metrics(conf: np.ndarray, label: np.ndarray, pred: np.ndarray) -> list[float]:
    """``[FPR@95, AUROC, AUPR_IN, AUPR_OUT, ACC]`` for one ID-vs-OOD comparison (fractions)."""
    conf = np.asarray(conf, dtype=np.float64)
    label = np.asarray(label)
    pred = np.asarray(pred)
    if conf.shape != label.shape or conf.ndim != 1:
        raise ValueError(f"conf and label must be 1-D of equal length, got {conf.shape} and {label.shape}")
    ood = (label == -1).astype(np.int64)
    if ood.all() or not ood.any():
        raise ValueError("the metrics need both ID (label >= 0) and OOD (label == -1) samples")
    if not np.isfinite(conf).all():
        raise ValueError(
            f"{int((~np.isfinite(conf)).sum())} non-finite detector scores; the detector or the model diverged"
        )

    fpr, tpr, _ = skm.roc_curve(ood, -conf)
    fpr_at_95 = float(fpr[np.argmax(tpr >= RECALL_LEVEL)])
    auroc = float(skm.auc(fpr, tpr))
    precision_in, recall_in, _ = skm.precision_recall_curve(1 - ood, conf)
    aupr_in = float(skm.auc(recall_in, precision_in))
    precision_out, recall_out, _ = skm.precision_recall_curve(ood, -conf)
    aupr_out = float(skm.auc(recall_out, precision_out))
    id_mask = ood == 0
    acc = float((pred[id_mask] == label[id_mask]).mean())
    return [fpr_at_95, auroc, aupr_in, aupr_out, acc]


def auroc_only(conf: np.ndarray, label: np.ndarray) -> float:
    """AUROC (fraction) of one comparison: the hyper-parameter search criterion (O-Q18)."""
    ood = (np.asarray(label) == -1).astype(np.int64)
    fpr, tpr, _ = skm.roc_curve(ood, -np.asarray(conf, dtype=np.float64))
    return float(skm.auc(fpr, tpr))
