"""Smoke test of the benchmarks at ``--size tiny`` on the CPU: they run, write the expected JSON,
and their equivalence checks hold. Speed is never asserted (timings belong to the benchmarks)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks import epoch_throughput, ood_detectors, run_all, train_step

ENV_KEYS = {"device_type", "device_name", "cpu_count", "torch_version", "date"}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch/BLAS thread (fast and predictable on a shared machine), restored afterwards."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpoolctl.threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(previous)


def run(module: Any, tmp_path: Path, *extra: str) -> dict[str, Any]:
    """``module.main`` at tiny size on the CPU; the JSON it wrote, checked against its return value."""
    out = tmp_path / f"{module.NAME}.json"
    returned = module.main(["--device", "cpu", "--size", "tiny", "--output", str(out), *extra])
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(returned))
    assert written["benchmark"] == module.NAME and written["size"] == "tiny"
    assert ENV_KEYS <= set(written["environment"]) and written["environment"]["device_type"] == "cpu"
    assert written["sizes"]
    return written


def test_train_step(tmp_path: Path) -> None:
    # every model and both losses; the remaining combinations run the same code paths
    cases = ["ssl+barlow_twins", "ssl_bayes_h+mc_vicreg", "ssl_bayes_z+mc_barlow_twins"]
    result = run(train_step, tmp_path, "--cases", *cases)
    assert [c["case"] for c in result["cases"]] == cases
    assert result["all_equivalent"] is True
    for case in result["cases"]:
        eq = case["equivalence"]
        assert eq["ok"] and not eq["missing_terms"]
        assert eq["max_abs_diff"] <= 1e-4 * max(abs(eq["loss_value"]), 1.0)
        assert eq["grad_max_rel_diff"] <= 1e-4
        for path in ("project", "reference"):
            assert case[path]["samples_per_s"] > 0
            assert {"median_s", "min_s", "max_s", "repeats_s"} <= set(case[path]["step_time"])
            assert case[path]["memory"]["delta_bytes"] is not None
        assert case["ratio"] > 0
        assert "ratio_vs_deterministic" in case


@pytest.mark.slow  # DataLoader worker processes
def test_epoch_throughput(tmp_path: Path) -> None:
    result = run(epoch_throughput, tmp_path)
    assert [r["workers"] for r in result["loader"]] == [0, epoch_throughput.SIZES["tiny"].workers]
    assert all(r["images_per_s"] > 0 for r in result["loader"])
    assert {(r["data_path"], r["model"]) for r in result["training"]} == {
        ("cpu", "ssl_bayes_h"),
        ("cpu", "ssl_bayes_z"),
        ("device", "ssl_bayes_h"),
        ("device", "ssl_bayes_z"),
    }
    for r in result["training"]:
        assert r["samples_per_s"] > 0 and r["ratio"] > 0
        if r["data_path"] == "cpu":
            assert r["ratio"] == pytest.approx(1.0)
        assert r["timed_samples"] == (r["steps"] - r["warmup_steps"]) * result["sizes"]["batch_size"]
    assert set(result["data_paths"]) == {"cpu", "device"} and result["device_augmentation_arg"] == "augment_on_device"


def test_ood_detectors(tmp_path: Path) -> None:
    result = run(ood_detectors, tmp_path)
    assert [c["detector"] for c in result["cases"]] == list(ood_detectors.DETECTORS)
    assert result["all_agree"] is True
    for case in result["cases"]:
        assert case["max_rel_diff"] <= 1e-4
        assert case["ratio"] > 0 and case["per_sample"]["points_timed"] > 0
        assert {"batched", "batched_200", "per_sample"} <= set(case)
    for case in result["cases"][2:]:
        assert case["setup"]["project_fit_s"] > 0 and case["setup"]["fit_precision_max_rel_diff"] < 1e-3


def test_run_all_combines(tmp_path: Path) -> None:
    combined = run_all.main(
        ["--device", "cpu", "--size", "tiny", "--output-dir", str(tmp_path), "--only", ood_detectors.NAME]
    )
    written = json.loads((tmp_path / "all-cpu.json").read_text())
    assert set(written["results"]) == {ood_detectors.NAME} == set(combined["results"])
    assert (tmp_path / f"{ood_detectors.NAME}-cpu.json").is_file()
    assert "## ood_detectors" in run_all.combined_markdown(combined["results"], combined["environment"], "tiny")


def test_augment_kornia(tmp_path: Path) -> None:
    """kornia is not a dependency (the benchmark documents why): runs only where it is installed."""
    pytest.importorskip("kornia")
    from benchmarks import augment_kornia

    result = run(augment_kornia, tmp_path)
    timing = result["timing"]
    assert result["kornia_over_project"] == pytest.approx(timing["kornia"]["median_s"] / timing["project"]["median_s"])
    # the hand-written path reads nothing back on the host; kornia's per-sample crop does
    assert timing["project"]["host_reads"] == 0 and timing["kornia"]["host_reads"] > 0
    assert timing["kornia"]["aten_ops"] > timing["project"]["aten_ops"] > 0
    stats = result["statistics"]
    assert stats["n_views"] == 16 * 2
    for path in ("project", "kornia"):
        for view in ("view1", "view2"):
            assert set(stats[path][view]["vs_cpu"]) == {"max_abs_mean_diff", "max_abs_std_diff", "abs_gray_rate_diff"}
            assert len(stats[path][view]["channel_mean"]) == 3
