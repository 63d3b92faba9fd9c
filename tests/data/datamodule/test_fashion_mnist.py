"""The Fashion-MNIST datamodule (src/data/datamodule/fashion_mnist.py) on tiny IDX files and on the real ones.

The fixtures (tests/data/conftest.py) write tiny sets in the real on-disk format; ``test_real_files``
reads Debian's package (installed by CI) through the datamodule.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from src.data.datamodule import DATAMODULES, FashionMNISTDataModule
from src.data.prepare import fashion_mnist_data as fm
from tests.data.conftest import FMNIST_TRAIN_PER_CLASS as TRAIN_PER_CLASS


def test_registry_and_subset_helpers() -> None:
    assert DATAMODULES["fashion_mnist"] is DATAMODULES["fashion_mnist_split"] is FashionMNISTDataModule
    labels = np.repeat(np.arange(3), 5)
    a = fm.subset_indices(labels, [0, 1, 2], 2, seed=0)
    assert len(a) == 6 and np.all(np.bincount(labels[a]) == 2) and np.all(np.diff(a) > 0)
    # the first classes draw the same subset whatever classes follow (datamodule vs OOD lists)
    np.testing.assert_array_equal(fm.subset_indices(labels, [0, 1], 2, seed=0), a[labels[a] < 2])
    assert len(fm.subset_indices(labels, [0, 1, 2], None, seed=0)) == 15
    with pytest.raises(ValueError, match=r"in \[1, 5\]"):
        fm.subset_indices(labels, [0], 6, seed=0)


def test_ssl_batch_has_three_views(fashion_mnist_dir: Path) -> None:
    dm = FashionMNISTDataModule(data_dir=fashion_mnist_dir, task="ssl_bayes_z", batch_size=8, val_split=0.25)
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_ds), len(dm.val_ds), len(dm.test_ds)) == (90, 30, 100)
    (v1, v2, v3), y = next(iter(dm.train_dataloader()))
    for v in (v1, v2, v3):
        assert v.shape == (8, 3, 28, 28) and v.dtype == torch.float32
        torch.testing.assert_close(v[:, 0], v[:, 1])  # grey expanded to three equal channels
    assert y.dtype == torch.int64 and y.shape == (8,)
    # view 3 is the un-augmented image, normalised with the grey statistics
    (_, _, v3), y = next(iter(dm.test_dataloader()))
    images, labels = fm.load_split(fashion_mnist_dir, train=False)
    expected = (torch.from_numpy(images[0]).float() / 255 - fm.NORMALIZE["mean"][0]) / fm.NORMALIZE["std"][0]
    torch.testing.assert_close(v3[0, 0], expected, atol=1e-6, rtol=0)
    assert int(y[0]) == int(labels[0])


def test_split_classes_and_subsets(fashion_mnist_dir: Path) -> None:
    dm = FashionMNISTDataModule(
        data_dir=fashion_mnist_dir,
        task="supervised",
        classes=[3, 0, 5],
        train_per_class="None",
        test_per_class=4,
        val_split=0,
        batch_size=12,
    )
    dm.setup(None)
    assert len(dm.train_ds) == 3 * TRAIN_PER_CLASS and len(dm.test_ds) == 12
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape[1:] == (3, 28, 28)
    # labels are the positions in `classes`; the image grey level still tells the original class
    originals = (x[:, 0] * fm.NORMALIZE["std"][0] + fm.NORMALIZE["mean"][0]).mean(dim=(1, 2)) * 255 // 20
    assert {(int(a), int(b)) for a, b in zip(y, originals)} <= {(0, 3), (1, 0), (2, 5)}
    for bad in ([], [0, 0], [10]):
        with pytest.raises(ValueError, match="distinct class ids"):
            FashionMNISTDataModule(data_dir=fashion_mnist_dir, task="ssl", classes=bad)
    with pytest.raises(ValueError, match=r"dataset\.train_per_class"):
        FashionMNISTDataModule(data_dir=fashion_mnist_dir, task="ssl", train_per_class=0)
    # a val split smaller than one batch (drop_last) is refused before any training
    small = FashionMNISTDataModule(data_dir=fashion_mnist_dir, task="ssl", train_per_class=2, batch_size=8)
    small.setup("fit")
    with pytest.raises(ValueError, match=r"val split .* has 4 samples, fewer than dataset.batch_size=8"):
        small.check_batches()
    fits = FashionMNISTDataModule(data_dir=fashion_mnist_dir, task="ssl", train_per_class=2, batch_size=4)
    fits.setup("fit")
    fits.check_batches()


# ---------------------------------------------------------------------------------------- the real files


@pytest.mark.skipif(
    not (fm.DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed (CI installs it: .ci/run)",
)
def test_real_files(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("real") / "fashion_mnist"
    dm = FashionMNISTDataModule(data_dir=root, task="ssl", batch_size=16, num_workers=0)
    dm.setup(None)  # installs from /usr/share/datasets/fashion-mnist
    counts = fm.verify_raw(root)
    assert counts["train-images-idx3-ubyte"] == fm.NUM_TRAIN and counts["t10k-images-idx3-ubyte"] == fm.NUM_TEST
    train_x, train_y = fm.load_split(root, train=True)
    test_x, test_y = fm.load_split(root, train=False)
    assert train_x.shape == (60000, 28, 28) and test_x.shape == (10000, 28, 28) and train_x.dtype == np.uint8
    assert np.all(np.bincount(train_y) == 6000) and np.all(np.bincount(test_y) == 1000)
    assert train_x.min() == 0 and train_x.max() == 255
    pixels = train_x.astype(np.float64) / 255
    assert pixels.mean() == pytest.approx(fm.NORMALIZE["mean"][0], abs=1e-4)
    assert pixels.std() == pytest.approx(fm.NORMALIZE["std"][0], abs=1e-4)
    assert (len(dm.train_ds), len(dm.val_ds), len(dm.test_ds)) == (48000, 12000, 10000)
    (v1, v2, v3), y = next(iter(dm.train_dataloader()))
    assert all(v.shape == (16, 3, 28, 28) for v in (v1, v2, v3)) and 0 <= int(y.min()) <= int(y.max()) <= 9
    lo, hi = -fm.NORMALIZE["mean"][0] / fm.NORMALIZE["std"][0], (1 - fm.NORMALIZE["mean"][0]) / fm.NORMALIZE["std"][0]
    assert float(v3.min()) >= lo - 1e-5 and float(v3.max()) <= hi + 1e-5
    assert not torch.equal(v1, v2)  # two random views
