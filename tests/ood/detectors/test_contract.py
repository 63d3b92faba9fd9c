"""The contract every registered detector keeps, parametrised over ``DETECTORS``: a new detector is
tested here the moment it registers.

For each detector, model variant (ssl, Bayes-H, Bayes-Z) and device (CPU, and CUDA when present),
on an in-memory protocol with real tiny networks: a detector that needs a fit refuses to score
before it (``NotFittedError``); after the fit (and its first hyper-parameter candidate), a batch
gives ``pred`` int64 [B] and a finite float ``conf`` [B] on the network's device, the model stays
in eval mode and no gradient reaches its parameters; a probabilistic detector refuses the
deterministic model with a ValueError naming the need for a stochastic one; the config builds it
with the declared class attributes.
"""

from __future__ import annotations

import pytest
import torch

from src.ood.detectors import DETECTORS, build_detector, detector_config
from src.ood.detectors.base import Detector, NetworkDetector, NotFittedError, plain_view
from src.ood.evaluator import fit_detector, inference, score_batch
from src.ood.features import FIELDS
from src.ood.wrapper import OODNetwork
from tests.ood.fakes import MODELS, InMemoryProtocol, store_for, tiny_network

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.fixture(scope="module")
def networks() -> dict[str, OODNetwork]:
    return {name: tiny_network(name, seed=i) for i, name in enumerate(MODELS)}


def parameters(net: OODNetwork) -> list[torch.nn.Parameter]:
    return [*net.model.parameters(), *net.predictor.parameters()]


def modules(net: OODNetwork) -> list[torch.nn.Module]:
    return [*net.model.modules(), *net.predictor.modules()]


@pytest.mark.parametrize("name", list(DETECTORS))
def test_config_and_declarations(name: str) -> None:
    cls = DETECTORS[name]
    det = build_detector(name)
    assert type(det) is cls and det.name == name
    cfg = detector_config(name)
    assert det.sweep == (cfg["sweep"] if cfg["aps_mode"] else {})
    assert det.preprocessor in ("default", "barlowtwins")
    assert set(det.reads) <= set(FIELDS) and set(det.fit_reads) <= set(FIELDS)
    if not isinstance(det, NetworkDetector):
        assert det.reads, f"{name} scores features but reads none"
        assert not det.uses_augmented_views, "only a network detector can read the augmented views"
    if not det.needs_fit:
        assert not det.fit_reads
    for values in det.candidates():
        assert len(values) == len(det.sweep)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("name", list(DETECTORS))
def test_detector_contract(name: str, model_name: str, device: str, networks: dict[str, OODNetwork]) -> None:
    net = networks[model_name].to(device)
    try:
        _check_contract(build_detector(name), net, torch.device(device))
    finally:
        net.to("cpu")


def _check_contract(det: Detector, net: OODNetwork, device: torch.device) -> None:
    protocol = InMemoryProtocol({"id/train": 32, "id/test": 8})  # above the first K candidates (10)
    store = store_for(net, [det], protocol)
    kind = det.preprocessor
    train, test = store.split(kind, "id/train"), store.split(kind, "id/test")
    (data, _) = next(iter(test.inputs(det.uses_augmented_views)))
    batch_features = test.batches[0] if det.reads else None

    if det.probabilistic and net.stochastic_space is None:
        # the study records null for these (the refusal is tested there); the detector itself refuses
        with pytest.raises(ValueError, match="stochastic model"):
            fit_detector(det, net, train)
            score_batch(det, net, data, batch_features)
        return

    if det.needs_fit:
        with pytest.raises(NotFittedError):
            score_batch(det, net, data, batch_features)
    fit_detector(det, net, train)
    if det.candidates():
        det.set_hyperparam(det.candidates()[0])
    pred, conf = score_batch(det, net, data, batch_features)

    n = plain_view(data).shape[0]
    assert pred.shape == conf.shape == (n,)
    assert pred.dtype == torch.int64
    assert conf.dtype in (torch.float32, torch.float64)
    assert torch.isfinite(conf).all()
    assert pred.device.type == conf.device.type == device.type
    assert int(pred.min()) >= 0 and int(pred.max()) < net.num_classes
    assert not any(m.training for m in modules(net)), f"{det.name} left a module in train mode"
    assert all(p.grad is None for p in parameters(net)), f"{det.name} accumulated gradients into the model"
    # the whole split through the evaluator: one score per image, labels aligned
    pred_all, conf_all, labels = inference(det, net, test)
    assert pred_all.shape == conf_all.shape == labels.shape == (protocol.data["id/test"][1].shape[0],)
    assert (labels == protocol.data["id/test"][1].numpy()).all()


@pytest.mark.parametrize("name", list(DETECTORS))
def test_corrected_sign_negates_only_the_inverted_detectors(name: str, networks: dict[str, OODNetwork]) -> None:
    net = networks["ssl_bayes_h"]
    protocol = InMemoryProtocol({"id/train": 32, "id/test": 8})
    confs = []
    for corrected in (False, True):
        det = build_detector(name, corrected_sign=corrected)
        store = store_for(net, [det], protocol)
        torch.manual_seed(21)  # the same features and the same draws of any network hook
        fit_detector(det, net, store.split(det.preprocessor, "id/train"))
        if det.candidates():
            det.set_hyperparam(det.candidates()[0])
        test = store.split(det.preprocessor, "id/test")
        data = next(iter(test.inputs(det.uses_augmented_views)))[0]
        confs.append(score_batch(det, net, data, test.batches[0] if det.reads else None)[1])
    expected = -confs[0] if DETECTORS[name].reference_sign_inverted else confs[0]
    torch.testing.assert_close(confs[1], expected)
