"""Tests for vae_jax.data. Real-data tests need VAE_JAX_DATASETS=<root of raw files>."""

import os
import pathlib
import socket
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import data

MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
RAW_FILES = {"mnist": MNIST_FILES, "fashion_mnist": MNIST_FILES,
             "binarized_mnist": ("binarized_mnist_train.amat", "binarized_mnist_valid.amat",
                                 "binarized_mnist_test.amat")}


@pytest.fixture
def offline(monkeypatch):
    """Makes the network look unreachable, so no test waits on TFDS download retries."""
    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")
    monkeypatch.setattr(socket, "create_connection", refuse)
    for var in data._PROXY_VARS:
        monkeypatch.delenv(var, raising=False)


def _placeholders(folder: pathlib.Path, name: str) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    for f in RAW_FILES[name]:
        (folder / f).write_bytes(b"")
    return folder


# --- digits ----------------------------------------------------------------------------

def test_digits_shapes_range_labels_deterministic():
    ds = data.load("digits")
    assert ds.train_images.shape == (1500, 8, 8, 1) and ds.test_images.shape == (297, 8, 8, 1)
    assert ds.image_shape == (8, 8, 1)
    assert ds.train_images.dtype == np.float32 and ds.train_labels.dtype == np.int32
    for x in (ds.train_images, ds.test_images):
        assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(ds.train_labels)) == set(range(10))
    assert ds.test_labels.shape == (297,) and ds.test_labels.max() <= 9
    assert (ds.num_classes, ds.statically_binarized) == (10, False)
    assert (ds.train_split, ds.test_split) == ("train", "test")
    again = data.load("digits")
    np.testing.assert_array_equal(ds.train_images, again.train_images)
    np.testing.assert_array_equal(ds.test_labels, again.test_labels)
    # the split is a shuffle (not the file order) and train/test together are all 1797 images
    from sklearn.datasets import load_digits
    target = load_digits().target
    assert not np.array_equal(ds.train_labels, target[:1500])
    assert np.array_equal(np.sort(np.concatenate([ds.train_labels, ds.test_labels])),
                          np.sort(target))


def test_digits_does_not_import_tensorflow():
    # A fresh interpreter: other tests in this process may already have imported TF.
    import subprocess
    code = ("import sys; from vae_jax import data; data.load('digits'); "
            "assert 'tensorflow' not in sys.modules, 'TF imported'")
    root = pathlib.Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_digits_rejects_other_splits():
    with pytest.raises(data.DataError, match="digits"):
        data.load("digits", train_split="train[:100]")


# --- TFDS path, mocked --------------------------------------------------------------------

def test_tfds_mnist_mocked(tmp_path, offline):
    tfds = pytest.importorskip("tensorflow_datasets")
    root = tmp_path / "raw"
    _placeholders(root / "mnist", "mnist")  # root layout: <manual_dir>/mnist/...
    with tfds.testing.mock_data(num_examples=12):
        ds = data.load("mnist", data_dir=str(tmp_path / "tfds"), manual_dir=str(root))
    assert ds.train_images.shape == (12, 28, 28, 1) and ds.test_images.shape == (12, 28, 28, 1)
    assert ds.train_images.dtype == np.float32
    assert 0.0 <= ds.train_images.min() and ds.train_images.max() <= 1.0
    assert ds.train_images.max() > 0.5  # uint8 0..255 was divided by 255, not clipped
    assert ds.train_labels.dtype == np.int32 and ds.train_labels.shape == (12,)
    assert ds.test_labels.min() >= 0 and ds.test_labels.max() <= 9
    assert (ds.num_classes, ds.statically_binarized) == (10, False)


