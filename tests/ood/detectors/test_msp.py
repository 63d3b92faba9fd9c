"""msp against the per-sample reference: max softmax of the logits, argmax prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.ood.detectors import build_detector
from src.ood.detectors.msp import MSP
from tests.ood.fakes import features
from tests.reference import detectors as ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_msp_matches_reference(dtype: torch.dtype) -> None:
    logits = 3 * torch.randn(20, 5, generator=torch.Generator().manual_seed(1), dtype=dtype)
    pred, conf = MSP().postprocess(features(logits))
    ref_pred, ref_conf = ref.msp(logits)
    assert pred.dtype == torch.int64 and pred.shape == (20,)
    assert conf.dtype == dtype and conf.shape == (20,)
    np.testing.assert_array_equal(pred.numpy(), ref_pred)
    np.testing.assert_allclose(conf.numpy(), ref_conf, rtol=1e-12 if dtype == torch.float64 else 1e-6)


def test_msp_reads_only_logits() -> None:
    det = build_detector("msp")
    assert isinstance(det, MSP) and det.reads == {"logits"} and not det.needs_fit and det.candidates() == []
