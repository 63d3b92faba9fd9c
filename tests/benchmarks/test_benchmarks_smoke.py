"""Smoke test of the benchmarks at ``--size tiny`` on the CPU: they run, write the expected JSON,
and their equivalence checks hold. Speed is never asserted (timings belong to the benchmarks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks import ood_detectors, pipeline_throughput, plain_config, projections, run_all, train_step

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


def test_pipeline(tmp_path: Path) -> None:
    """The pipeline's Trainer on both data paths and the reference-style run; Bayes-Z and VICReg run the
    same code (the full matrix is the small/full sizes')."""
    result = run(
        pipeline_throughput,
        tmp_path,
        "--models",
        "ssl",
        "ssl_bayes_h",
        "--losses",
        "barlow_twins",
        "--progress",
        "none",
    )
    size = pipeline_throughput.SIZES["tiny"]
    runs = {(c["case"], c["data_path"], c["style"]) for c in result["cases"]}
    assert runs == {
        ("ssl+barlow_twins", "pil", "project"),
        ("ssl+barlow_twins", "device", "project"),
        ("ssl+barlow_twins", "pil", "reference"),
        ("ssl_bayes_h+mc_barlow_twins", "pil", "project"),
        ("ssl_bayes_h+mc_barlow_twins", "device", "project"),
        ("ssl_bayes_h+mc_barlow_twins", "pil", "reference"),
    }
    for c in result["cases"]:
        # the pipeline's own callbacks and logger ran
        assert {"OnlineFineTuner", "NonFiniteLossGuard", "ModelCheckpoint", "EarlyStopping"} <= set(c["callbacks"])
        assert c["loggers"] == ["CSVLogger"]
        assert c["augment_on_device"] == (c["data_path"] == "device")
        assert c["e2e_samples_per_s"] == pytest.approx(size.e2e_steps * size.batch_size / c["e2e_s"])
        assert c["step_samples_per_s"] == pytest.approx(size.batch_size / c["step_s"]["median_s"])
        # on CPU the steps after the end-to-end window are timed one by one (no profiled steps)
        assert len(c["step_s"]["repeats_s"]) == size.sync_steps + size.step_steps
        assert c["val_samples_per_s"] > 0 and c["syncs"] == "n/a"
        assert c["memory"]["kind"].startswith("cpu_") and c["memory"]["peak_bytes"] > 0
        assert c["first_step_terms"]["loss"] > 0
        det = next(
            d
            for d in result["cases"]
            if d["model"] == "ssl" and d["data_path"] == c["data_path"] and d["style"] == c["style"]
        )
        assert c["e2e_vs_deterministic"] == pytest.approx(c["e2e_samples_per_s"] / det["e2e_samples_per_s"])
        ref = next(r for r in result["cases"] if r["style"] == "reference" and r["case"] == c["case"])
        assert c["step_vs_reference"] == pytest.approx(c["step_samples_per_s"] / ref["step_samples_per_s"])
    # the project's step and the reference-style step agree on the first batch (same weights, batch and noise)
    assert result["all_equivalent"] is True and len(result["first_step_check"]) == 2
    for check in result["first_step_check"]:
        assert check["same_first_batch"] and not check["missing_terms"]
        assert check["max_abs_diff"] <= 1e-4 * max(abs(check["loss"]), 1.0)
    bayes = next(k for k in result["first_step_check"] if k["case"].startswith("ssl_bayes_h"))
    assert {"cl_loss", "kl_prior_loss", "weighted_kl_prior_loss", "loss"} <= set(bayes["terms"])
    assert result["reference_style"]["overrides"] == pipeline_throughput.REFERENCE_STYLE
    grid = result["projections"]
    assert grid["grid_runs"] == 180 and grid["pretrain_epochs"] == 200
    # only Bayes-H + Barlow Twins ran: the grid's 54 runs of that case are priced, the rest reported missing
    for block in grid["by_data_path"].values():
        assert block["ablation_runs_priced"] == 54 and sum(block["ablation_runs_missing"].values()) == 126
        assert block["ablation_grid_gpu_days"] > 0


def test_reference_style_overrides_are_config_keys() -> None:
    """Every reference-style switch is a key of the composed config (a renamed key fails here, not on a GPU)."""
    for model, loss in pipeline_throughput.COMBINATIONS:
        cfg = plain_config.compose(model, loss, pipeline_throughput.REFERENCE_STYLE)
        assert cfg["dataset"]["augment_on_device"] is False and cfg["train"]["channels_last"] is False
    with pytest.raises(KeyError, match="not in the config"):
        plain_config.compose("ssl", "barlow_twins", {"train.callbacks.online_finetuner.no_such_switch": False})


def test_count_syncs() -> None:
    counts = {"cudaStreamSynchronize": 6, "cudaMemcpyAsync": 9, "cudaDeviceSynchronize": 0, "aten::mm": 40}
    syncs = pipeline_throughput.count_syncs(counts, steps=3)
    assert syncs["per_step"] == 2.0 and syncs["events"]["cudaStreamSynchronize"] == 6
    assert syncs["cudaMemcpyAsync"] == 9 and pipeline_throughput.count_syncs({}, 3)["per_step"] == 0.0


def test_profiler_counts() -> None:
    """The event counts the sync count reads, from a real profiler run (CPU ops here; CUDA runtime calls on a GPU)."""
    from torch.profiler import ProfilerActivity, profile

    a = torch.ones(4, 4)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            a = a @ a
    assert pipeline_throughput.profiler_counts(prof)["aten::mm"] == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pipeline_cuda(tmp_path: Path) -> None:
    """On a GPU: syncs per step come from the profiler, memory from the CUDA allocator."""
    out = tmp_path / "pipeline.json"
    result = pipeline_throughput.main(
        [
            "--device",
            "cuda",
            "--size",
            "tiny",
            "--output",
            str(out),
            "--models",
            "ssl_bayes_h",
            "--losses",
            "vicreg",
            "--progress",
            "none",
        ]
    )
    assert result["all_equivalent"] is True
    for case in result["cases"]:
        assert case["memory"]["kind"] == "cuda_max_memory_allocated" and case["memory"]["peak_bytes"] > 0
        assert case["syncs"]["steps"] == pipeline_throughput.SIZES["tiny"].sync_steps
        assert case["syncs"]["per_step"] >= 0
        assert len(case["step_s"]["repeats_s"]) == pipeline_throughput.SIZES["tiny"].step_steps


def test_projections_arithmetic() -> None:
    runs = projections.ablation_runs()
    assert len(runs) == 180
    assert sum(r["mc_samples"] == 36 for r in runs) == 36
    assert {(r["model"], r["loss"]) for r in runs} == {
        ("ssl_bayes_h", "mc_barlow_twins"),
        ("ssl_bayes_z", "mc_barlow_twins"),
        ("ssl_bayes_h", "mc_vicreg"),
        ("ssl_bayes_z", "mc_vicreg"),
    }
    # 40,000 training images at 4,000/s and 10,000 validation images at 10,000/s: 11 s an epoch
    assert projections.epoch_seconds(4000.0, 10000.0) == pytest.approx(11.0)
    epoch_s = {f"{m}+{lo}": 10.0 for m, lo in {(r["model"], r["loss"]) for r in runs}}
    grid = projections.ablation_gpu_days(runs, epoch_s, pretrain_epochs=200, finetune_epochs=50, finetune_epoch_s=2.0)
    assert grid["gpu_days"] == pytest.approx(180 * (200 * 10.0 + 50 * 2.0) / 86400)
    assert projections.ood_study_gpu_hours(180, 10000.0, images_per_run=200000) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("model", "loss"), [("ssl", "vicreg"), ("ssl_bayes_h", "mc_barlow_twins"), ("ssl_bayes_z", "mc_vicreg")]
)
def test_plain_config_equals_hydra(model: str, loss: str) -> None:
    """The Hydra-free composition of the benchmarks is the pipeline's Hydra composition."""
    hydra = pytest.importorskip("hydra")
    from src.utils.plain import to_plain

    overrides = {"dataset.batch_size": 32, "model.backbone.z_dim": 64, "train.scheduler": None}
    with hydra.initialize_config_dir(version_base=None, config_dir=str(plain_config.CONF_DIR)):
        cfg = hydra.compose(
            config_name="config",
            overrides=[f"+model/task/ssl@train={model}", f"model/loss={loss}"]
            + [f"{k}={'null' if v is None else v}" for k, v in overrides.items()],
        )
    expected = to_plain(cfg)
    expected.pop("hydra", None)
    assert plain_config.compose(model, loss, overrides) == expected


