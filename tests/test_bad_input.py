"""Every bad input gets a clear error: the exception type, the offending path or key, and how to fix it.

One test per kind of bad input (datasets, image files and lists, detector names, config keys,
model arguments, batches, checkpoints, runs folders, output folders, embedding and JSON files),
plus the safety audit: unsafe checkpoints are refused without being unpickled, and a static
``ast`` scan of ``src/`` fails when someone adds ``eval``/``exec``, an unpickling call, or a
``torch.load`` without ``weights_only=True``.
"""

from __future__ import annotations

import ast
import os
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig
from PIL import Image

from src.data.datamodule import CIFAR10DataModule, DemoDataModule, ImageNetDataModule
from src.data.datamodule.transfer_learning import PrecomputedRepresentationsDatamodule, load_embeddings
from src.data.dataset import ImageDecodeError, ImageListDataset, ImageListError, load_rgb_image
from src.data.demo import prepare_demo_data
from src.experiments.scripts import demo_linear_probing, demo_report, run_ood_study
from src.model.loss.barlow_twins import BarlowTwinsLoss
from src.model.loss.vicreg import VICRegLoss
from src.ood.detectors import build_detector
from src.ood.report import make_report
from src.ood.study import discover_runs, run_study
from src.task.checkpoint import load_ssl_model
from src.train.pipeline import build_datamodule
from src.utils.checkpoint import CheckpointError, load_checkpoint
from src.utils.io import atomic_write, read_json, write_text
from tests.conftest import build_model, three_view_batch
from tests.data.conftest import write_cifar10, write_image_folder

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
CONF = SRC / "experiments" / "conf"


def _q(path: Path | str) -> str:
    """``path`` as a regex that matches it literally."""
    return re.escape(str(path))


