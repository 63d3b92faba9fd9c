"""The linear probe: formula, frozen encoder, macro accuracy, the evaluate script and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from src.data.dataset.embeddings import save_embeddings
from src.downstream.linear_probe import evaluate, probe_runs
from src.experiments.scripts.evaluate_linear_probing import main as evaluate_main
from src.experiments.scripts.summarize_evaluation import main as summarize_main
from src.task.evaluation import LinearProbingClassifier, PreEmbeddedLinearProbingClassifier
from src.task.semi_supervised import SemiSupervised
from tests.conftest import build_model
from tests.downstream.conftest import probe_config, write_fake_run

OPTIM = {"lr": 1e-2, "weight_decay": 5e-4}


def pre_embedded(num_classes: int = 3, repr_dim: int = 4, norm_repr: bool = True) -> PreEmbeddedLinearProbingClassifier:
    return PreEmbeddedLinearProbingClassifier(
        model_name="ssl",
        model_path=None,
        optim_kwargs=OPTIM,
        max_epochs=2,
        scheduler_kwargs={"milestones": [1], "gamma": 0.1},
        num_classes=num_classes,
        norm_repr=norm_repr,
        repr_dim=repr_dim,
    )


def test_forward_normalises_each_sample_and_averages_logits() -> None:
    """logits = mean_m (W z_m/‖z_m‖ + b), computed per sample with a loop, equals the batched forward."""
    probe = pre_embedded()
    z = torch.randn(5, 3, 4)  # [B, M, D]
    w, b = probe.predictor.linear.weight, probe.predictor.linear.bias
    expected = torch.stack(
        [torch.stack([w @ (z[i, m] / z[i, m].pow(2).sum().sqrt()) + b for m in range(3)]).mean(0) for i in range(5)]
    )
    assert torch.allclose(probe(z), expected, atol=1e-6)
    # linear head: the same as the head applied to the mean of the normalised samples
    zn = z / z.norm(dim=-1, keepdim=True)
    assert torch.allclose(probe(z), probe.predictor(zn.mean(1)), atol=1e-6)
    assert torch.allclose(probe(z[:, 0]), probe.predictor(zn[:, 0]), atol=1e-6)  # [B, D] input
    raw = pre_embedded(norm_repr=False)
    assert torch.allclose(raw(z[:, 0]), raw.predictor(z[:, 0]))
    assert torch.isnan(probe(torch.zeros(1, 4))).all()  # no epsilon (D-Q37)


def test_probe_on_a_bayes_h_checkpoint_uses_the_frozen_mc_samples(tmp_path: Path) -> None:
    run = write_fake_run(tmp_path / "run", "ssl_bayes_h", "mc_barlow_twins", mc_samples=3)
    probe = LinearProbingClassifier(
        "ssl_bayes_h", run / "checkpoints" / "model.ckpt", OPTIM, 2, None, num_classes=8, norm_repr=True
    )
    assert probe.repr_dim == 512  # the model's encoder_out_dim (T-Q22, D-Q12)
    probe.train()
    x = torch.randn(4, 3, 8, 8)
    torch.manual_seed(0)
    reps = probe.forward_repr(x)
    assert reps.shape == (4, 3, 512)
    assert not probe.encoder.training and not any(p.requires_grad for p in probe.encoder.parameters())
    torch.manual_seed(0)
    samples = probe.encoder(x)[1]  # [M, B, D]
    assert torch.equal(reps, samples.transpose(0, 1))
    assert probe(x).shape == (4, 8)
    assert {n for n, p in probe.named_parameters() if p.requires_grad} == {
        "predictor.linear.weight",
        "predictor.linear.bias",
    }


def _macro_micro(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[float, float]:
    recalls = [(pred[y == c] == c).float().mean().item() for c in range(num_classes) if (y == c).any()]
    return sum(recalls) / len(recalls), (pred == y).float().mean().item()


def test_probe_accuracy_is_macro_and_semi_supervised_accuracy_is_micro(tmp_path: Path) -> None:
    """Unbalanced classes: macro (per-class recall mean) and micro accuracy differ; each as the reference (D-Q8)."""
    torch.manual_seed(0)
    y = torch.tensor([0] * 9 + [1] * 3)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)

    probe = pre_embedded(num_classes=2, repr_dim=2, norm_repr=False)
    with torch.no_grad():  # predicts class 0 for every input: recall 1 and 0
        probe.predictor.linear.weight.copy_(torch.tensor([[0.0, 0.0], [0.0, 0.0]]))
        probe.predictor.linear.bias.copy_(torch.tensor([1.0, 0.0]))
    loader = DataLoader(TensorDataset(torch.randn(12, 2), y), batch_size=5)
    result = trainer.test(probe, loader, verbose=False)[0]
    macro, micro = _macro_micro(torch.zeros(12, dtype=torch.long), y, 2)
    assert (macro, micro) == (0.5, 0.75)
    assert result["test/accuracy"] == pytest.approx(macro)
    assert set(result) == {"test/accuracy", "test/ece"}

    ssl = build_model("ssl", "barlow_twins", dataset="demo", num_classes=2)
    semi = SemiSupervised(
        pl_module=ssl,
        num_classes=2,
        learning_rate=1e-4,
        optimizer={"lr": 1e-4, "lr_linear": 1e-3, "weight_decay": 1e-5, "name": "adamw"},
        scheduler="cosine",
        scheduler_kwargs={"sch_eta_min_scale": 0.1},
    )
    with torch.no_grad():
        semi.predictor.weight.zero_()
        semi.predictor.bias.copy_(torch.tensor([1.0, 0.0]))
    images = DataLoader(TensorDataset(torch.randn(12, 3, 8, 8), y), batch_size=6)
    result = trainer.test(semi, images, verbose=False)[0]
    assert result["test_accuracy"] == pytest.approx(micro)
    assert result["test_accuracy_at_5"] == pytest.approx(1.0)  # top-2 of 2 classes
    assert {"test_loss", "test_accuracy", "test_accuracy_at_5", "test_ece"} == set(result)


def _clusters(n: int, num_classes: int, dim: int, mc: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Separable Gaussian clusters (same centres for every seed) as [n, mc, dim] MC samples."""
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(123)) * 3
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % num_classes
    z = centres[y][:, None, :] + torch.randn(n, mc, dim, generator=g)
    return z, y


