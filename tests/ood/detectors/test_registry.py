"""The detector registry: the paper's nine with their declarations, the study order, configs read
from an injectable folder, and clear errors for unknown names and missing configs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from src.ood.detectors import CONFIG_DIR, DETECTORS, PAPER_DETECTORS, build_detector, detector_config, study_order
from src.ood.detectors.base import NetworkDetector

#: name: (preprocessor, probabilistic, reference_sign_inverted, needs_fit, network detector, APS candidates)
PAPER = {
    "msp": ("default", False, False, False, False, 0),
    "mds": ("default", False, False, True, False, 0),
    "sigmamean": ("barlowtwins", True, True, False, False, 0),
    "logpprior": ("barlowtwins", True, False, False, True, 0),
    "umds": ("default", False, False, True, False, 0),
    "gram": ("default", False, True, True, True, 1),
    "odin": ("default", False, False, False, True, 8),
    "kldivsimk": ("barlowtwins", True, True, True, False, 4),
    "edsimk": ("default", False, False, True, False, 5),
}


def test_the_papers_detectors_and_their_declarations() -> None:
    assert list(PAPER) == list(PAPER_DETECTORS)
    for name, (kind, probabilistic, inverted, needs_fit, network, candidates) in PAPER.items():
        det = build_detector(name)
        assert det.preprocessor == kind and det.probabilistic == probabilistic, name
        assert det.reference_sign_inverted == inverted and det.needs_fit == needs_fit, name
        assert isinstance(det, NetworkDetector) == network, name
        assert len(det.candidates()) == candidates, name
    logp = build_detector("logpprior")
    assert logp.uses_augmented_views and logp.reads == {"logits"}  # use_augumented: true in its config
    assert build_detector("gram").get_hyperparam() == [[1, 2, 3, 4, 5]]


def test_study_order_is_the_papers_then_the_others_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    assert study_order()[: len(PAPER_DETECTORS)] == list(PAPER_DETECTORS)
    assert set(study_order()) == set(DETECTORS)
    monkeypatch.setattr(DETECTORS, "_entries", dict(DETECTORS._entries))  # restored after the test
    for extra in ("zzz", "aaa"):
        DETECTORS.add(extra, DETECTORS["msp"])
    order = study_order()
    added = order[len(PAPER_DETECTORS) :]
    assert added == sorted(added) and {"aaa", "zzz"} <= set(added)
    assert order[: len(PAPER_DETECTORS)] == list(PAPER_DETECTORS)


def test_configs_are_read_from_an_injectable_folder(tmp_path: Path) -> None:
    shutil.copy(CONFIG_DIR / "edsimk.yaml", tmp_path / "edsimk.yaml")
    (tmp_path / "edsimk.yaml").write_text("aps_mode: false\nargs:\n  K: 3\n")
    det = build_detector("edsimk", config_dir=tmp_path)
    assert det.get_hyperparam() == [3] and det.sweep == {}
    assert detector_config("edsimk") != detector_config("edsimk", tmp_path)
    with pytest.raises(FileNotFoundError, match="has no config"):
        build_detector("msp", config_dir=tmp_path)


def test_unknown_detector_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"'msq' is not a known detector; known: .*edsimk.*msp"):
        build_detector("msq")