@pytest.fixture
def cifar_integrity_ok(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision's CIFAR md5 check replaced by a presence check (fixture files cannot match the digests)."""
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny) demo dataset: image lists, images and protocol.json."""
    return prepare_demo_data(tmp_path_factory.mktemp("demo") / "demo", image_size=8)


# ============================================================================ 1. missing dataset root
@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda root: CIFAR10DataModule(root, task="ssl"),
            r"CIFAR-10 not found at .*missing data_batch_1.*download=true",
        ),
        (
            lambda root: ImageNetDataModule(root, task="ssl"),
            r"ImageNet not found at .*missing train/ and val/.*extract",
        ),
        (
            lambda root: DemoDataModule(root, task="ssl", download=False),
            r"demo dataset is missing: .*protocol\.json does not exist\. Build it with .*prepare_demo_data\.py",
        ),
    ],
    ids=["cifar10", "imagenet", "demo"],
)
def test_missing_dataset_root(tmp_path: Path, make: Any, match: str) -> None:
    root = tmp_path / "no_such_dataset"
    with pytest.raises(FileNotFoundError, match=match) as info:
        make(root).setup("fit")
    assert str(root) in str(info.value)


# ============================================================================ 2. empty and partial dataset folders
@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda root: CIFAR10DataModule(root, task="ssl"), r"CIFAR-10 not found at .*Expected layout"),
        (lambda root: ImageNetDataModule(root, task="ssl"), r"ImageNet not found at .*Expected layout"),
        (lambda root: DemoDataModule(root, task="ssl", download=False), r"demo dataset is missing.*Build it with"),
    ],
    ids=["cifar10", "imagenet", "demo"],
)
def test_empty_dataset_folder(tmp_path: Path, make: Any, match: str) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(FileNotFoundError, match=match) as info:
        make(root).setup("fit")
    assert str(root) in str(info.value)


def test_cifar10_with_a_missing_batch_file(tmp_path: Path, cifar_integrity_ok: None) -> None:
    write_cifar10(tmp_path / "cifar10")
    (tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_3").unlink()
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    with pytest.raises(FileNotFoundError, match=rf"{_q(folder)}: missing data_batch_3\. .*extract it into"):
        CIFAR10DataModule(tmp_path / "cifar10", task="ssl").setup("fit")


def test_imagenet_class_folder_without_images(tmp_path: Path) -> None:
    root = tmp_path / "imagenet"
    write_image_folder(root)
    empty_class = root / "train" / "n01440764"
    for image in empty_class.iterdir():
        image.unlink()
    with pytest.raises(
        FileNotFoundError,
        match=rf"1 of 3 class folders in {_q(root / 'train')} hold no image: n01440764\. Put the class's \*\.JPEG",
    ):
        ImageNetDataModule(root, task="ssl").setup("fit")


def test_imagenet_split_with_class_folders_but_no_image(tmp_path: Path) -> None:
    root = tmp_path / "imagenet"
    for split in ("train", "val"):
        (root / split / "n01440764").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=rf"{_q(root / 'train')} holds class folders but no image .*expected"):
        ImageNetDataModule(root, task="ssl").setup("fit")


# ============================================================================ 3. corrupted image files
def test_truncated_jpeg_in_imagenet_names_the_file(tmp_path: Path) -> None:
    root = tmp_path / "imagenet"
    write_image_folder(root)
    dm = ImageNetDataModule(root, task="supervised")
    dm.setup("fit")
    assert dm.val_ds is not None
    path, _ = dm.val_ds.samples[0]  # type: ignore[attr-defined]
    Path(path).write_bytes(Path(path).read_bytes()[:200])  # a download cut short
    with pytest.raises(ImageDecodeError, match=rf"cannot decode image '{_q(path)}' .*truncated.*replace it"):
        dm.val_ds[0]
    dm.val_ds[1]  # the others still load


def test_garbage_jpeg_in_imagenet_names_the_file(tmp_path: Path) -> None:
    root = tmp_path / "imagenet"
    write_image_folder(root)
    dm = ImageNetDataModule(root, task="supervised")
    dm.setup("fit")
    assert dm.train_ds is not None
    path, _ = dm.train_ds.samples[2]  # type: ignore[attr-defined]
    Path(path).write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(ImageDecodeError, match=rf"cannot decode image '{_q(path)}' .*not an image"):
        dm.train_ds[2]


def test_corrupted_png_through_an_image_list(tmp_path: Path) -> None:
    images = tmp_path / "images_classic"
    images.mkdir()
    Image.new("RGB", (8, 8), "red").save(images / "good.png")
    (images / "bad.png").write_bytes((images / "good.png").read_bytes()[:40])
    lst = tmp_path / "list.txt"
    lst.write_text("good.png 0\nbad.png 1\n")
    ds = ImageListDataset(images, lst)
    assert ds[0][1] == 0
    with pytest.raises(ImageListError, match=rf"cannot decode image '{_q(images / 'bad.png')}' .*line 2.*replace it"):
        ds[1]


def test_load_rgb_image_of_a_vanished_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=rf"image '{_q(tmp_path / 'gone.JPEG')}' disappeared.*restore"):
        load_rgb_image(tmp_path / "gone.JPEG")


# ============================================================================ 4. image lists
def test_image_list_line_naming_a_missing_file(tmp_path: Path) -> None:
    images = tmp_path / "images_classic"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "a.png")
    lst = tmp_path / "list.txt"
    lst.write_text("a.png 0\nmissing/b.png 1\n")
    with pytest.raises(
        FileNotFoundError,
        match=rf"names 1 missing image file\(s\): line 2: '{_q(images / 'missing/b.png')}'.*regenerate",
    ):
        ImageListDataset(images, lst)


def test_image_list_line_with_a_bad_label(tmp_path: Path) -> None:
    images = tmp_path / "images_classic"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "a.png")
    lst = tmp_path / "list.txt"
    lst.write_text("a.png 0\na.png cat\n")
    with pytest.raises(ImageListError, match=rf"'{_q(lst)}', line 2: label 'cat' is not an integer; .*integer class"):
        ImageListDataset(images, lst)


# ============================================================================ 5. unknown OOD detector
def test_unknown_detector_name() -> None:
    with pytest.raises(
        ValueError, match=r"--postprocessor-name: .msq. is not a known detector; known: edsimk, .*, msp, "
    ):
        build_detector("msq")


def test_run_ood_study_unknown_postprocessor_name(tmp_path: Path) -> None:
    argv = ["--runs-dir", str(tmp_path), "--in-dataset", "demo", "--data-root-dir", str(tmp_path)]
    argv += ["--postprocessor-name", "mahalanobis", "--output-dir", str(tmp_path / "out")]
    with pytest.raises(ValueError, match=r"--postprocessor-name 'mahalanobis' is not a known detector.*`all`"):
        run_ood_study.main(argv)
    assert not (tmp_path / "out").exists()  # refused before anything was written


# ============================================================================ 6. misspelt config keys
@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.kwargs.mc_sampels=3", "train.kwargs.mc_sampels"),
        ("model.backbone.z_dimm=8", "model.backbone.z_dimm"),
        ("dataset.batch_sise=8", "dataset.batch_sise"),
    ],
)
def test_misspelt_config_key_is_named(override: str, key: str) -> None:
    with initialize_config_dir(version_base=None, config_dir=str(CONF)):
        with pytest.raises(ConfigCompositionException, match=rf"Could not override '{re.escape(key)}'") as info:
            compose(config_name="config", overrides=["+model/task/ssl@train=ssl_bayes_h", override])
    # the struct-mode cause names the full key, so the typo is found at composition, not mid-run
    assert f"full_key: {key}" in str(info.value.__cause__)


def test_unknown_config_option_lists_the_available_ones() -> None:
    with initialize_config_dir(version_base=None, config_dir=str(CONF)):
        with pytest.raises(Exception, match=r"Could not find 'model/task/ssl/ssl_bayes_q'[\s\S]*ssl_bayes_h"):
            compose(config_name="config", overrides=["+model/task/ssl@train=ssl_bayes_q"])


# ============================================================================ 7./8. model arguments
@pytest.mark.parametrize("model_name", ["ssl_bayes_h", "ssl_bayes_z"])
@pytest.mark.parametrize("mc_samples", [0, -2])
def test_mc_samples_below_one(model_name: str, mc_samples: int) -> None:
    with pytest.raises(ValueError, match=rf"train\.mc_samples must be an integer >= 1, got {mc_samples}"):
        build_model(model_name, "mc_barlow_twins", mc_samples=mc_samples)


@pytest.mark.parametrize("model_name", ["ssl_bayes_h", "ssl_bayes_z"])
def test_negative_beta_scale(model_name: str) -> None:
    with pytest.raises(ValueError, match=r"train\.beta_scale must be a number >= 0, got -0\.1"):
        build_model(model_name, "mc_vicreg", beta_scale=-0.1)


# ============================================================================ 9. a batch of one sample
@pytest.mark.parametrize(
    "make_loss", [lambda: BarlowTwinsLoss(batch_size=1), lambda: VICRegLoss(batch_size=1, z_dim=8)], ids=["bt", "vic"]
)
def test_loss_refuses_a_batch_of_one(make_loss: Any) -> None:
    with pytest.raises(ValueError, match=r"batch_size=1; .*at least 2 samples \(dataset\.batch_size\)"):
        make_loss()(torch.randn(1, 8), torch.randn(1, 8))


@pytest.mark.parametrize(
    ("model_name", "loss"), [("ssl", "barlow_twins"), ("ssl", "vicreg"), ("ssl_bayes_h", "mc_vicreg")]
)
def test_training_step_refuses_a_batch_of_one(model_name: str, loss: str) -> None:
    model = build_model(model_name, loss, hidden_dim=16, z_dim=16)
    with pytest.raises(ValueError, match=r"training batch of 1 sample\(s\).*set dataset\.batch_size >= 2"):
        model.training_step(three_view_batch(batch_size=1), 0)


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
    with pytest.raises(CheckpointError, match=rf"{_q(bad)} cannot be read .*truncated or corrupted: delete it"):
        load_ssl_model(bad)


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=rf"{_q(tmp_path / 'model.ckpt')} does not exist"):
        load_checkpoint(tmp_path / "model.ckpt")


def test_checkpoint_whose_weights_do_not_fit_its_hyper_parameters(
    tmp_path: Path, bayes_z_model: torch.nn.Module
) -> None:
    ckpt = _save_checkpoint(bayes_z_model, tmp_path / "model.ckpt", z_dim=64)
    with pytest.raises(CheckpointError, match=rf"{_q(ckpt)}: its weights do not fit .*size mismatch.*rerun the stage"):
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


def test_embedding_file_with_an_arbitrary_object_is_refused_without_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "train.pt"
    torch.save({"reps": torch.zeros(2, 3), "labels": CreatesFileWhenUnpickled(marker)}, path)
    with pytest.raises(ValueError, match=rf"{_q(path)} is not a readable embedding file: .*refused.*re-run pre_embed"):
        load_embeddings(path)
    assert not marker.exists()


# ============================================================================ 12. runs folders with no runs
def test_discover_runs_in_an_empty_or_missing_folder(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / ".gitignore").write_text("*\n")  # dot-entries are not runs
    with pytest.raises(FileNotFoundError, match=rf"--runs-dir {_q(tmp_path / 'runs')} holds no run folders; expected"):
        discover_runs(tmp_path / "runs")
    with pytest.raises(FileNotFoundError, match=rf"--runs-dir {_q(tmp_path / 'nope')} does not exist \(run the"):
        discover_runs(tmp_path / "nope")


def test_run_study_with_no_runs_writes_nothing(tmp_path: Path, demo_root: Path) -> None:
    (tmp_path / "runs").mkdir()
    with pytest.raises(FileNotFoundError, match=r"holds no run folders"):
        run_study(tmp_path / "runs", "demo", demo_root, "msp", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("exists", [True, False], ids=["empty", "missing"])
def test_demo_linear_probing_without_runs(tmp_path: Path, exists: bool) -> None:
    runs = tmp_path / "runs"
    if exists:
        (runs / "unfinished").mkdir(parents=True)  # a run folder without results.json is not finished
    with pytest.raises(FileNotFoundError, match=rf"--runs-dir {_q(runs)} .*run the demo pretraining first"):
        demo_linear_probing.main(["--runs-dir", str(runs), "--embeddings-dir", str(tmp_path / "emb")])
    assert not (tmp_path / "emb").exists()


def test_demo_report_without_runs(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    argv = ["--runs-dir", str(tmp_path / "runs"), "--ood-report-dir", str(tmp_path)]
    argv += ["--probe-report-dir", str(tmp_path), "--output-dir", str(tmp_path / "report")]
    with pytest.raises(FileNotFoundError, match=rf"no <run>/results\.json under {_q(tmp_path / 'runs')}; run the demo"):
        demo_report.main(argv)


# ============================================================================ 13. unwritable output folders
def test_output_path_under_a_regular_file(tmp_path: Path) -> None:
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match=rf"cannot create the output folder .*{_q(blocker)} is a regular file.*move"):
        write_text(blocker / "ood" / "runs.json", "[]")


def test_output_path_that_is_a_folder(tmp_path: Path) -> None:
    (tmp_path / "runs.json").mkdir()
    with pytest.raises(IsADirectoryError, match=rf"cannot write {_q(tmp_path / 'runs.json')}: a folder of that name"):
        atomic_write(tmp_path / "runs.json", lambda p: p.write_text("[]"))


def test_output_folder_refusing_new_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a read-only folder does to the temporary file, simulated so that it also runs as root."""
    import src.utils.io as io_module

    def refuse(*args: Any, **kwargs: Any) -> tuple[int, str]:
        raise PermissionError(13, "Permission denied", str(tmp_path / ".x.json.tmp"))

    monkeypatch.setattr(io_module.tempfile, "mkstemp", refuse)
    with pytest.raises(OSError, match=rf"cannot write into the output folder {_q(tmp_path)} \(Permission denied\)"):
        write_text(tmp_path / "x.json", "{}")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_output_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OSError, match=rf"cannot write into the output folder {_q(folder)} .*make it writable"):
            write_text(folder / "x.json", "{}")
    finally:
        folder.chmod(0o700)


