"""Missing, truncated, foreign or unsafe checkpoints are refused with the file and the reason;
unsafe files are never unpickled (the tests prove no code ran)."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from src.task.checkpoint import load_ssl_model
from src.utils.checkpoint import CheckpointError, load_checkpoint
from tests.conftest import build_model


def _q(path: Path | str) -> str:
    """``path`` as a regex that matches it literally."""
    return re.escape(str(path))


# ============================================================================ 10. wrong and truncated checkpoints
def _save_checkpoint(model: torch.nn.Module, path: Path, **hparam_overrides: Any) -> Path:
    hparams = {**dict(model.hparams), **hparam_overrides}  # type: ignore[arg-type]
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams}, path)
    return path


@pytest.fixture(scope="module")
def bayes_z_model() -> torch.nn.Module:
    return build_model("ssl_bayes_z", "mc_barlow_twins", hidden_dim=16, z_dim=16)


def test_checkpoint_of_another_model_type(tmp_path: Path, bayes_z_model: torch.nn.Module) -> None:
    ckpt = _save_checkpoint(bayes_z_model, tmp_path / "model.ckpt")
    assert type(load_ssl_model(ckpt)).__name__ == "ZBayesianSelfSupervisedLearning"  # the file itself is fine
    with pytest.raises(CheckpointError, match=rf"{_q(ckpt)} holds a 'ssl_bayes_z' model, but 'ssl' was asked for"):
        load_ssl_model(ckpt, "ssl")


@pytest.mark.parametrize("keep", [0.5, 0.0], ids=["half", "empty"])
def test_truncated_checkpoint(tmp_path: Path, bayes_z_model: torch.nn.Module, keep: float) -> None:
    good = _save_checkpoint(bayes_z_model, tmp_path / "good.ckpt")
    bad = tmp_path / "model.ckpt"
    bad.write_bytes(good.read_bytes()[: int(good.stat().st_size * keep)])
    with pytest.raises(
        CheckpointError,
        match=rf"{_q(bad)} cannot be read .*truncated or corrupted: write it again: .*dvc repro.*overwrite=true",
    ):
        load_ssl_model(bad)


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=rf"{_q(tmp_path / 'model.ckpt')} does not exist"):
        load_checkpoint(tmp_path / "model.ckpt")


def test_checkpoint_whose_weights_do_not_fit_its_hyper_parameters(
    tmp_path: Path, bayes_z_model: torch.nn.Module
) -> None:
    ckpt = _save_checkpoint(bayes_z_model, tmp_path / "model.ckpt", z_dim=64)
    with pytest.raises(
        CheckpointError, match=rf"{_q(ckpt)}: its weights do not fit .*size mismatch.*dvc repro.*delete the run folder"
    ):
        load_ssl_model(ckpt)


def test_checkpoint_naming_an_arbitrary_loss_target_is_refused(tmp_path: Path, bayes_z_model: torch.nn.Module) -> None:
    """``_target_`` strings inside a checkpoint go through allow-lists, never an import by name."""
    cl_loss = {**bayes_z_model.hparams["cl_loss"], "_target_": "os.system"}  # type: ignore[index]
    ckpt = _save_checkpoint(bayes_z_model, tmp_path / "model.ckpt", cl_loss=cl_loss)
    with pytest.raises(CheckpointError, match=rf"{_q(ckpt)}: .*'os\.system' is not a known loss"):
        load_ssl_model(ckpt)


# ============================================================================ 11. unsafe pickles are never unpickled
class CreatesFileWhenUnpickled:
    """A pickle payload: unpickling it calls ``open(marker, "w")``, which creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_the_payload_is_live_when_unpickled(tmp_path: Path) -> None:
    """Control: plain ``pickle.loads`` does run the payload, so its absence below means it was not unpickled."""
    marker = tmp_path / "marker"
    handle = pickle.loads(pickle.dumps(CreatesFileWhenUnpickled(marker)))
    handle.close()
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("fmt", ["torch_zip", "torch_legacy", "raw_pickle_2", "raw_pickle_5"])
def test_checkpoint_with_an_arbitrary_object_is_refused_without_unpickling(tmp_path: Path, fmt: str) -> None:
    marker = tmp_path / "PWNED"
    obj = {"state_dict": {}, "hyper_parameters": {"model_name": "ssl", "payload": CreatesFileWhenUnpickled(marker)}}
    ckpt = tmp_path / "model.ckpt"
    if fmt.startswith("raw_pickle"):
        ckpt.write_bytes(pickle.dumps(obj, protocol=int(fmt[-1])))
    else:
        torch.save(obj, ckpt, _use_new_zipfile_serialization=fmt == "torch_zip")
    with pytest.raises(
        CheckpointError, match=rf"{_q(ckpt)} holds objects that are not plain values.*not unpickled"
    ) as e:
        load_ssl_model(ckpt)
    if fmt != "raw_pickle_5":  # protocol 5 is already refused at its first (framing) instruction
        assert re.search(r"Refused: .*GLOBAL (builtins|io)\.open", str(e.value))  # names the refused object
    assert "False" not in str(e.value) and "allowlist" not in str(e.value)  # torch's unsafe advice is not passed on
    assert not marker.exists()


def test_checkpoint_pickling_a_function_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"cl_loss": os.getcwd}}, ckpt)
    with pytest.raises(CheckpointError, match=rf"{_q(ckpt)} holds objects that are not plain values.*getcwd"):
        load_checkpoint(ckpt)
