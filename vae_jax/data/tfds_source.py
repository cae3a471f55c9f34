"""Any TFDS image dataset by name: a builder whose features have an ``image``, optionally a
``label`` (ClassLabel) and scalar factors (``label_*`` / ``value_*``, as in dSprites and 3D
Shapes). Offline, TFDS reads the official raw files from a manual directory and prepares them once
into ``data_dir``; when they are missing the error names them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import tempfile
import urllib.parse

import numpy as np

from vae_jax.data import images as images_lib
from vae_jax.data.core import DataError

_READ_BATCH = 10_000  # examples per tf.data batch when reading a TFDS split
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def import_tfds():
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


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def _features(builder, name):
    feats = builder.info.features
    keys = list(feats.keys()) if hasattr(feats, "keys") else []
    if "image" not in keys:
        raise DataError(f"TFDS dataset {name!r} has no 'image' feature (it has {', '.join(keys)}); "
                        f"only image datasets can be loaded")
    num_classes = getattr(feats["label"], "num_classes", None) if "label" in keys else None
    factors = [k for k in keys if k.startswith(("label_", "value_"))]
    return num_classes, factors


def load(name, splits, data_dir, manual_dir, *, image_size=0, crop=0, channels="keep"):
    """[(images uint8 [N, H, W, C], labels int32 or None, {factor: [N]}) per split], the
    number of classes (None without a ClassLabel ``label``)."""
    tfds = import_tfds()
    data_dir = data_dir and os.path.expanduser(data_dir)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        prepared = builder.is_prepared()
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"unknown dataset {name!r}: not one of the built-in names (digits, mnist, "
                        f"fashion_mnist, binarized_mnist, folder, array) nor a TFDS builder") from None
    except Exception as e:  # noqa: BLE001
        raise DataError(f"cannot open {name!r} in data_dir {data_dir}: {first_line(e)}") from None
    num_classes, factor_keys = _features(builder, name)
    if not prepared:
        with _prepare_lock(builder.data_dir_root, name):
            builder = tfds.builder(name, data_dir=data_dir)  # another process may have prepared it
            if not builder.is_prepared():
                _prepare(tfds, builder, name, manual_dir)
    keep = ["image"] + (["label"] if num_classes else []) + factor_keys
    out = []
    for split in splits:
        where = f"{name!r} split {split!r}"
        try:
            ds = builder.as_dataset(split=split, batch_size=_READ_BATCH)
        except (ValueError, KeyError, AssertionError) as e:
            raise DataError(f"bad split {split!r} for {name!r}: {first_line(e)}") from None
        ds = ds.map(lambda ex: {k: ex[k] for k in keep})
        if not images_lib.is_identity(image_size, crop, channels):
            kw = dict(image_size=image_size, crop=crop, channels=channels, where=where)
            ds = ds.map(lambda ex: dict(ex, image=images_lib.transform(ex["image"], **kw)))
        try:  # not batch_size=-1: with unknown split sizes TFDS batches by sys.maxsize,
            batches = list(tfds.as_numpy(ds))  # which aborts the process under TF 2.21
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001
            raise DataError(f"cannot read {name!r} split {split!r}: {first_line(e)}") from None
        if not batches:
            raise DataError(f"{where} is empty")
        batch = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
        labels = batch["label"].astype(np.int32) if "label" in batch else None
        factors = {k: batch[k] for k in factor_keys} or None
        out.append((batch["image"], labels, factors))
    return out, num_classes


@contextlib.contextmanager
def _prepare_lock(root: str, name: str):
    """One process at a time prepares ``name`` under ``root`` (a kernel ``flock``, released when
    its holder exits); TFDS does not guard two concurrent prepares of one dataset, which collide
    in its temporary folders. The others wait, then find it prepared."""
    try:
        os.makedirs(root, exist_ok=True)
        f = open(os.path.join(root, f".{name}.prepare.lock"), "a")
    except OSError:  # an unwritable data_dir: TFDS's own prepare reports it in one line
        yield
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


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
    if missing and not online(missing):
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
                        f"{builder.data_dir_root}): {first_line(e)}") from None


def online(urls, timeout: float = 3.0) -> bool:
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