# ========================================================================= 14. embedding/JSON files, batch sizes
def test_missing_embedding_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=rf"embedding file {_q(tmp_path / 'train.pt')} does not exist; run"):
        load_embeddings(tmp_path / "train.pt")
    dm = PrecomputedRepresentationsDatamodule(tmp_path / "emb", batch_size=4, test_mode=True)
    with pytest.raises(FileNotFoundError, match=rf"no embeddings in {_q(tmp_path / 'emb')}: train\.pt is missing"):
        dm.setup("fit")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"not a torch file", r"is not a readable embedding file: it is not a torch\.save file or it is truncated"),
        (
            {"features": torch.zeros(2, 3)},
            r"is not an embedding file: expected a dict with tensors 'reps' and 'labels'",
        ),
        ({"reps": [[0.0, 1.0]], "labels": torch.zeros(1)}, r"'reps' and 'labels' must be tensors, got list"),
        ({"reps": torch.zeros(3), "labels": torch.zeros(3)}, r"expected reps \[N, D\] or \[N, M, D\]"),
        ({"reps": torch.zeros(3, 2), "labels": torch.zeros(2)}, r"3 representations but 2 labels"),
    ],
    ids=["garbage", "wrong_keys", "not_tensors", "wrong_rank", "length_mismatch"],
)
def test_embedding_file_of_the_wrong_format(tmp_path: Path, content: Any, match: str) -> None:
    path = tmp_path / "train.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(ValueError, match=rf"{_q(path)}.*{match}.*re-run pre_embed_datasets\.py"):
        load_embeddings(path)


