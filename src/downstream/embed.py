"""Embed a transfer dataset with a frozen pretrained backbone (``pre_embed_datasets.py``).

The DVC stage command:

    python src/experiments/scripts/pre_embed_datasets.py \\
        --experiment-dir data/results/imagenet/ssl/<model> \\
        --config-path src/experiments/conf/linear_probing/<dataset>.yaml \\
        --target-dir data/embeddings/<dataset>/<model>

writes ``<target-dir>/<split>.pt`` for each official split of the dataset (SUN397: train, test;
flowers-102 and imagenet: train, val; demo: train, val, test), each the dict
``{"reps": float32 [N, D] | [N, M, D], "labels": int64 [N]}`` (see
``src/data/dataset/embeddings.py``; the reference pickled a ``TensorDataset``, which does not load
with ``weights_only=True``).

What is stored, per model (D-Q10, D-Q11):

- ``ssl``, ``ssl_bayes_z``: the backbone features [N, E] (Bayes-Z's stochasticity lives in the
  projector, never called here; its MC count is forced to 1);
- ``ssl_bayes_h``: the M = ``train.mc_samples`` (12) reparameterised samples of h [N, M, E],
  drawn once under ``seed_everything(config.seed)``; not their mean, not μ;
- ``--pre-trained-model resnet-18|resnet-50``: the torchvision features [N, 512|2048].

The raw features are stored: the probe normalises them (``norm_repr``). The train loader
shuffles (D-Q14), so train rows are in random order, paired with their labels. Rows are streamed
to a disk-backed buffer and the final file is renamed into place, so memory stays bounded and
an interrupted run leaves no file behind. A split whose file exists is not embedded again.

Precision (D-Q35): fp32, no autocast, TF32 matmuls off (``highest``), cuDNN convolutions with
TF32 allowed — PyTorch's defaults at the reference's version, set explicitly.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from src.data.datamodule.transfer_learning import TRANSFER_DATAMODULES, get_transfer_learning_datamodule
from src.data.dataset.embeddings import EmbeddingWriter
from src.downstream.inputs import load_probe_config, num_workers_from_env, run_model_info
from src.task.evaluation import PRETRAINED_BASELINES, LinearProbingClassifier

log = logging.getLogger("pre_embed_datasets")

#: progress lines per split
_PROGRESS_LINES = 10


def _embed_split(
    probe: LinearProbingClassifier, loader: Any, path: Path, mc: int, device: torch.device, split: str
) -> None:
    n = len(loader.dataset)
    every = max(1, len(loader) // _PROGRESS_LINES)
    with EmbeddingWriter(path, n) as writer:
        for i, (x, y) in enumerate(loader):
            reps = probe.forward_repr(x.to(device))
            if reps.dim() == 3:  # Bayes-H: [B, M, D]
                if reps.shape[1] != mc:
                    raise ValueError(
                        f"the model draws {reps.shape[1]} MC samples but its run config says train.mc_samples={mc}"
                    )
                if mc == 1:
                    reps = reps.squeeze(1)
            writer.write(reps, y)
            if (i + 1) % every == 0 or i + 1 == len(loader):
                log.info("%s: %d / %d images", split, writer.offset, n)
        writer.commit()


def pre_embed(
    config_path: str | os.PathLike[str],
    target_dir: str | os.PathLike[str],
    experiment_dir: str | os.PathLike[str] | None = None,
    pre_trained_model: str | None = None,
    device: str | None = None,
) -> dict[str, Path]:
    """Embed every official split of the config's dataset into ``target_dir`` (see the module docstring).

    Returns:
        ``{split: file}`` for every split file in ``target_dir`` (written now or before).

    Raises:
        ValueError: not exactly one of ``experiment_dir`` / ``pre_trained_model``, or an unknown
            baseline or dataset.
        FileNotFoundError: the run, the config or the dataset is missing.
    """
    if (experiment_dir is None) == (pre_trained_model is None):
        raise ValueError("give exactly one of --experiment-dir and --pre-trained-model")
    if pre_trained_model is not None and pre_trained_model not in PRETRAINED_BASELINES:
        raise ValueError(f"--pre-trained-model must be one of {sorted(PRETRAINED_BASELINES)}: {pre_trained_model!r}")
    target = Path(target_dir)
    target.mkdir(parents=True, exist_ok=True)
    config = load_probe_config(config_path)
    if config.dataset not in TRANSFER_DATAMODULES:
        raise ValueError(f"dataset={config.dataset!r} in {config_path}; use one of {sorted(TRANSFER_DATAMODULES)}")
    files = {split: target / f"{split}.pt" for split in TRANSFER_DATAMODULES[config.dataset].official_splits}
    if all(path.is_file() for path in files.values()):
        log.info("%s already holds %s: nothing to do", target, ", ".join(p.name for p in files.values()))
        return files

    pl.seed_everything(int(config.seed), workers=False)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if experiment_dir is not None:
        model_name, mc, ckpt = run_model_info(experiment_dir)
    else:
        model_name, mc, ckpt = str(pre_trained_model), 1, None

    datamodule = get_transfer_learning_datamodule(
        config.dataset_dir,
        config.dataset,
        int(config.batch_size),
        num_workers_from_env(),
        image_size=config.get("image_size"),
    )
    datamodule.setup("train")  # the reference's stage argument; every split is built
    probe = LinearProbingClassifier(
        model_name=model_name,
        model_path=ckpt,
        optim_kwargs=OmegaConf.to_container(config.optim_kwargs),  # type: ignore[arg-type]
        max_epochs=int(config.max_epochs),
        scheduler_kwargs=OmegaConf.to_container(config.scheduler_kwargs),  # type: ignore[arg-type]
        num_classes=int(config.num_classes),
        task=str(config.task),
    )
    probe.to(dev).eval()

    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = True
    with torch.no_grad():
        for split, loader in datamodule.split_loaders().items():
            path = target / f"{split}.pt"
            if path.is_file():
                log.info("%s exists: skipped", path)
                continue
            _embed_split(probe, loader, path, mc, dev, split)
            log.info("wrote %s", path)
    return {split: path for split, path in files.items() if path.is_file()}
