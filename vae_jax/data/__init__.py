"""Datasets as in-memory numpy arrays, plus on-device binarization and scaling.

`digits` (scikit-learn, 8x8) works offline with no setup. `mnist`, `fashion_mnist` and
`binarized_mnist` come from TFDS; offline, TFDS reads the official raw files from a
manual directory (config.data.manual_dir) and prepares them once into `data_dir`.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tempfile
import urllib.parse

import jax
import jax.numpy as jnp
import numpy as np

DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion_mnist", "binarized_mnist")
_NUM_CLASSES = {"digits": 10, "mnist": 10, "fashion_mnist": 10, "binarized_mnist": None}
_DIGITS_TRAIN = 1500  # of 1797; the remaining 297 are the test split
_READ_BATCH = 10_000  # examples per tf.data batch when reading a TFDS split
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


class DataError(Exception):
    """Bad or missing data; the message is one clear line."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A train and an evaluation split; images float32 [N, H, W, C] in [0, 1]."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray | None
    test_images: np.ndarray
    test_labels: np.ndarray | None
    num_classes: int | None
    statically_binarized: bool
    train_split: str
    test_split: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])


def load(name: str, *, train_split: str | None = None, test_split: str | None = None,
         data_dir: str | None = None, manual_dir: str | None = None) -> Dataset:
    """Loads dataset `name` (one of DATASETS) fully into memory; raises DataError."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    train_split = train_split or "train"
    test_split = test_split or "test"
    if name == "digits":
        arrays = _load_digits(train_split, test_split)
    else:
        arrays = _load_tfds(name, (train_split, test_split), data_dir, manual_dir)
    binary = name == "binarized_mnist"
    for split, (images, labels) in zip((train_split, test_split), arrays):
        _check(name, split, images, labels, _NUM_CLASSES[name], binary)
    (train_x, train_y), (test_x, test_y) = arrays
    return Dataset(name, train_x, train_y, test_x, test_y, _NUM_CLASSES[name], binary,
                   train_split, test_split)


def binarize(x, key):
    """Dynamic binarization: Bernoulli draw with p = x, as float32 of x's shape."""
    x = jnp.asarray(x)
    return jax.random.bernoulli(key, x, x.shape).astype(jnp.float32)


def scale(x, mode: str):
    """Maps [0, 1] images to the model's range: "unit" -> [0, 1], "symmetric" -> [-1, 1]."""
    if mode == "unit":
        return x
    if mode == "symmetric":
        return 2.0 * x - 1.0
    raise ValueError(f"unknown scale mode {mode!r}; choose 'unit' or 'symmetric'")


def prepare(x, key, cfg):
    """Device-side preprocessing of [0, 1] images for a DataConfig ``cfg``: dynamic binarization
    (a fresh draw from ``key``), then :func:`scale`."""
    if cfg.binarization == "dynamic":
        x = binarize(x, key)
    return scale(x, cfg.scale)


def to_unit(x, mode: str):
    """The inverse of :func:`scale`, clipped to [0, 1] (for display and per-pixel BCE)."""
    if mode == "symmetric":
        x = (x + 1.0) / 2.0
    return jnp.clip(x, 0.0, 1.0)