def test_evaluate_and_summarize_on_separable_embeddings(tmp_path: Path) -> None:
    """The DVC path (pre-embedded, --test-mode): well above chance, the probe's output files, no recomputation."""
    run = write_fake_run(tmp_path / "runs" / "ssl_bayes_h_barlow_beta_0.001", "ssl_bayes_h", "mc_barlow_twins")
    emb = tmp_path / "embeddings" / "flowers-102" / run.name
    save_embeddings(emb / "train.pt", *_clusters(100, 5, 512, 3, seed=0))
    save_embeddings(emb / "val.pt", *_clusters(50, 5, 512, 3, seed=1))
    config = probe_config(
        tmp_path / "flowers-102.yaml",
        "flowers-102",
        tmp_path,
        tmp_path / "linear_probing",
        max_epochs=3,
        batch_size=16,
        scheduler_kwargs={"milestones": [2], "gamma": 0.1},
    )
    argv = [
        "--backbone-experiment-dir",
        str(run),
        "--config-path",
        str(config),
        "--pre-embedded-root-dir",
        str(emb),
        "--test-mode",
    ]
    evaluate_main(argv)
    version = tmp_path / "linear_probing" / run.name / "flowers-102" / "lightning_logs" / "version_0"
    metrics = json.loads((version / "metrics.json").read_text())
    assert set(metrics) == {"test/accuracy", "test/ece"}
    assert metrics["test/accuracy"] > 0.9  # 5 classes: chance is 0.2
    assert 0.0 <= metrics["test/ece"] <= 1.0
    assert [p.name for p in (version / "checkpoints").iterdir()] == ["epoch=2-step=21.ckpt"]  # 3 x ceil(100/16)
    assert (version / "hparams.yaml").is_file() and any(version.glob("events.out.tfevents.*"))
    ckpt = torch.load(version / "checkpoints" / "epoch=2-step=21.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["norm_repr"] is True and ckpt["hyper_parameters"]["repr_dim"] == 512

    stamp = (version / "metrics.json").stat().st_mtime_ns
    evaluate_main(argv)  # finished: nothing is recomputed
    assert (version / "metrics.json").stat().st_mtime_ns == stamp
    assert [p.name for p in version.parent.iterdir()] == ["version_0"]

    with pytest.raises(ValueError, match=r"must end in <dataset>/<model>"):
        evaluate(config, backbone_experiment_dir=run, pre_embedded_root_dir=tmp_path / "embeddings" / "x" / run.name)

    summarize_main(["--root-dir", str(tmp_path / "linear_probing")])
    reports = tmp_path / "reports"
    frame = pd.read_csv(reports / "linear_probing_report.csv")
    assert list(frame.columns) == ["dataset", "model_id", "model_name", "epoch", "test/accuracy", "test/ece"]
    assert frame.iloc[0].tolist()[:4] == ["flowers-102", run.name, run.name, 2]
    assert (reports / "linear_probing_report.md").read_text().startswith("| dataset")
    assert "\\toprule" in (reports / "linear_probing_report.tex").read_text()


def test_non_test_mode_validates_on_a_stratified_split_and_tests_the_best_epoch(tmp_path: Path) -> None:
    run = write_fake_run(tmp_path / "runs" / "ssl", "ssl", "barlow_twins")
    emb = tmp_path / "embeddings" / "SUN397" / "ssl"
    z, y = _clusters(60, 3, 512, 1, seed=0)
    save_embeddings(emb / "train.pt", z[:, 0], y)
    z_test, y_test = _clusters(30, 3, 512, 1, seed=1)
    save_embeddings(emb / "test.pt", z_test[:, 0], y_test)
    config = probe_config(tmp_path / "SUN397.yaml", "SUN397", tmp_path, tmp_path / "lp", batch_size=16)
    metrics = evaluate(config, backbone_experiment_dir=run, pre_embedded_root_dir=emb, test_mode=False)
    assert metrics["test/accuracy"] > 0.9
    version = tmp_path / "lp" / "ssl" / "SUN397" / "lightning_logs" / "version_0"
    (ckpt,) = (version / "checkpoints").iterdir()
    assert ckpt.name.startswith("epoch=")
    saved = torch.load(ckpt, weights_only=True)
    # the checkpoint callback monitors val/accuracy (its state key names the monitor)
    assert any("'monitor': 'val/accuracy'" in key for key in saved["callbacks"]), list(saved["callbacks"])


def test_probe_on_images_works_for_datasets_without_a_test_split(
    datasets_root: Path, demo_root: Path, tmp_path: Path
) -> None:
    """Path B (no --pre-embedded-root-dir): Flowers-102 has no test split, the demo none to swap (D-Q32 fixed)."""
    run = write_fake_run(tmp_path / "runs" / "ssl", "ssl", "barlow_twins")
    flowers = probe_config(tmp_path / "flowers-102.yaml", "flowers-102", datasets_root, tmp_path / "lp", max_epochs=1)
    stale = tmp_path / "lp" / "ssl" / "flowers-102" / "lightning_logs" / "version_0"
    stale.mkdir(parents=True)  # left by an interrupted run: removed, so the finished run is version_0
    metrics = evaluate(flowers, backbone_experiment_dir=run, test_mode=True)
    assert set(metrics) == {"test/accuracy", "test/ece"}
    assert (stale / "metrics.json").is_file() and [p.name for p in stale.parent.iterdir()] == ["version_0"]
    ckpt = torch.load(next((stale / "checkpoints").iterdir()), weights_only=True)
    assert any(k.startswith("encoder.encoder.") for k in ckpt["state_dict"])  # the frozen SSL module

    demo = probe_config(tmp_path / "demo.yaml", "demo", demo_root, tmp_path / "lp", max_epochs=1, batch_size=64)
    metrics = evaluate(demo, backbone_experiment_dir=run, test_mode=False)
    assert 0.0 <= metrics["test/accuracy"] <= 1.0


def test_probe_runs_embeds_and_probes_every_finished_run(runs_root: Path, demo_root: Path, tmp_path: Path) -> None:
    """The demo chain: each finished run is pre-embedded (Bayes-H keeps its MC samples) and probed in test mode."""
    runs_dir = runs_root / "data/results/imagenet/ssl"
    (runs_dir.parent / "unfinished").mkdir(exist_ok=True)  # no results.json: not a run of runs_dir anyway
    config = probe_config(tmp_path / "demo.yaml", "demo", demo_root, tmp_path / "lp", max_epochs=1, batch_size=256)
    emb = tmp_path / "embeddings" / "demo"  # <dataset>/<model> below it, as the probe checks
    metrics = probe_runs(runs_dir, config, emb)
    assert sorted(metrics) == sorted(p.name for p in runs_dir.iterdir() if (p / "results.json").is_file())
    assert len(metrics) == 3 and all(set(m) == {"test/accuracy", "test/ece"} for m in metrics.values())
    shapes = {run: torch.load(emb / run / "test.pt", weights_only=True)["reps"].shape[1:] for run in metrics}
    assert shapes["ssl_barlow_twins"] == (512,) and shapes["ssl_bayes_z_barlow_beta_0.01"] == (512,)
    assert shapes["ssl_bayes_h_barlow_beta_0.001"] == (3, 512)  # the run's train.mc_samples
    for run, values in metrics.items():
        version = tmp_path / "lp" / run / "demo" / "lightning_logs" / "version_0"
        assert json.loads((version / "metrics.json").read_text()) == values
        (ckpt,) = (version / "checkpoints").iterdir()
        assert ckpt.name.startswith("epoch=0-")  # test mode: the last epoch
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert probe_runs(runs_dir, config, emb) == metrics  # finished: nothing is recomputed
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == stamps