def test_results_json_that_is_not_json(tmp_path: Path) -> None:
    results = tmp_path / "runs" / "ssl_barlow" / "results.json"
    results.parent.mkdir(parents=True)
    results.write_text('{"metrics": {"val_online_acc": 0.9')  # cut short
    with pytest.raises(ValueError, match=rf"{_q(results)} is not valid JSON .*delete it and rerun"):
        read_json(results)
    argv = ["--runs-dir", str(tmp_path / "runs"), "--ood-report-dir", str(tmp_path)]
    argv += ["--probe-report-dir", str(tmp_path), "--output-dir", str(tmp_path / "report")]
    with pytest.raises(ValueError, match=rf"{_q(results)} is not valid JSON"):
        demo_report.main(argv)


def test_ood_runs_json_that_is_not_json(tmp_path: Path) -> None:
    runs_json = tmp_path / "msp" / "runs.json"
    runs_json.parent.mkdir()
    runs_json.write_bytes(b"\x00\xff binary")
    with pytest.raises(ValueError, match=rf"{_q(runs_json)} is not valid JSON"):
        make_report(tmp_path, tmp_path / "report")
    runs_json.write_text('{"run_name": "a"}')  # JSON, but not a list of run records
    with pytest.raises(ValueError, match=rf"{_q(runs_json)} is not a runs\.json of run_ood_study\.py"):
        make_report(tmp_path, tmp_path / "report")