def test_tfds_binarized_mnist_mocked(tmp_path, offline):
    tfds = pytest.importorskip("tensorflow_datasets")
    folder = _placeholders(tmp_path / "bm", "binarized_mnist")  # the dataset's own folder
    with tfds.testing.mock_data(num_examples=9, max_value=2):  # pixels 0/1 as TFDS stores them
        ds = data.load("binarized_mnist", train_split="train+validation",
                       data_dir=str(tmp_path / "tfds"), manual_dir=str(folder))
    assert ds.train_images.shape == (9, 28, 28, 1)
    assert set(np.unique(ds.train_images)) == {0.0, 1.0}
    assert ds.train_labels is None and ds.test_labels is None and ds.num_classes is None
    assert ds.statically_binarized
    assert (ds.train_split, ds.test_split) == ("train+validation", "test")


# --- binarize / scale ------------------------------------------------------------------

def test_binarize():
    p = jnp.full((200, 28, 28, 1), 0.3, jnp.float32)
    k1, k2 = jax.random.split(jax.random.key(0))
    b = jax.jit(data.binarize)(p, k1)
    assert b.shape == p.shape and b.dtype == jnp.float32
    assert set(np.unique(np.asarray(b))) == {0.0, 1.0}
    assert abs(float(b.mean()) - 0.3) < 0.01
    np.testing.assert_array_equal(b, data.binarize(p, k1))
    assert not np.array_equal(b, data.binarize(p, k2))
    ramp = jnp.linspace(0.0, 1.0, 101)
    out = data.binarize(ramp, k1)
    assert out[0] == 0.0 and out[-1] == 1.0  # p = 0 and p = 1 are deterministic


def test_scale():
    x = jnp.array([0.0, 0.25, 1.0])
    np.testing.assert_allclose(data.scale(x, "symmetric"), [-1.0, -0.5, 1.0])
    np.testing.assert_array_equal(data.scale(x, "unit"), x)
    with pytest.raises(ValueError, match="symmetric"):
        data.scale(x, "bogus")


# --- errors ----------------------------------------------------------------------------

def test_unknown_name():
    pytest.importorskip("tensorflow_datasets")  # any name that is not built in is a TFDS name
    with pytest.raises(data.DataError, match="fashion_mnist") as e:
        data.load("no_such_dataset_anywhere")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["mnist", "binarized_mnist"])
def test_missing_files_fail_fast_with_file_names(tmp_path, offline, name):
    pytest.importorskip("tensorflow_datasets")
    empty = tmp_path / "manual"
    empty.mkdir()
    with pytest.raises(data.DataError) as e:
        data.load(name, data_dir=str(tmp_path / "tfds"), manual_dir=str(empty))
    msg = str(e.value)
    assert "\n" not in msg and repr(name) in msg and "config.data.manual_dir" in msg
    assert str(empty) in msg
    for f in RAW_FILES[name]:
        assert f in msg
    # with no manual_dir at all the message points at where the files belong
    with pytest.raises(data.DataError, match=f"<manual_dir>/{name}"):
        data.load(name, data_dir=str(tmp_path / "tfds"))


def test_corrupt_files_give_one_line_error(tmp_path, offline):
    pytest.importorskip("tensorflow_datasets")
    folder = tmp_path / "mnist"
    folder.mkdir()
    for f in MNIST_FILES:
        (folder / f).write_bytes(b"not the real file")
    with pytest.raises(data.DataError, match="checksum") as e:
        data.load("mnist", data_dir=str(tmp_path / "tfds"), manual_dir=str(folder))
    assert "\n" not in str(e.value) and "'mnist'" in str(e.value)


def test_check_rejects_bad_arrays():
    good = np.zeros((2, 4, 4, 1), np.float32)
    data._check("x", "train", good, np.array([0, 9], np.int32), 10, False)
    bad = {
        "float32": (good.astype(np.float64), np.array([0, 1], np.int32), 10, False),
        "NaN": (np.full_like(good, np.nan), np.array([0, 1], np.int32), 10, False),
        "within": (good + 2.0, np.array([0, 1], np.int32), 10, False),
        "exactly 0 or 1": (good + 0.5, None, None, True),
        "labels": (good, np.array([0, 10], np.int32), 10, False),
    }
    for what, (x, y, k, binary) in bad.items():
        with pytest.raises(data.DataError, match=what):
            data._check("x", "train", x, y, k, binary)


