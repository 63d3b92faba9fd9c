"""Pre-embedding (src/downstream/embed.py and its CLI) on the real dataset formats with pretrained demo runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from src.data.datamodule.transfer_learning import get_transfer_learning_datamodule
from src.data.dataset.embeddings import load_embeddings
from src.downstream.embed import pre_embed
from src.experiments.scripts.pre_embed_datasets import main as pre_embed_main
from src.experiments.scripts.pre_embed_datasets import parse_args
from src.task.checkpoint import load_ssl_model
from src.task.evaluation import load_pretrained_baseline
from tests.downstream.conftest import probe_config

SSL = "data/results/imagenet/ssl"
# pre-embedding runs on the GPU when there is one, with cuDNN's TF32 convolutions allowed (D-Q35)
ATOL = 2e-2 if torch.cuda.is_available() else 1e-4

# dataset -> (dataset dir under datasets_root, official splits, split sizes)
LAYOUTS = {
    "SUN397": ("", ("train", "test"), (6, 6)),
    "flowers-102": ("", ("train", "val"), (6, 6)),
    "imagenet": ("imagenet", ("train", "val"), (9, 6)),
}


@pytest.mark.parametrize("dataset", sorted(LAYOUTS))
def test_pre_embed_with_a_trained_ssl_run(dataset: str, datasets_root: Path, runs_root: Path, tmp_path: Path) -> None:
    """Raw backbone features [N, 512] of every official split; labels paired; nothing recomputed on rerun."""
    sub, splits, sizes = LAYOUTS[dataset]
    run = runs_root / SSL / "ssl_barlow_twins"
    config = probe_config(tmp_path / f"{dataset}.yaml", dataset, datasets_root / sub, tmp_path / "lp")
    target = tmp_path / "embeddings" / dataset / run.name
    pre_embed_main(["--experiment-dir", str(run), "--config-path", str(config), "--target-dir", str(target)])
    assert sorted(p.name for p in target.iterdir()) == sorted(f"{s}.pt" for s in splits)

    dm = get_transfer_learning_datamodule(datasets_root / sub, dataset, batch_size=4, image_size=8)
    dm.setup()
    model = load_ssl_model(run / "checkpoints" / "model.ckpt", "ssl").eval()
    for split, n in zip(splits, sizes, strict=True):
        raw = torch.load(target / f"{split}.pt", weights_only=True)
        reps, labels = raw["reps"], raw["labels"]
        assert reps.shape == (n, 512) and reps.dtype == torch.float32 and labels.dtype == torch.int64
        ds = getattr(dm, f"{split}_ds")
        assert sorted(labels.tolist()) == sorted(int(t) for t in ds.targets)
        # unnormalised backbone features, each row paired with its own label (train rows are shuffled)
        with torch.no_grad():
            expected = model(torch.stack([ds[i][0] for i in range(n)]))
        for row, label in zip(reps, labels, strict=True):
            distances = (expected - row).abs().amax(dim=1)
            i = int(distances.argmin())
            assert distances[i] < ATOL * (1 + expected[i].abs().max()) and int(ds.targets[i]) == int(label)
        assert not torch.allclose(reps.norm(dim=1), torch.ones(n))

    stamps = {p.name: p.stat().st_mtime_ns for p in target.iterdir()}
    pre_embed(config, target, experiment_dir=run)
    assert {p.name: p.stat().st_mtime_ns for p in target.iterdir()} == stamps


def test_bayes_h_stores_mc_samples_and_bayes_z_the_backbone(
    datasets_root: Path, runs_root: Path, tmp_path: Path
) -> None:
    config = probe_config(tmp_path / "flowers-102.yaml", "flowers-102", datasets_root, tmp_path / "lp")

    h_run = runs_root / SSL / "ssl_bayes_h_barlow_beta_0.001"
    pre_embed(config, tmp_path / "h", experiment_dir=h_run)
    reps = load_embeddings(tmp_path / "h" / "val.pt").tensors[0]
    assert reps.shape == (6, 3, 512)  # train.mc_samples = 3 samples of h per image
    assert (reps.std(dim=1) > 0).all(dim=1).all()  # distinct samples, not the mean repeated

    # Bayes-Z: the MC count is forced to 1 (D-Q11); the stored rows are the deterministic backbone features
    z_run = runs_root / SSL / "ssl_bayes_z_barlow_beta_0.01"
    pre_embed(config, tmp_path / "z", experiment_dir=z_run)
    reps = load_embeddings(tmp_path / "z" / "val.pt").tensors[0]
    assert reps.shape == (6, 512)
    dm = get_transfer_learning_datamodule(datasets_root, "flowers-102", batch_size=4, image_size=8)
    dm.setup()
    model = load_ssl_model(z_run / "checkpoints" / "model.ckpt", "ssl_bayes_z").eval()
    with torch.no_grad():
        expected = model(torch.stack([dm.val_ds[i][0] for i in range(6)]))  # type: ignore[index]
    assert torch.allclose(reps, expected, atol=ATOL, rtol=ATOL)  # val is not shuffled


def test_cli_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = probe_config(tmp_path / "SUN397.yaml", "SUN397", tmp_path / "nowhere", tmp_path / "lp")
    with pytest.raises(SystemExit):
        parse_args(["--config-path", str(config), "--target-dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        parse_args(
            ["--experiment-dir", "a", "--pre-trained-model", "resnet-18", "--config-path", "c", "--target-dir", "t"]
        )
    with pytest.raises(FileNotFoundError, match=r"hydra_config\.yaml"):
        pre_embed(config, tmp_path / "out", experiment_dir=tmp_path / "no_run")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match=r"resnet-18 weights .* torch hub cache"):
        load_pretrained_baseline("resnet-18")
    with pytest.raises(FileNotFoundError, match=r"SUN397 not found.*ClassName\.txt"):
        pre_embed(config, tmp_path / "out", pre_trained_model="resnet-18")