def test_ood_study_cache_that_is_not_json(tmp_path: Path, demo_root: Path) -> None:
    (tmp_path / "runs" / "ssl_barlow").mkdir(parents=True)
    cache = tmp_path / "out" / "ssl_barlow.json"
    cache.parent.mkdir()
    cache.write_text('{"run_name": "ssl_barlow", "ood_sc')
    with pytest.raises(ValueError, match=rf"{_q(cache)} is not valid JSON .*delete it"):
        run_study(tmp_path / "runs", "demo", demo_root, "msp", tmp_path / "out", progress=False)


def test_demo_protocol_json_that_is_not_json(tmp_path: Path) -> None:
    protocol = tmp_path / "benchmark_imglist" / "demo" / "protocol.json"
    protocol.parent.mkdir(parents=True)
    protocol.write_text("{")
    with pytest.raises(ValueError, match=rf"{_q(protocol)} is not valid JSON .*delete it"):
        DemoDataModule(tmp_path, task="ssl", download=False).setup("fit")


@pytest.mark.parametrize(
    ("batch_size", "error", "match"),
    [
        (0, ValueError, r"dataset\.batch_size must be positive, got 0; set e\.g\. dataset\.batch_size=256"),
        (-8, ValueError, r"dataset\.batch_size must be positive, got -8"),
        (2.5, TypeError, r"dataset\.batch_size must be an integer, got 2\.5 of type float"),
        (True, TypeError, r"dataset\.batch_size must be an integer, got True of type bool"),
    ],
)
def test_bad_batch_size(tmp_path: Path, batch_size: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        CIFAR10DataModule(tmp_path, task="ssl", batch_size=batch_size)


@pytest.mark.parametrize("batch_size", [0, -1])
def test_bad_batch_size_through_the_composed_config(tmp_path: Path, batch_size: int) -> None:
    with initialize_config_dir(version_base=None, config_dir=str(CONF)):
        cfg: DictConfig = compose(
            config_name="config",
            overrides=[
                "+model/task/ssl@train=ssl",
                "dataset=demo",
                f"dataset.data_dir={tmp_path}",
                f"dataset.batch_size={batch_size}",
            ],
        )
    with pytest.raises(Exception, match=rf"dataset\.batch_size must be positive, got {batch_size}"):
        build_datamodule(cfg)


def test_bad_probe_batch_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer, got 0; set batch_size in the linear"):
        PrecomputedRepresentationsDatamodule(tmp_path, batch_size=0)


# ============================================================================ safety audit: a static scan of src/
_PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "marshal", "shelve", "joblib", "cloudpickle"}
_ALWAYS_UNSAFE_CALLS = {
    "eval",
    "exec",
    "builtins.eval",
    "builtins.exec",
    "yaml.unsafe_load",
    "yaml.full_load",
    "pd.read_pickle",
    "pandas.read_pickle",
    "torch.jit.load",
} | {f"{m}.{f}" for m in _PICKLE_MODULES for f in ("load", "loads", "Unpickler", "open")}
_SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}
_INSTANTIATE = {"instantiate", "hydra.utils.instantiate", "get_class", "get_method", "hydra.utils.get_class"}