# --- real data -------------------------------------------------------------------------

def _has_raw(root, name):
    return all((pathlib.Path(root) / name / f).is_file() for f in RAW_FILES[name])


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """Loads real datasets, prepared once into one temporary data_dir; cached per call.

    Before mnist is prepared there, a prepare that dies midway (three real files linked, one
    corrupt) is attempted in the same data_dir; its error is kept in `real.partial_failure`.
    """
    root = os.environ.get("VAE_JAX_DATASETS")
    if not root:
        pytest.skip("VAE_JAX_DATASETS is not set")
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    cache = {}

    def get(name, **splits):
        if not _has_raw(root, name):
            pytest.skip(f"raw files for {name} not in {pathlib.Path(root) / name}")
        key = (name, tuple(sorted(splits.items())))
        if key not in cache:
            cache[key] = data.load(name, data_dir=data_dir, manual_dir=root, **splits)
        return cache[key]

    get.data_dir, get.partial_failure = data_dir, None
    if _has_raw(root, "mnist"):
        partial = tmp_path_factory.mktemp("partial")
        for f in MNIST_FILES[1:]:
            (partial / f).symlink_to(pathlib.Path(root) / "mnist" / f)  # links, never copies
        (partial / MNIST_FILES[0]).write_bytes(b"truncated")
        try:
            data.load("mnist", data_dir=data_dir, manual_dir=str(partial))
        except data.DataError as e:
            get.partial_failure = str(e)
    return get


@pytest.mark.realdata
@pytest.mark.parametrize("name, mean", [("mnist", 0.1307), ("fashion_mnist", 0.2860)])
def test_real_labeled(real, name, mean):
    ds = real(name)
    assert ds.train_images.shape == (60000, 28, 28, 1)
    assert ds.test_images.shape == (10000, 28, 28, 1)
    assert ds.train_images.dtype == np.float32 and ds.train_labels.dtype == np.int32
    assert ds.train_images.min() == 0.0 and ds.train_images.max() == 1.0
    # The well-known pixel means. Both datasets share one data_dir and raw file names; plain
    # TFDS would then extract fashion_mnist from mnist's cached files (mean 0.1307).
    assert abs(float(ds.train_images.mean()) - mean) < 2e-3
    for labels, n in ((ds.train_labels, 60000), (ds.test_labels, 10000)):
        counts = np.bincount(labels, minlength=10)
        assert len(counts) == 10 and counts.sum() == n and counts.min() > 0


@pytest.mark.realdata
def test_real_binarized_mnist(real):
    ds = real("binarized_mnist")
    assert ds.train_images.shape == (50000, 28, 28, 1)
    assert ds.test_images.shape == (10000, 28, 28, 1)
    assert set(np.unique(ds.train_images)) == {0.0, 1.0}
    assert set(np.unique(ds.test_images)) == {0.0, 1.0}
    assert 0.1 < float(ds.train_images.mean()) < 0.16
    assert ds.train_labels is None and ds.test_labels is None and ds.statically_binarized
    full = real("binarized_mnist", train_split="train+validation")
    assert full.train_images.shape == (60000, 28, 28, 1)
    assert full.train_split == "train+validation"


@pytest.mark.realdata
def test_real_bad_split(real):
    real("mnist")  # prepared
    with pytest.raises(data.DataError, match="bogus") as e:
        data.load("mnist", test_split="bogus", data_dir=real.data_dir)
    assert "\n" not in str(e.value)


@pytest.mark.realdata
def test_real_failed_prepare_does_not_poison(real):
    """The fixture's failed mnist prepare must not break the real one in the same data_dir
    (test_real_labeled also checks the pixel mean of that mnist)."""
    ds = real("mnist", test_split="test[:100]")
    assert ds.test_images.shape == (100, 28, 28, 1) and ds.train_images.shape[0] == 60000
    msg = real.partial_failure
    assert msg is not None and "checksum" in msg and "'mnist'" in msg and "\n" not in msg
