"""Runs know their config: the record in run_config.json, the refusal of a changed config before anything is
written, overwrite=true, a finetune added to a finished pretraining, damaged checkpoints of a finished run."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from src.train.pipeline import check_pipeline_folder, run_pipeline
from src.train.run_config import (
    IGNORED_KEYS,
    RUN_CONFIG_FILE,
    DamagedRunError,
    RunConfig,
    RunConfigMismatch,
    checkpoint_is_intact,
    differences,
    is_ignored,
)
from tests.conftest import compose_config
from tests.train.conftest import SCRIPT, TINY, compose_run, script_env

PRETRAIN_ONLY = [o for o in TINY if not o.startswith(("finetune.", "+finetune."))]


def pretrain_only(demo_root: Path, out: Path, *extra: str) -> object:
    """A tiny Bayes-Z pretraining without the finetune task (train.beta_scale exists for the Bayes models)."""
    return compose_config(
        "dataset=demo",
        f"dataset.data_dir={demo_root}",
        "+model/task/ssl@train=ssl_bayes_z",
        "model/loss=mc_barlow_twins",
        "train.mc_samples=2",
        f"output_path={out}",
        *PRETRAIN_ONLY,
        *extra,
    )


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``folder`` with its modification time and content."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()
    }


# ----------------------------------------------------------------------------- the record, without training
def test_ignored_keys_do_not_count_and_finetune_is_its_own_part(tmp_path: Path) -> None:
    base = compose_run("ssl_bayes_z", "mc_barlow_twins", tmp_path / "data", tmp_path / "a")
    record = RunConfig.of_pipeline(base)
    assert set(record.parts) == {"pretrain", "finetune"}
    assert all(k.startswith("finetune.") for k in record.parts["finetune"])
    assert record.parts["pretrain"]["train.beta_scale"] == 0.001
    assert record.parts["pretrain"]["train.kwargs.beta_scale"] == 0.001  # resolved, not `${train.beta_scale}`
    assert not any(is_ignored(k) for part in record.parts.values() for k in part)

    # keys that do not change the numbers: other folders, workers, loggers, progress display
    ignored = compose_run(
        "ssl_bayes_z",
        "mc_barlow_twins",
        tmp_path / "elsewhere",
        tmp_path / "b",
        [
            "dataset.num_workers=3",
            "dataset.persistent_workers=true",
            "logging.tensorboard=true",
            "+train.trainer.log_every_n_steps=5",
            "+train.trainer.enable_progress_bar=false",
        ],
    )
    assert RunConfig.of_pipeline(ignored).hashes() == record.hashes()

    beta = RunConfig.of_pipeline(
        compose_run("ssl_bayes_z", "mc_barlow_twins", tmp_path / "data", tmp_path / "a", ["train.beta_scale=0.01"])
    )
    assert beta.hashes()["pretrain"] != record.hashes()["pretrain"]
    assert beta.hashes()["finetune"] == record.hashes()["finetune"]
    assert differences(record.parts["pretrain"], beta.parts["pretrain"]) == [
        "train.beta_scale: 0.001 → 0.01",
        "train.kwargs.beta_scale: 0.001 → 0.01",
    ]
    finetune = RunConfig.of_pipeline(
        compose_run(
            "ssl_bayes_z", "mc_barlow_twins", tmp_path / "data", tmp_path / "a", ["finetune.trainer.max_epochs=4"]
        )
    )
    assert finetune.hashes()["pretrain"] == record.hashes()["pretrain"]
    assert differences(record.parts["finetune"], finetune.parts["finetune"]) == ["finetune.trainer.max_epochs: 3 → 4"]

    no_finetune = RunConfig.of_pipeline(pretrain_only(tmp_path / "data", tmp_path / "a"))
    assert set(no_finetune.parts) == {"pretrain"} and no_finetune.parts["pretrain"] == record.parts["pretrain"]


def test_is_ignored_matches_a_key_and_everything_below_it() -> None:
    assert is_ignored("logging") and is_ignored("logging.wandb_logger_kwargs.tags")
    assert is_ignored("finetune.trainer.log_every_n_steps") and is_ignored("train.callbacks.learning_rate_monitor.x")
    assert not is_ignored("dataset.batch_size") and not is_ignored("train.trainer.max_epochs")
    assert not is_ignored("outputs") and "output_path" in IGNORED_KEYS


def test_differences_name_absent_keys() -> None:
    assert differences({"a": 1, "b": None}, {"a": 1, "c": [1, 2]}) == ["b: null → (absent)", "c: (absent) → [1, 2]"]
    assert differences({"x": "y" * 100}, {"x": "z"})[0].startswith("x: " + "y" * 57 + "... → z")


def test_a_changed_config_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """On a fabricated finished run: the error names the key with both values and the two ways on."""
    out = tmp_path / "run"
    old = pretrain_only(tmp_path / "data", out)
    (out / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {}}, out / "checkpoints" / "model.ckpt")
    (out / "checkpoints" / "pretrain_done.json").write_text(json.dumps({"ckpt_path": "x/checkpoints/model.ckpt"}))
    (out / "results.json").write_text(json.dumps({"model_ckpt_path": "x/checkpoints/model.ckpt", "metrics": {}}))
    RunConfig.of_pipeline(old).write(out)
    before = snapshot(out)

    new = pretrain_only(tmp_path / "data", out, "train.beta_scale=0.01", "train.trainer.max_epochs=20")
    with pytest.raises(RunConfigMismatch) as info:
        check_pipeline_folder(new, out)
    message = str(info.value)
    assert "train.beta_scale: 0.001 → 0.01" in message and "train.trainer.max_epochs: 1 → 20" in message
    assert "nothing was changed" in message and "output_path=<new folder>" in message and "overwrite=true" in message
    assert snapshot(out) == before

    # an ignored key alone: the same run (finished, so run_pipeline would skip it)
    record, stored = check_pipeline_folder(pretrain_only(tmp_path / "data", out, "dataset.num_workers=2"), out)
    assert stored is not None and record.parts == stored.parts and snapshot(out) == before


def test_a_folder_without_a_record_is_taken_as_before_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "old_run"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"model_ckpt_path": None, "metrics": {}}))
    before = snapshot(out)
    with caplog.at_level("WARNING", logger="src.train.pipeline"):
        assert run_pipeline(pretrain_only(tmp_path / "data", out)) is None
    assert "its config could not be checked" in caplog.text and snapshot(out) == before


def test_checkpoint_is_intact(tmp_path: Path) -> None:
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(100)}}, good)
    assert checkpoint_is_intact(good)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert not checkpoint_is_intact(cut) and not checkpoint_is_intact(tmp_path / "missing.ckpt")


# ----------------------------------------------------------------------------- end to end (tiny real runs)
@pytest.mark.slow
def test_reruns_skip_refuse_overwrite_and_add_the_finetune(demo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = run_pipeline(pretrain_only(demo_root, out))
    assert first is not None and "offline_metrics" not in first
    stored = json.loads((out / RUN_CONFIG_FILE).read_text())
    assert set(stored["hashes"]) == {"pretrain"} and stored["parts"]["pretrain"]["train.beta_scale"] == 0.001

    # the same config, and an ignored key changed: skipped, nothing touched
    before = snapshot(out)
    assert run_pipeline(pretrain_only(demo_root, out)) is None
    assert run_pipeline(pretrain_only(demo_root, out, "dataset.num_workers=1")) is None
    assert snapshot(out) == before

    # a changed config: refused before anything is written
    with pytest.raises(RunConfigMismatch, match=r"train\.beta_scale: 0\.001 → 0\.01"):
        run_pipeline(pretrain_only(demo_root, out, "train.beta_scale=0.01"))
    assert snapshot(out) == before

    # the finetune added to the finished pretraining: finetuned, the pretraining left alone
    with_finetune = compose_run("ssl_bayes_z", "mc_barlow_twins", demo_root, out)
    results = run_pipeline(with_finetune)
    assert results is not None and results["offline_metrics"]["test_offline_acc"] > 0.125
    assert results["metadata"]["run_id"] == first["metadata"]["run_id"] and results["metrics"] == first["metrics"]
    after = snapshot(out)
    for kept in ("checkpoints/model.ckpt", "checkpoints/last.ckpt", "checkpoints/pretrain_done.json"):
        assert after[kept] == before[kept], kept
    epochs_before = torch.load(out / "finetune" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"]
    assert set(json.loads((out / RUN_CONFIG_FILE).read_text())["hashes"]) == {"pretrain", "finetune"}
    assert run_pipeline(with_finetune) is None

    # a changed finetune: refused; with overwrite=true only the finetune is redone
    changed_ft = compose_run("ssl_bayes_z", "mc_barlow_twins", demo_root, out, ["finetune.trainer.max_epochs=2"])
    with pytest.raises(RunConfigMismatch, match=r"finetune\.trainer\.max_epochs: 3 → 2(.|\n)*pretraining is kept"):
        run_pipeline(changed_ft)
    changed_ft.overwrite = True
    refinetuned = run_pipeline(changed_ft)
    assert refinetuned is not None and refinetuned["metrics"] == first["metrics"]
    assert snapshot(out)["checkpoints/model.ckpt"] == before["checkpoints/model.ckpt"]
    last_ft = torch.load(out / "finetune" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last_ft["epoch"] == epochs_before - 1  # two epochs, not the three of the first finetune

    # overwrite=true with another beta: the run is redone with the new config
    beta = pretrain_only(demo_root, out, "train.beta_scale=0.01", "overwrite=true")
    redone = run_pipeline(beta)
    assert redone is not None and redone["metadata"]["beta_scale"] == 0.01 and "offline_metrics" not in redone
    assert redone["metrics"] != first["metrics"]
    assert not (out / "finetune").exists()  # the old finetune was part of the stale run
    assert json.loads((out / RUN_CONFIG_FILE).read_text())["parts"]["pretrain"]["train.beta_scale"] == 0.01


@pytest.mark.slow
def test_a_cut_short_model_ckpt_of_a_finished_run_is_detected(demo_root: Path, tmp_path: Path) -> None:
    """The rerun names the file and the fix instead of saying "finished"; overwrite=true redoes the run."""
    out = tmp_path / "run"
    cfg = pretrain_only(demo_root, out)
    first = run_pipeline(cfg)
    model_ckpt = out / "checkpoints" / "model.ckpt"
    model_ckpt.write_bytes(model_ckpt.read_bytes()[:1000])
    before = snapshot(out)
    with pytest.raises(DamagedRunError) as info:
        run_pipeline(cfg)
    message = str(info.value)
    assert f"{model_ckpt} is missing or cut short" in message and "overwrite=true" in message
    assert f"rm -r {out}" in message and "dvc repro" in message
    assert snapshot(out) == before
    cfg.overwrite = True
    again = run_pipeline(cfg)
    assert again is not None and checkpoint_is_intact(model_ckpt)
    assert again["metrics"] == first["metrics"]  # the same config on CPU: the same numbers


@pytest.mark.slow
def test_the_script_refuses_a_changed_config_and_names_the_keys(demo_root: Path, tmp_path: Path) -> None:
    """The README's scenario as a user runs it: the same command with another beta and more epochs, as a
    multirun (Hydra's own runs/ inside the output folder is not taken for the run's contents)."""
    out = tmp_path / "run"
    base = [
        sys.executable,
        str(SCRIPT),
        "-m",
        "dataset=demo",
        f"dataset.data_dir={demo_root}",
        "+model/task/ssl@train=ssl_bayes_z",
        "model/loss=mc_barlow_twins",
        "train.mc_samples=2",
        f"output_path={out}",
        *PRETRAIN_ONLY,
    ]
    run = functools.partial(subprocess.run, cwd=tmp_path, env=script_env(), capture_output=True, text=True)
    first = run(base, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (out / "runs" / "0" / ".hydra").is_dir() and (out / RUN_CONFIG_FILE).is_file()
    before = {k: v for k, v in snapshot(out).items() if not k.startswith("runs/")}
    changed = run([*base, "train.beta_scale=0.01", "train.trainer.max_epochs=20"], timeout=300)
    assert changed.returncode != 0
    text = changed.stdout + changed.stderr
    assert "RunConfigMismatch" in text and "train.beta_scale: 0.001 → 0.01" in text, text[-3000:]
    assert "train.trainer.max_epochs: 1 → 20" in text and "overwrite=true" in text
    assert {k: v for k, v in snapshot(out).items() if not k.startswith("runs/")} == before