def _dotted(node: ast.AST) -> str:
    """``torch.serialization.load`` for the call target ``torch.serialization.load`` (``""`` if not a plain name)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_constructs(source: str, filename: str = "<src>") -> list[str]:
    """Every construct in ``source`` that can execute code from data, as ``file:line: what``."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in _PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names = {a.name for a in node.names}
            if module.split(".")[0] in _PICKLE_MODULES or (
                module in {"torch", "torch.serialization", "builtins"} and names & {"load", "eval", "exec"}
            ):
                found.append(f"{where}: from {module} import {', '.join(sorted(names))}")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            kwargs = {k.arg: k.value for k in node.keywords if k.arg}
            if name in _ALWAYS_UNSAFE_CALLS:
                found.append(f"{where}: {name}()")
            elif name in {"torch.load", "torch.serialization.load"} and not _is_true(kwargs.get("weights_only")):
                found.append(f"{where}: {name}() without weights_only=True")
            elif name in {"np.load", "numpy.load"} and _is_true(kwargs.get("allow_pickle")):
                found.append(f"{where}: {name}(allow_pickle=True)")
            elif name == "yaml.load":
                loader = kwargs.get("Loader", node.args[1] if len(node.args) > 1 else None)
                if loader is None or _dotted(loader).split(".")[-1] not in _SAFE_YAML_LOADERS:
                    found.append(f"{where}: yaml.load() without a safe Loader")
            elif name in _INSTANTIATE:
                # only the composed config (``cfg.<node>``) may name classes, never data read from files
                target = node.args[0] if node.args else None
                if target is None or not _dotted(target).startswith("cfg."):
                    found.append(f"{where}: {name}() on something other than the composed config")
    return found


def test_static_scan_catches_every_unsafe_construct() -> None:
    """The scanner itself: each bad line below is reported, the good ones are not."""
    bad = """
import pickle
from torch import load
eval("1")
exec("x = 1")
torch.load(path)
torch.load(path, weights_only=False)
torch.serialization.load(path)
np.load(path, allow_pickle=True)
yaml.load(text)
yaml.load(text, Loader=yaml.Loader)
pd.read_pickle(path)
hydra.utils.instantiate(ckpt["hyper_parameters"]["cl_loss"])
"""
    good = """
model.eval()
self.eval()
torch.load(path, map_location="cpu", weights_only=True)
np.load(path)
np.load(path, allow_pickle=False)
yaml.load(text, Loader=yaml.SafeLoader)
hydra.utils.instantiate(cfg.dataset, _convert_="all")
"""
    found = unsafe_constructs(bad)
    assert len(found) == len([line for line in bad.splitlines() if line.strip()]), found
    assert unsafe_constructs(good) == []


def test_src_has_no_unsafe_constructs() -> None:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 30  # the scan really covers the source tree
    found = [hit for path in files for hit in unsafe_constructs(path.read_text(), str(path.relative_to(ROOT)))]
    assert found == [], "unsafe constructs in src/ (use weights_only=True / allow-lists):\n" + "\n".join(found)