def batched(arrays: dict, batch_size: int) -> tuple[dict, np.ndarray]:
    """Arrays with a common leading axis N, zero-padded to whole batches and reshaped to
    [num_batches, batch_size, ...], and the number of real rows in each batch."""
    n = len(next(iter(arrays.values())))
    nb = -(-n // batch_size)
    pad = nb * batch_size - n
    out = {k: jnp.pad(jnp.asarray(v), ((0, pad),) + ((0, 0),) * (np.ndim(v) - 1)).reshape(
        nb, batch_size, *np.shape(v)[1:]) for k, v in arrays.items() if v is not None}
    counts = np.minimum(batch_size, n - batch_size * np.arange(nb))
    return out, counts


def _load_digits(train_split, test_split):
    if (train_split, test_split) != ("train", "test"):
        raise DataError(f"digits has only the fixed splits 'train'/'test', got "
                        f"{train_split!r}/{test_split!r}")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[..., None]
    labels = bunch.target.astype(np.int32)
    order = np.random.default_rng(0).permutation(len(images))
    train, test = order[:_DIGITS_TRAIN], order[_DIGITS_TRAIN:]
    return (images[train], labels[train]), (images[test], labels[test])


def _import_tfds():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")  # keep TF off the accelerator JAX uses
    except Exception:  # noqa: BLE001 - TF missing or already initialized: harmless here
        pass
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError(f"tensorflow-datasets is needed for real datasets: {e}") from None
    tfds.disable_progress_bar()  # one prepare prints thousands of tqdm lines into logs
    return tfds


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def _load_tfds(name, splits, data_dir, manual_dir):
    tfds = _import_tfds()
    data_dir = data_dir and os.path.expanduser(data_dir)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        prepared = builder.is_prepared()
    except Exception as e:  # noqa: BLE001
        raise DataError(f"cannot open {name!r} in data_dir {data_dir}: {_first_line(e)}") from None
    if not prepared:
        _prepare(tfds, builder, name, manual_dir)
    out = []
    for split in splits:
        try:
            ds = builder.as_dataset(split=split, batch_size=_READ_BATCH)
        except (ValueError, KeyError, AssertionError) as e:
            raise DataError(f"bad split {split!r} for {name!r}: {_first_line(e)}") from None
        try:  # not batch_size=-1: with unknown split sizes TFDS batches by sys.maxsize,
            batches = list(tfds.as_numpy(ds))  # which aborts the process under TF 2.21
        except Exception as e:  # noqa: BLE001
            raise DataError(f"cannot read {name!r} split {split!r}: {_first_line(e)}") from None
        if not batches:
            raise DataError(f"{name!r} split {split!r} is empty")
        batch = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
        images = batch["image"].astype(np.float32)
        if name != "binarized_mnist":  # binarized_mnist is stored as uint8 0/1
            images /= 255.0
        labels = batch["label"].astype(np.int32) if "label" in batch else None
        out.append((images, labels))
    return out


def _prepare(tfds, builder, name, manual_dir):
    """Runs TFDS download_and_prepare, failing fast when files are missing and offline."""
    md = None
    if manual_dir:
        md = os.path.expanduser(manual_dir)
        if os.path.isdir(os.path.join(md, name)):
            md = os.path.join(md, name)
    url_infos = builder.url_infos or {}
    missing = {url: info.filename for url, info in url_infos.items()
               if not (md and os.path.isfile(os.path.join(md, info.filename)))}
    if missing and not _online(missing):
        where = md or f"<manual_dir>/{name}"
        raise DataError(f"cannot prepare {name!r}: put {', '.join(sorted(missing.values()))} "
                        f"in {where} (config.data.manual_dir) or allow downloads")
    # TFDS caches extractions of manual files as <downloads>/extracted/GZIP.<file name>,
    # shared by all datasets: fashion_mnist would silently reuse mnist's files of the same
    # names. A private extraction dir, deleted afterwards, avoids that and any stale state.
    # Its clean-up never masks TFDS's own error: after a failed prepare, TFDS's extraction
    # threads may still be writing there (seen as "Directory not empty" in CI).
    try:
        with tempfile.TemporaryDirectory(prefix=f"vae_jax-{name}-", ignore_cleanup_errors=True) as extract_dir:
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
                manual_dir=md, extract_dir=extract_dir))
    except Exception as e:  # noqa: BLE001 - TFDS raises many kinds; report one line
        raise DataError(f"cannot prepare {name!r} (manual_dir {md}, data_dir "
                        f"{builder.data_dir_root}): {_first_line(e)}") from None


def _online(urls, timeout: float = 3.0) -> bool:
    """Whether every host in `urls` accepts a TCP connection (assumed True behind a proxy)."""
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return True
    parts = [urllib.parse.urlsplit(u) for u in urls]
    for host in {(p.hostname, p.port or (443 if p.scheme == "https" else 80)) for p in parts}:
        try:
            socket.create_connection(host, timeout=timeout).close()
        except OSError:
            return False
    return True


def _check(name, split, images, labels, num_classes, binary):
    where = f"{name!r} split {split!r}"
    if images.ndim != 4 or images.shape[0] == 0 or images.dtype != np.float32:
        raise DataError(f"{where}: expected float32 images [N>0, H, W, C], got "
                        f"{images.dtype} {images.shape}")
    if not np.isfinite(images).all():
        raise DataError(f"{where}: images contain NaN or inf")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0.0 or hi > 1.0:
        raise DataError(f"{where}: image values span [{lo}, {hi}], expected within [0, 1]")
    if binary and not ((images == 0.0) | (images == 1.0)).all():
        raise DataError(f"{where}: statically binarized images must be exactly 0 or 1")
    if num_classes is None:
        if labels is not None:
            raise DataError(f"{where}: unexpected labels for an unlabeled dataset")
        return
    if labels is None or labels.shape != images.shape[:1]:
        raise DataError(f"{where}: expected {images.shape[0]} labels, got "
                        f"{None if labels is None else labels.shape}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"{where}: labels span [{labels.min()}, {labels.max()}], "
                        f"expected 0..{num_classes - 1}")
