"""TFDS image datasets by name (through ``tfds.testing.mock_data``, no download), a researcher's
own folder of images and array files, their one-line errors, and the exact uint8 storage."""

from __future__ import annotations

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny
from vae_jax import data, experiment, main, train
from vae_jax.data import tfds_source

tfds = pytest.importorskip("tensorflow_datasets")


def _one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# --- uint8 storage -----------------------------------------------------------------------------

def test_uint8_conversion_in_the_compiled_step_is_the_host_division_exactly():
    u = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    host = u.astype(np.float32)
    host /= 255.0  # how a float32 dataset is made on the host
    cfg = tiny().data
    got = jax.jit(lambda x: data.prepare(x, jax.random.key(0), cfg))(u)
    np.testing.assert_array_equal(np.asarray(got), host)
    sym = jax.jit(lambda x: data.scale(data.to_float(x), "symmetric"))(u)
    np.testing.assert_array_equal(np.asarray(sym), np.asarray(jax.jit(
        lambda x: data.scale(x, "symmetric"))(host)))
    f = np.linspace(0, 1, 7, dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(data.to_float(f)), f)  # float32 passes unchanged


# --- TFDS by name --------------------------------------------------------------------------------

@pytest.fixture
def mock(monkeypatch):
    """TFDS with generated examples (the builders' registered features, nothing downloaded)."""
    monkeypatch.setattr(tfds_source, "online", lambda urls: True)  # mock prepare is a no-op

    def use(n):
        return tfds.testing.mock_data(num_examples=n)
    return use


def _raw(name, split):
    b = tfds.builder(name)
    return next(iter(tfds.as_numpy(b.as_dataset(split=split, batch_size=1000))))


# name, load options, image shape, classes, factor names (a subset)
BUILDERS = [
    ("mnist", {}, (28, 28, 1), 10, ()),
    ("cifar10", {}, (32, 32, 3), 10, ()),
    ("svhn_cropped", {"channels": "grayscale"}, (32, 32, 1), 10, ()),
    ("celeb_a", {"crop": 148, "image_size": 64}, (64, 64, 3), None, ()),
    ("dsprites", {}, (64, 64, 1), None, ("label_shape", "value_scale")),
    ("shapes3d", {"image_size": 32}, (32, 32, 3), None, ("label_floor_hue", "value_orientation")),
]


@pytest.mark.parametrize("name,opts,shape,classes,factors", BUILDERS, ids=[b[0] for b in BUILDERS])
def test_tfds_builders_load_by_name(mock, name, opts, shape, classes, factors):
    with mock(6):
        ds = data.load(name, train_split="train[:50%]", test_split="train[50%:]",
                       storage="uint8", **opts)
        raw = _raw(name, "train[:50%]")
    assert ds.image_shape == shape and ds.test_images.shape[1:] == shape
    assert len(ds.train_images) == len(ds.test_images) == 6  # mock data: 6 per split, any slice
    assert ds.train_images.dtype == np.uint8 and ds.test_images.dtype == np.float32
    assert ds.num_classes == classes and (ds.train_labels is None) == (classes is None)
    if classes:
        np.testing.assert_array_equal(ds.train_labels, raw["label"])
    for f in factors:
        np.testing.assert_array_equal(ds.train_factors[f], raw[f])
    if not opts:  # no transform: the stored bytes are TFDS's
        np.testing.assert_array_equal(ds.train_images, raw["image"])


def test_crop_resize_and_channels_against_direct_computation(mock):
    with mock(4):
        cropped = data.load("cifar10", crop=16, storage="uint8")
        grey = data.load("cifar10", channels="grayscale", storage="uint8")
        rgb = data.load("mnist", channels="rgb", storage="uint8")
        half = data.load("cifar10", image_size=16, storage="uint8")
        x, m = _raw("cifar10", "train")["image"], _raw("mnist", "train")["image"]
    np.testing.assert_array_equal(cropped.train_images, x[:, 8:24, 8:24])
    luma = x.astype(np.float64) @ np.array([0.2989, 0.5870, 0.1140])
    assert np.abs(grey.train_images[..., 0].astype(np.float64) - luma).max() <= 1.0
    np.testing.assert_array_equal(rgb.train_images, np.repeat(m, 3, axis=-1))
    # antialiased bilinear halving: a triangle filter stretched by 2, taps (1, 3, 3, 1) / 8 around
    # each output pixel, renormalized where they fall outside the image, separable in rows/columns
    w = np.zeros((16, 32))
    for i in range(16):
        for d, t in zip(range(-1, 3), (1, 3, 3, 1)):
            if 0 <= 2 * i + d < 32:
                w[i, 2 * i + d] = t
    w /= w.sum(1, keepdims=True)
    ref = np.einsum("ih,jw,nhwc->nijc", w, w, x.astype(np.float64))
    assert np.abs(half.train_images.astype(np.float64) - ref).max() <= 1.0


