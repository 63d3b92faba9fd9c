"""The one classifier lifecycle (src/task/classifier.py) as the finetuner, semi-supervised finetuning and the
linear probe use it: metric names and averaging against plain formulas (micro for the finetuners, macro for
the probes: T-Q24, D-Q8; ECE with 15 bins and the L1 norm), what is logged per step and per epoch, the
val/test loss as the unweighted mean over batches (T-Q16, D-Q24), the SSL module's BatchNorm modes during
the finetune (T-Q15b), hyper-parameters and checkpoint contents, and the head registry.

The SSL module is a stand-in with the interface the classifiers read (``encoder_out_dim``,
``stochastic_space``, a forward giving [B, E] or a StochasticOutput) and a BatchNorm layer, so every
Trainer here runs in well under a second.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import CSVLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from src.task.bayesian_ssl import StochasticOutput
from src.task.classifier import FINETUNE_MODELS, ClassificationMetrics, build_head
from src.task.evaluation import PROBE_HEADS, PreEmbeddedLinearProbingClassifier
from src.task.finetuning import LastLayerFinetuner
from src.task.semi_supervised import SemiSupervised

C, E, IN = 3, 4, 6


# ---- plain metric formulas ----------------------------------------------------------------------------
def micro_accuracy(logits: Tensor, y: Tensor) -> float:
    return (logits.argmax(-1) == y).double().mean().item()


def macro_accuracy(logits: Tensor, y: Tensor) -> float:
    pred = logits.argmax(-1)
    recalls = [(pred[y == c] == c).double().mean().item() for c in y.unique().tolist()]
    return sum(recalls) / len(recalls)


def top_k_accuracy(logits: Tensor, y: Tensor, k: int) -> float:
    return (logits.topk(k, -1).indices == y[:, None]).any(-1).double().mean().item()


def ece_l1_15_bins(logits: Tensor, y: Tensor) -> float:
    """sum over 15 equal-width confidence bins of (bin share) x |accuracy - mean confidence|."""
    probs = logits.double().softmax(-1)
    conf, pred = probs.max(-1)
    correct = (pred == y).double()
    total = 0.0
    for i in range(15):
        lo, hi = i / 15, (i + 1) / 15
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += inside.double().mean().item() * abs(correct[inside].mean().item() - conf[inside].mean().item())
    return total


# ---- a stand-in SSL module and data -------------------------------------------------------------------
class StandInSSL(nn.Module):
    """What the classifiers read from an SSL module; a BatchNorm layer shows its train/eval mode."""

    def __init__(self, stochastic_space: str | None = None, mc_samples: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Linear(IN, E), nn.BatchNorm1d(E))
        self.encoder_out_dim = E
        self.stochastic_space = stochastic_space
        self.mc_samples = mc_samples

    def forward(self, x: Tensor) -> Tensor | StochasticOutput:
        h = self.encoder(x)
        if self.stochastic_space != "H":
            return h
        offsets = torch.linspace(-1, 1, self.mc_samples)[:, None, None]
        samples = h + offsets
        return StochasticOutput(samples.mean(0), samples, h, torch.zeros_like(h), None)


class Samples(Dataset):
    """Labelled vectors; ``three_views`` gives the SSL batch layout ((x1, x2, x3), y)."""

    def __init__(self, n: int, seed: int, three_views: bool) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, IN, generator=g)
        self.y = torch.arange(n) % C
        self.x[:, 0] += 2 * self.y  # learnable, not trivially separable
        self.three_views = three_views

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> Any:
        x = self.x[i]
        return ((x + 5, x - 5, x), self.y[i]) if self.three_views else (x, self.y[i])

    def all(self) -> tuple[Tensor, Tensor]:
        return self.x, self.y


def loaders(three_views: bool) -> tuple[DataLoader, DataLoader, Samples, Samples]:
    train, val = Samples(14, 0, three_views), Samples(11, 1, three_views)  # batches of 4: the last is smaller
    return DataLoader(train, batch_size=4), DataLoader(val, batch_size=4), train, val


def run(model: pl.LightningModule, three_views: bool, root: Path) -> tuple[pl.Trainer, dict[str, float]]:
    train, val, _, _ = loaders(three_views)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=CSVLogger(root),
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, train, val)
    tested = trainer.test(model, val, verbose=False)[0]
    return trainer, tested


def logged_rows(trainer: pl.Trainer) -> list[dict[str, str]]:
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def batch_mean_loss(model: Any, x: Tensor, y: Tensor, batch_size: int = 4) -> float:
    """The unweighted mean over batches of the batch cross-entropy (the last, smaller batch counts as much)."""
    losses = [F.cross_entropy(model(x[i : i + batch_size]), y[i : i + batch_size]) for i in range(0, len(y), 4)]
    return torch.stack(losses).mean().item()


# ---- the metric builder ------------------------------------------------------------------------------
@pytest.mark.parametrize("average", ["micro", "macro"])
def test_metric_builder_against_plain_formulas(average: str) -> None:
    g = torch.Generator().manual_seed(3)
    logits, y = torch.randn(40, 6, generator=g) * 2, torch.randint(0, 6, (40,), generator=g)
    y[:25] = 0  # unbalanced: micro and macro differ
    metrics = ClassificationMetrics(accuracy="acc", accuracy_at_5="acc5", ece="cal", average=average)
    collection = metrics.build(6, "val_")
    for i in range(0, 40, 7):  # accumulated over batches
        collection.update(logits[i : i + 7], y[i : i + 7])
    got = {k: v.item() for k, v in collection.compute().items()}
    assert set(got) == {"val_acc", "val_acc5", "val_cal"}
    accuracy = micro_accuracy if average == "micro" else macro_accuracy
    assert got["val_acc"] == pytest.approx(accuracy(logits, y), abs=1e-6)
    assert micro_accuracy(logits, y) != pytest.approx(macro_accuracy(logits, y), abs=1e-3)
    if average == "micro":
        assert got["val_acc5"] == pytest.approx(top_k_accuracy(logits, y, 5), abs=1e-6)
    assert got["val_cal"] == pytest.approx(ece_l1_15_bins(logits, y), abs=1e-5)


def test_metric_builder_top_k_is_capped_by_the_classes_and_multilabel_is_map() -> None:
    collection = ClassificationMetrics().build(2, "test_")
    collection.update(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 1]))
    assert collection.compute()["test_accuracy_at_5"].item() == 1.0  # top-2 of 2 classes
    assert set(ClassificationMetrics().build(4, "val/", task="multilabel")) == {"val/mAP"}
    with pytest.raises(ValueError, match="multiclass or multilabel"):
        ClassificationMetrics().build(4, "val/", task="ranking")


def test_head_registries() -> None:
    head = build_head("simple_mlp", 7, 3, "finetune.finetune_model")
    assert type(head) is nn.Linear and (head.in_features, head.out_features) == (7, 3)
    assert list(FINETUNE_MODELS) == ["simple_mlp"] and list(PROBE_HEADS) == ["multiclass", "multilabel"]
    with pytest.raises(ValueError, match=r"finetune\.finetune_model='mlp' is not supported; use one of"):
        build_head("mlp", 7, 3, "finetune.finetune_model")
    with pytest.raises(ValueError, match=r"train\.finetune_model='mlp' is not supported"):
        SemiSupervised(StandInSSL(), finetune_model="mlp", num_classes=C, learning_rate=1e-3, optimizer=OPTIMIZER)


# ---- the offline finetuner ----------------------------------------------------------------------------
def finetuner(space: str | None = None, **kwargs: Any) -> LastLayerFinetuner:
    params = dict(num_classes=C, no_grad=True, offline_learning_rate=0.0, offline_weight_decay=1e-5)
    params.update(kwargs)
    return LastLayerFinetuner(pl_module=StandInSSL(space), **params)


def test_finetuner_logs_and_metrics(tmp_path: Path) -> None:
    model = finetuner()  # lr 0: the head stays as initialised, so every logged value can be recomputed
    trainer, tested = run(model, True, tmp_path)
    rows = logged_rows(trainer)
    step_rows = [r for r in rows if "train_offline_loss" in r]
    assert len(step_rows) == 4  # per step (14 samples, batches of 4)
    epoch_keys = {"train_offline_acc", "train_offline_acc_at_5", "train_offline_ece", "val_offline_loss"}
    epoch_keys |= {"val_offline_acc", "val_offline_acc_at_5", "val_offline_ece"}
    assert all(not (epoch_keys & set(r)) for r in step_rows)
    epoch = {k: float(v) for r in rows for k, v in r.items() if k in epoch_keys}
    assert set(epoch) == epoch_keys
    assert set(tested) == {"test_offline_loss", "test_offline_acc", "test_offline_acc_at_5", "test_offline_ece"}

    _, _, train, val = loaders(True)
    x, y = val.all()
    model.eval()
    with torch.no_grad():
        val_logits = model(x)
        assert epoch["val_offline_loss"] == pytest.approx(batch_mean_loss(model, x, y), abs=1e-6)
        assert tested["test_offline_loss"] == pytest.approx(epoch["val_offline_loss"], abs=1e-6)
    assert epoch["val_offline_loss"] != pytest.approx(F.cross_entropy(val_logits, y).item(), abs=1e-4)
    assert epoch["val_offline_acc"] == pytest.approx(micro_accuracy(val_logits, y), abs=1e-6)
    assert epoch["val_offline_ece"] == pytest.approx(ece_l1_15_bins(val_logits, y), abs=1e-5)
    # the training metrics were accumulated over the epoch, with the SSL module in train mode (T-Q15b)
    xt, yt = train.all()
    model.train()
    with torch.no_grad():
        train_logits = torch.cat([model(xt[i : i + 4]) for i in range(0, 14, 4)])
    assert epoch["train_offline_acc"] == pytest.approx(micro_accuracy(train_logits, yt), abs=1e-6)


def test_finetuner_keeps_the_ssl_module_in_train_mode_and_trains_the_head_only(tmp_path: Path) -> None:
    """T-Q15b: the frozen module's BatchNorm uses batch statistics and updates its running statistics
    during the fit, and is in eval mode for validation and test; only the head learns."""
    model = finetuner(offline_learning_rate=0.1)
    bn = model.model.encoder[1]
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    head_before = model.predictor.weight.detach().clone()
    modes: list[tuple[str, bool]] = []
    model.model.register_forward_pre_hook(lambda m, a: modes.append(("fwd", m.training)))
    trainer, _ = run(model, True, tmp_path)
    after = model.model.state_dict()
    assert not torch.equal(after["encoder.1.running_mean"], before["encoder.1.running_mean"])
    assert int(after["encoder.1.num_batches_tracked"]) == 4  # the 4 training batches only
    assert torch.equal(after["encoder.0.weight"], before["encoder.0.weight"])  # no_grad: frozen
    assert not torch.equal(model.predictor.weight.detach(), head_before)
    assert [m for _, m in modes] == [True] * 4 + [False] * 3 + [False] * 3  # fit, val, test
    assert bn.training  # back in train mode after validation and test
    optimizer = trainer.optimizers[0]
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in model.predictor.parameters()}
    assert optimizer.param_groups[0]["weight_decay"] == 1e-5
    scheduler = trainer.lr_scheduler_configs[0]
    assert scheduler.interval == "epoch" and scheduler.scheduler.eta_min == pytest.approx(0.01)  # 0.1 x lr


@pytest.mark.parametrize(
    ("use_mc", "use_mean", "expected"),
    [(True, False, "mc_logits"), (False, True, "mu"), (False, False, "repr")],
)
def test_finetuner_features_for_bayes_h(use_mc: bool, use_mean: bool, expected: str) -> None:
    model = finetuner(space="H", use_mc_samples=use_mc, use_mean_for_repr=use_mean).eval()
    x = torch.randn(5, IN)
    with torch.no_grad():
        out = model.model(x)
        logits = model(x)
        want = {
            "mc_logits": model.predictor(out.samples).mean(0),  # logits, not probabilities, averaged
            "mu": model.predictor(out.mu),
            "repr": model.predictor(out.repr),
        }[expected]
    torch.testing.assert_close(logits, want)


def test_finetuner_checkpoint_contents_and_old_checkpoints_load(tmp_path: Path) -> None:
    model = finetuner(use_mc_samples=True)
    trainer, _ = run(model, True, tmp_path)
    path = tmp_path / "ft.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["hyper_parameters"] == {
        "finetune_model": "simple_mlp",
        "num_classes": C,
        "no_grad": True,
        "offline_learning_rate": 0.0,
        "offline_weight_decay": 1e-5,
        "use_mc_samples": True,
        "use_mean_for_repr": False,
    }
    assert {k.split(".")[0] for k in ckpt["state_dict"]} == {"model", "predictor"}
    # a checkpoint as the previous implementation wrote it (the same keys) loads into a new finetuner
    fresh = LastLayerFinetuner(pl_module=StandInSSL(), **ckpt["hyper_parameters"])
    fresh.load_state_dict(ckpt["state_dict"])
    for k, v in ckpt["state_dict"].items():
        assert torch.equal(fresh.state_dict()[k], v), k


# ---- semi-supervised finetuning ----------------------------------------------------------------------
OPTIMIZER = {"_target_": "torch.optim.AdamW", "name": "adamw", "lr": 0.0, "weight_decay": 1e-5, "lr_linear": 0.0}


def test_semi_supervised_logs_and_metrics(tmp_path: Path) -> None:
    model = SemiSupervised(
        StandInSSL(),
        num_classes=C,
        learning_rate=0.0,
        optimizer=OPTIMIZER,
        scheduler="cosine",
        scheduler_kwargs={"sch_eta_min_scale": 0.1},
    )
    trainer, tested = run(model, False, tmp_path)
    rows = logged_rows(trainer)
    assert len([r for r in rows if "train_loss" in r]) == 4
    epoch = {k: float(v) for r in rows for k, v in r.items() if k.startswith(("train_acc", "train_ece", "val_"))}
    assert set(epoch) == {
        "train_accuracy",
        "train_accuracy_at_5",
        "train_ece",
        "val_loss",
        "val_accuracy",
        "val_accuracy_at_5",
        "val_ece",
    }
    assert set(tested) == {"test_loss", "test_accuracy", "test_accuracy_at_5", "test_ece"}
    _, _, _, val = loaders(False)
    x, y = val.all()
    model.eval()
    with torch.no_grad():
        logits = model(x)
        assert tested["test_loss"] == pytest.approx(batch_mean_loss(model, x, y), abs=1e-6)
    assert tested["test_accuracy"] == pytest.approx(micro_accuracy(logits, y), abs=1e-6)
    assert tested["test_ece"] == pytest.approx(ece_l1_15_bins(logits, y), abs=1e-5)


# ---- the linear probe ---------------------------------------------------------------------------------
def test_probe_logs_batch_values_per_step_and_macro_metrics_per_epoch(tmp_path: Path) -> None:
    probe = PreEmbeddedLinearProbingClassifier(
        model_name="ssl",
        model_path=None,
        optim_kwargs={"lr": 0.0, "weight_decay": 5e-4},
        max_epochs=1,
        scheduler_kwargs={"milestones": [1], "gamma": 0.1},
        num_classes=C,
        norm_repr=False,
        repr_dim=IN,
    )
    trainer, tested = run(probe, False, tmp_path)
    rows = logged_rows(trainer)
    step_rows = [r for r in rows if "train/loss" in r]
    assert len(step_rows) == 4 and all({"train/accuracy", "train/ece"} <= set(r) for r in step_rows)
    _, _, train, val = loaders(False)
    xt, yt = train.all()
    with torch.no_grad():
        first = probe(xt[:4])
    assert float(step_rows[0]["train/accuracy"]) == pytest.approx(macro_accuracy(first, yt[:4]), abs=1e-6)
    assert float(step_rows[0]["train/loss"]) == pytest.approx(F.cross_entropy(first, yt[:4]).item(), abs=1e-6)
    epoch = {k for r in rows for k in r if k.startswith("val")}
    assert epoch == {"val/accuracy", "val/ece"}  # no validation loss
    assert set(tested) == {"test/accuracy", "test/ece"}
    x, y = val.all()
    with torch.no_grad():
        logits = probe(x)
    assert tested["test/accuracy"] == pytest.approx(macro_accuracy(logits, y), abs=1e-6)
    assert tested["test/ece"] == pytest.approx(ece_l1_15_bins(logits, y), abs=1e-5)
    scheduler = trainer.lr_scheduler_configs[0]
    assert isinstance(scheduler.scheduler, torch.optim.lr_scheduler.MultiStepLR) and scheduler.interval == "epoch"
    assert trainer.optimizers[0].param_groups[0]["weight_decay"] == 5e-4
    hp = torch.load(_save(trainer, tmp_path), weights_only=True)["hyper_parameters"]
    assert hp["repr_dim"] == IN and hp["task"] == "multiclass" and hp["scheduler_kwargs"]["gamma"] == 0.1


def _save(trainer: pl.Trainer, root: Path) -> Path:
    path = root / "probe.ckpt"
    trainer.save_checkpoint(path)
    return path
