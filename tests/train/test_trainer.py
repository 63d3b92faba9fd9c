"""The one trainer builder: the callbacks a phase's config names (``CALLBACKS``), in the config's order,
the reliability callbacks every phase gets, the Trainer arguments adapted to the machine, and helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint

from src.train.callbacks.fault_guard import NonFiniteLossGuard
from src.train.callbacks.online_finetuner import OnlineFineTuner
from src.train.callbacks.resume_state import ResumeState
from src.train.trainer import (
    CALLBACKS,
    build_callbacks,
    build_trainer,
    merge_metrics,
    relative,
    trainer_kwargs,
)
from tests.conftest import CONF, compose_config

PROBE = {"encoder_output_dim": 512, "num_classes": 10}
TYPES = {
    "checkpoint": ModelCheckpoint,
    "early_stopping": EarlyStopping,
    "online_finetuner": OnlineFineTuner,
    "learning_rate_monitor": LearningRateMonitor,
}


def phase_nodes() -> dict[str, dict]:
    """Every callbacks config file, composed as the tasks place it (name -> plain node)."""
    from src.utils.plain import to_plain

    cfg = compose_config("+model/task/ssl@train=ssl", "+model/task@finetune=finetune")
    semi = compose_config(config_name="semi_supervised")
    return {
        "pretrain": to_plain(cfg.train.callbacks),
        "finetune": to_plain(cfg.finetune.callbacks),
        "semi_supervised": to_plain(semi.train.callbacks),
    }


def test_every_callbacks_config_is_covered() -> None:
    assert set(phase_nodes()) == {p.stem for p in (CONF / "callbacks").glob("*.yaml")}


@pytest.mark.parametrize("phase", ["pretrain", "finetune", "semi_supervised"])
def test_callbacks_in_the_config_order(phase: str, tmp_path: Path) -> None:
    node = phase_nodes()[phase]
    callbacks = build_callbacks(node, tmp_path, has_logger=True, **PROBE)
    assert [type(c) for c in callbacks] == [TYPES[name] for name in node]
    ckpt = next(c for c in callbacks if isinstance(c, ModelCheckpoint))
    assert ckpt.monitor == node["checkpoint"]["monitor"] and Path(ckpt.dirpath) == tmp_path
    # the best checkpoint holds weights only; last.ckpt (complete) comes from the reliability writer
    assert ckpt.save_weights_only and not ckpt.save_last


@pytest.mark.parametrize("name", list(CALLBACKS))
def test_every_registered_callback_is_named_by_a_config_and_builds(name: str, tmp_path: Path) -> None:
    nodes = [node[name] for node in phase_nodes().values() if name in node]
    assert nodes, f"no callbacks config uses the registered callback {name!r}"
    built = build_callbacks({name: nodes[0]}, tmp_path, has_logger=True, **PROBE)
    assert len(built) == 1 and isinstance(built[0], TYPES.get(name, object))


def test_the_learning_rate_monitor_needs_a_logger(tmp_path: Path) -> None:
    """Lightning refuses the monitor without a logger (T-Q18g): without one it is left out."""
    assert build_callbacks({"learning_rate_monitor": {"logging_interval": "step"}}, tmp_path, has_logger=False) == []


def test_unknown_callback_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"callbacks\.swa is not a known callback; use one of checkpoint, "):
        build_callbacks({"swa": {}}, tmp_path, has_logger=True)


def test_every_phase_gets_resume_state_the_guard_and_a_last_checkpoint(tmp_path: Path) -> None:
    phase = build_trainer({"max_epochs": 1, "accelerator": "cpu"}, tmp_path, callbacks_cfg=None, logging_cfg={})
    kinds = [type(c) for c in phase.trainer.callbacks]
    assert ResumeState in kinds and NonFiniteLossGuard in kinds
    last = [c for c in phase.trainer.callbacks if isinstance(c, ModelCheckpoint)]
    # rewritten every epoch (not Lightning's save_last, which follows the top-k saves)
    assert len(last) == 1 and last[0].monitor is None and last[0].save_top_k == 1 and not last[0].save_weights_only
    assert last[0].format_checkpoint_name({}) == str(tmp_path / "checkpoints" / "last.ckpt")
    assert phase.callbacks == [] and phase.checkpoint_dir == tmp_path / "checkpoints"
    assert phase.best_checkpoint() is None and phase.resume_checkpoint() is None
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert phase.resume_checkpoint() == str(tmp_path / "checkpoints" / "last.ckpt")


def test_trainer_kwargs_fall_back_to_what_a_cpu_can_do() -> None:
    import torch

    cfg = {"precision": "16-mixed", "sync_batchnorm": True, "accelerator": "cpu", "max_epochs": 3}
    kwargs = trainer_kwargs(cfg, debug={"max_epochs": 1})
    assert kwargs["sync_batchnorm"] is False and kwargs["max_epochs"] == 1
    assert kwargs["precision"] == "32-true"  # accelerator=cpu: no fp16 autocast, even on a CUDA machine
    gpu = trainer_kwargs({"precision": "16-mixed", "accelerator": "auto"})
    assert gpu["precision"] == ("16-mixed" if torch.cuda.is_available() else "32-true")


def test_precision_resolution() -> None:
    """16-mixed: as asked on a GPU, 32-true on a CPU; bf16-mixed: as asked on a CPU and on a GPU with native
    bf16, a clear error on one without; an unknown value names the key."""
    from src.utils.precision import resolve_precision

    assert resolve_precision("16-mixed", on_gpu=False) == "32-true"
    assert resolve_precision("16-mixed", on_gpu=True) == "16-mixed"
    assert resolve_precision("bf16-mixed", on_gpu=False) == "bf16-mixed"
    assert resolve_precision("bf16-mixed", on_gpu=True, bf16_supported=lambda: True) == "bf16-mixed"
    assert resolve_precision(32, on_gpu=False) == "32"
    with pytest.raises(ValueError, match=r"trainer.precision=bf16-mixed: .* no native bfloat16 .* use 16-mixed"):
        resolve_precision("bf16-mixed", on_gpu=True, bf16_supported=lambda: False)
    with pytest.raises(ValueError, match=r"train.trainer.precision='fp8' is not a precision; use 16-mixed"):
        resolve_precision("fp8", on_gpu=False, key="train.trainer.precision")


def test_bf16_mixed_reaches_the_trainer_without_a_scaler(tmp_path: Path) -> None:
    """On a CPU (this machine) or a bf16 GPU the pipeline's Trainer runs bf16 autocast and has no GradScaler."""
    import torch
    from pytorch_lightning.plugins.precision import MixedPrecision

    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no native bf16")
    phase = build_trainer({"max_epochs": 1, "precision": "bf16-mixed"}, tmp_path, logging_cfg={})
    plugin = phase.trainer.precision_plugin
    assert isinstance(plugin, MixedPrecision) and plugin.precision == "bf16-mixed" and plugin.scaler is None


def test_merge_metrics_and_relative(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    assert merge_metrics([{"a": torch.tensor(1.5)}, {"b": 2}]) == {"a": 1.5, "b": 2.0}
    monkeypatch.chdir(tmp_path)
    assert relative(tmp_path / "x" / "y.ckpt") == str(Path("x") / "y.ckpt")
    assert relative("/elsewhere/y.ckpt") == "/elsewhere/y.ckpt"