def test_unknown_or_imageless_tfds_names_are_one_line(mock):
    with pytest.raises(data.DataError, match="not one of the built-in names") as e:
        data.load("no_such_dataset_anywhere")
    assert "\n" not in str(e.value) and "folder" in str(e.value)
    with mock(2), pytest.raises(data.DataError, match="no 'image' feature") as e:
        data.load("imdb_reviews")
    assert "\n" not in str(e.value)
    with mock(2), pytest.raises(data.DataError, match="crop=64 is larger"):
        data.load("cifar10", crop=64)


# --- own files -----------------------------------------------------------------------------------

def _png(path, a):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a).save(path)


def _images(n, h=8, w=8, c=1, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def test_folder_with_class_subfolders(tmp_path):
    x = _images(10)
    for i, a in enumerate(x):
        _png(tmp_path / "imgs" / ("cat" if i < 4 else "dog") / f"{i:02d}.png", a)
    ds = data.load("folder", path=str(tmp_path / "imgs"), test_fraction=0.2, storage="uint8")
    assert ds.num_classes == 2 and ds.image_shape == (8, 8, 1)
    got = np.concatenate([ds.train_images, (ds.test_images * 255).round().astype(np.uint8)])
    labels = np.concatenate([ds.train_labels, ds.test_labels])
    assert len(ds.test_images) == 2
    order = np.argsort([a.tobytes() for a in got])
    ref = np.argsort([a.tobytes() for a in x])
    np.testing.assert_array_equal(got[order], x[ref])  # every image once, bytes intact
    np.testing.assert_array_equal(labels[order], (np.arange(10) >= 4).astype(np.int32)[ref])


def test_array_files(tmp_path):
    x, xt = _images(20, c=3), _images(5, c=3, seed=1)
    y, yt = np.arange(20) % 3, np.arange(5) % 3
    np.savez(tmp_path / "a.npz", image=x, label=y, test_image=xt, test_label=yt)
    ds = data.load("array", path=str(tmp_path / "a.npz"), storage="uint8")
    np.testing.assert_array_equal(ds.train_images, x)
    np.testing.assert_array_equal(ds.test_images, xt.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(ds.train_labels, y)
    assert ds.num_classes == 3
    f = np.random.default_rng(2).random((10, 6, 6), dtype=np.float32)
    np.save(tmp_path / "f.npy", f)
    ds = data.load("array", path=str(tmp_path / "f.npy"), test_fraction=0.3)
    assert ds.train_images.dtype == np.float32 and ds.train_labels is None
    both = np.concatenate([ds.train_images, ds.test_images])[..., 0]
    assert len(ds.test_images) == 3
    np.testing.assert_array_equal(np.sort(both.reshape(10, -1), axis=0), np.sort(f.reshape(10, -1), axis=0))


def _bad_files(tmp):
    (tmp / "empty").mkdir()
    _png(tmp / "mixed" / "a.png", _images(1, 8, 8)[0])
    _png(tmp / "mixed" / "b.png", _images(1, 9, 9)[0])
    (tmp / "broken").mkdir()
    (tmp / "broken" / "x.png").write_bytes(b"not a png")
    np.save(tmp / "int.npy", np.zeros((4, 8, 8), np.int64))
    np.save(tmp / "flat.npy", np.zeros((4, 64), np.float32))
    np.save(tmp / "range.npy", np.full((4, 8, 8), 3.0, np.float32))
    np.savez(tmp / "nokey.npz", pixels=np.zeros((4, 8, 8), np.uint8))
    (tmp / "junk.npz").write_bytes(b"PK not really")
    return [("folder", tmp / "nothere", "does not exist"),
            ("folder", tmp / "empty", "has no"),
            ("folder", tmp / "mixed", "different sizes"),
            ("folder", tmp / "broken", "cannot read image"),
            ("array", tmp / "int.npy", "dtype int64"),
            ("array", tmp / "flat.npy", "shape (4, 64)"),
            ("array", tmp / "range.npy", "span [3, 3]"),
            ("array", tmp / "nokey.npz", "no images"),
            ("array", tmp / "junk.npz", "cannot read array file"),
            ("array", tmp / "nothere.npz", "does not exist")]


def test_bad_own_files_are_one_line_each(tmp_path, capsys):
    for i, (name, path, text) in enumerate(_bad_files(tmp_path)):
        with pytest.raises(data.DataError, match=re.escape(text)) as e:
            data.load(name, path=str(path))
        assert "\n" not in str(e.value) and str(path) in str(e.value), str(e.value)
    # through the command line: one error line, exit code 2, nothing trained
    wd = tmp_path / "wd"
    argv = ["main", "--config=configs/quickstart.py", f"--workdir={wd}", "--config.data.name=array",
            f"--config.data.path={tmp_path / 'int.npy'}"]
    assert main.cli(argv) == 2
    assert "dtype int64" in _one_line(capsys.readouterr().err)
    assert not (wd / "checkpoints").exists()


def test_uint8_storage_trains_bit_for_bit_like_float32(tmp_path):
    digits = data.load("digits")  # real images, written as an 8-bit array file
    x = (digits.train_images * 255).round().astype(np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=digits.train_labels)
    cfg = tiny(data=dict(name="array", path=str(tmp_path / "d.npz"), binarization="dynamic"))
    exp = experiment.Experiment.build(cfg, (8, 8, 1))
    epoch = jax.jit(exp.train_epoch)
    out = {}
    for storage in ("float32", "uint8"):
        ds = data.load("array", path=str(tmp_path / "d.npz"), storage=storage)
        images, labels = train.device_data(ds)
        assert images.dtype == storage
        st = exp.init_state()
        for e in range(2):
            st, _ = epoch(st, experiment.hyperparams(cfg), images, labels, jnp.int32(e), exp.data_key())
        out[storage] = (st, images.nbytes)
    chex.assert_trees_all_equal(out["float32"][0], out["uint8"][0])
    assert out["float32"][1] == 4 * out["uint8"][1]


def test_own_files_train_end_to_end(tmp_path):
    x = _images(120, 8, 8, 3)
    np.savez(tmp_path / "a.npz", image=x)
    for i, a in enumerate(x):
        _png(tmp_path / "f" / ("a" if i % 2 else "b") / f"{i}.png", a)
    for name, path in (("array", tmp_path / "a.npz"), ("folder", tmp_path / "f")):
        cfg = tiny(data=dict(name=name, path=str(path), storage="uint8"),
                   train=dict(num_epochs=1, batch_size=50), model=dict(likelihood="gaussian"))
        out = train.train_and_evaluate(cfg, str(tmp_path / name))
        assert np.isfinite(out["elbo"]) and out["step"] == 2  # 108 training images / 50



def test_one_process_at_a_time_prepares_a_tfds_dataset(tmp_path):
    """The prepare lock is a kernel flock per open file: a second holder (here a thread, with its
    own open file) waits until the first lets go, and an unwritable root does not block."""
    import threading
    import time

    from vae_jax.data import tfds_source

    order = []
    first_in = threading.Event()

    def hold():
        with tfds_source._prepare_lock(str(tmp_path / "tfds"), "mnist"):
            first_in.set()
            time.sleep(0.5)
            order.append("first out")

    t = threading.Thread(target=hold)
    t.start()
    first_in.wait()
    with tfds_source._prepare_lock(str(tmp_path / "tfds"), "mnist"):
        order.append("second in")
    t.join()
    assert order == ["first out", "second in"]
    (tmp_path / "file").write_text("")
    with tfds_source._prepare_lock(str(tmp_path / "file" / "sub"), "mnist"):  # cannot be made
        pass
