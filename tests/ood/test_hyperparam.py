"""Studies you can steer: hyper-parameters fixed on the command line instead of searched, and raw-score
files from which every metric row is recomputed (confidences, predictions and labels per split)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from src.experiments.scripts.run_ood_study import hyperparam_arg, parse_args
from src.ood import evaluator
from src.ood.detectors import build_detector, fixed_hyperparams, hyperparam_names
from src.ood.evaluator import evaluate
from src.ood.features import FeatureStore
from src.ood.metrics import METRIC_NAMES, compute_all_metrics
from src.ood.study import save_scores
from tests.ood.fakes import InMemoryProtocol, tiny_network

SMALL = {"id/train": 24, "id/val": 8, "ood/val": 8, "id/test": 8, "ood/near/shifted": 8, "ood/far/noise": 10}


def test_names_of_each_detector() -> None:
    assert hyperparam_names("kldivsimk") == (["K"], ["K", "train_chunk_size", "test_chunk_size"])
    assert hyperparam_names("odin") == (["temperature", "noise"], ["temperature", "noise"])
    assert hyperparam_names("gram") == (["powers"], ["powers"])
    assert hyperparam_names("msp") == ([], [])
    assert hyperparam_names("umds")[0] == [] and "seed" in hyperparam_names("umds")[1]


def test_fixing_every_searched_one_skips_the_search_partly_narrows_it() -> None:
    det = build_detector("kldivsimk", hyperparam={"K": 5})
    assert det.fixed_hyperparam == [5] and det.K == 5 and det.sweep == {"K_list": [5]}
    odin = build_detector("odin", hyperparam={"temperature": 10})
    assert odin.fixed_hyperparam is None  # noise is still searched
    assert odin.sweep == {"temperature": [10], "noise": [0.0014, 0.0028]}
    assert odin.candidates() == [[10, 0.0014], [10, 0.0028]]
    both = build_detector("odin", hyperparam={"temperature": 10, "noise": 0.0})
    assert both.fixed_hyperparam == [10, 0.0]
    umds = build_detector("umds", hyperparam={"seed": 7})  # a constructor argument that is not searched
    assert umds.seed == 7 and umds.fixed_hyperparam is None
    assert build_detector("kldivsimk").fixed_hyperparam is None  # nothing fixed: the config's search


def test_unknown_names_and_rejected_values_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"no hyper-parameter 'k' in kldivsimk: searched K; constructor K, train_"):
        build_detector("kldivsimk", hyperparam={"k": 5})
    with pytest.raises(ValueError, match=r"kldivsimk.*rejects these values.*non-negative integer"):
        build_detector("kldivsimk", hyperparam={"K": -1})
    with pytest.raises(ValueError, match=r"'odin' is not in this study \(msp, mds\)"):
        fixed_hyperparams({"odin.temperature": 1}, ["msp", "mds"])
    with pytest.raises(ValueError, match=r"no hyper-parameter 'K' in msp: searched \(none\); constructor \(none\)"):
        fixed_hyperparams({"K": 5}, ["msp"])
    # unqualified: every detector of the study that has it; qualified: that one only
    assert fixed_hyperparams({"K": 5}, ["msp", "edsimk", "kldivsimk"]) == {
        "msp": {},
        "edsimk": {"K": 5},
        "kldivsimk": {"K": 5},
    }
    assert fixed_hyperparams({"edsimk.K": 3}, ["edsimk", "kldivsimk"]) == {"edsimk": {"K": 3}, "kldivsimk": {}}


def test_script_parses_repeatable_yaml_values() -> None:
    assert hyperparam_arg("K=50") == ("K", 50)
    assert hyperparam_arg("gram.powers=[1, 2]") == ("gram.powers", [1, 2])
    assert hyperparam_arg("noise=0.0014") == ("noise", 0.0014)
    with pytest.raises(argparse.ArgumentTypeError, match="is not NAME=VALUE"):
        hyperparam_arg("K")
    common = ["--runs-dir", "r", "--in-dataset", "demo", "--data-root-dir", "d", "--output-dir", "o"]
    args = parse_args(
        [*common, "--postprocessor-name", "odin", "--hyperparam", "temperature=10", "--hyperparam", "noise=0"]
    )
    assert dict(args.hyperparam) == {"temperature": 10, "noise": 0}
    assert parse_args([*common, "--postprocessor-name", "msp"]).hyperparam == []


def study(name: str, hyperparam: dict[str, Any] | None = None) -> evaluator.StudyResult:
    net = tiny_network("ssl_bayes_h", seed=3)
    protocol = InMemoryProtocol(SMALL)
    det = build_detector(name, hyperparam=hyperparam)
    store = FeatureStore.for_detectors(net, protocol, [det], seed=0)
    return evaluate(net, det, protocol, features=store)  # type: ignore[arg-type]


def test_fixed_values_are_used_without_a_search(monkeypatch: pytest.MonkeyPatch) -> None:
    searched = study("kldivsimk")
    assert searched.hyperparam == [10]  # the only candidate below the 24 training points

    def no_search(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the search ran although every hyper-parameter was fixed")

    monkeypatch.setattr(evaluator, "hyperparameter_search", no_search)
    fixed = study("kldivsimk", {"K": 3})
    assert fixed.hyperparam == [3]
    # the same scores as the detector built with K = 3 in its config and no sweep
    net = tiny_network("ssl_bayes_h", seed=3)
    protocol = InMemoryProtocol(SMALL)
    det = build_detector("kldivsimk")
    det.sweep, det.K = {}, 3
    plain = evaluate(net, det, protocol, features=FeatureStore.for_detectors(net, protocol, [det], seed=0))  # type: ignore[arg-type]
    np.testing.assert_array_equal(fixed.scores["id"], plain.scores["id"])
    assert fixed.rows == plain.rows


def test_scores_file_recomputes_every_metric_row(tmp_path: Path) -> None:
    result = study("msp")
    path = tmp_path / "scores" / "run.npz"
    save_scores(path, result.scores)
    with np.load(path, allow_pickle=False) as f:
        s = {k: f[k] for k in f.files}
    assert set(s) == {
        "id", "id_pred", "id_label", "ood_sets", "ood_groups",
        "shifted", "shifted_pred", "shifted_label", "noise", "noise_pred", "noise_label",
    }  # fmt: skip
    assert list(s["ood_sets"]) == ["shifted", "noise"] and list(s["ood_groups"]) == ["near", "far"]
    assert len(s["id"]) == len(s["id_pred"]) == len(s["id_label"]) == SMALL["id/test"]
    assert len(s["noise"]) == len(s["noise_pred"]) == SMALL["ood/far/noise"] and (s["noise_label"] == -1).all()
    np.testing.assert_array_equal(s["id_label"], np.arange(SMALL["id/test"]) % 4)
    rows = {r["Dataset"]: r for r in result.rows}
    for name in s["ood_sets"]:
        conf = np.concatenate([s["id"], s[name]])
        label = np.concatenate([s["id_label"], -np.ones(len(s[name]), dtype=np.int64)])
        pred = np.concatenate([s["id_pred"], s[f"{name}_pred"]])
        recomputed = dict(zip(METRIC_NAMES, (100 * v for v in compute_all_metrics(conf, label, pred))))
        for metric in ("FPR@95", "AUROC", "AUPR_IN", "AUPR_OUT"):
            assert rows[str(name)][metric] == pytest.approx(recomputed[metric], abs=1e-12), (name, metric)
    # msp predicts the argmax of the logits: the ACC column is the accuracy of id_pred
    assert rows["farood"]["ACC"] == pytest.approx(100 * (s["id_pred"] == s["id_label"]).mean())


def test_a_fixed_value_that_does_not_fit_the_data() -> None:
    with pytest.raises(
        ValueError, match=r"kldivsimk: the fixed hyper-parameters \[24\] \(--hyperparam\) do not fit.*24"
    ):
        study("kldivsimk", {"K": 24})  # 24 training posteriors: K is a 0-based index