BLOCKER = """
import sys


class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("omegaconf", "hydra", "dvc", "kornia"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _Blocked())
"""


@pytest.mark.slow  # a fresh interpreter importing torch and Lightning, and one short pipeline run
def test_run_all_without_hydra_omegaconf_dvc(tmp_path: Path) -> None:
    """The device machine has no Hydra, OmegaConf, DVC or kornia: every benchmark of run_all imports and runs."""
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    repo = Path(__file__).resolve().parents[2]
    script = (
        "import importlib, sys\n"
        "from benchmarks import run_all\n"
        "for name in ('omegaconf', 'hydra', 'dvc'):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError:\n"
        "        continue\n"
        "    sys.exit(f'{name} was importable: the blocker did not work')\n"
        "print('loaded', *sorted(run_all.load_benchmark(n).NAME for n in run_all.BENCHMARKS))\n"
        f"run_all.main(['--device', 'cpu', '--size', 'tiny', '--threads', '1', '--output-dir', {str(tmp_path)!r},"
        " '--only', 'ood_detectors'])\n"
        "from benchmarks import pipeline_throughput\n"
        f"pipeline_throughput.main(['--device', 'cpu', '--size', 'tiny', '--threads', '1', '--output', "
        f"{str(tmp_path / 'pipeline.json')!r}, '--models', 'ssl_bayes_z', '--losses', 'vicreg', '--data-paths', "
        "'pil', '--no-reference', '--progress', 'none'])\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(repo)])}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=repo, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "loaded ood_detectors pipeline train_step" in proc.stdout
    assert json.loads((tmp_path / "all-cpu.json").read_text())["results"]["ood_detectors"]["all_agree"] is True
    result = json.loads((tmp_path / "pipeline.json").read_text())
    assert [c["case"] for c in result["cases"]] == ["ssl_bayes_z+mc_vicreg"]
    assert result["cases"][0]["e2e_samples_per_s"] > 0


def test_run_all_skips_a_benchmark_that_cannot_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(run_all.BENCHMARKS, "needs_missing", "no_such_benchmark_module")
    combined = run_all.main(
        ["--device", "cpu", "--size", "tiny", "--output-dir", str(tmp_path), "--only", "needs_missing"]
    )
    assert combined["results"] == {} and "no_such_benchmark_module" in combined["skipped"]["needs_missing"]
    assert "skipped needs_missing" in capsys.readouterr().err


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
