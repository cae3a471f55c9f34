"""Datasets as in-memory numpy arrays, and the device-side conversions of every input path.

Sources, by ``config.data.name``:

- ``digits`` (scikit-learn, 8x8): offline with no setup.
- ``dsprites_generated``: the dSprites factor grid rendered offline (:mod:`vae_jax.data.sprites`),
  a seeded subset of ``num_train`` / ``num_test`` grid points; labels are the shape class and the
  five factors come as ``label_*`` / ``value_*`` (the TFDS ``dsprites`` names).
- ``folder`` / ``array``: a researcher's own images (``config.data.path``), see
  :mod:`vae_jax.data.files`.
- any other name: a TFDS image dataset (``mnist``, ``fashion_mnist``, ``binarized_mnist``,
  ``cifar10``, ``svhn_cropped``, ``celeb_a``, ``dsprites``, ``shapes3d``, ...), see
  :mod:`vae_jax.data.tfds_source`; offline, TFDS reads the official raw files from
  ``config.data.manual_dir`` and prepares them once into ``data_dir``.

Images can be center-cropped, resized and converted to grey or RGB on loading
(:mod:`vae_jax.data.images`). Training images of 8-bit sources can stay uint8
(``storage='uint8'``); :func:`prepare` converts them exactly inside the compiled step. A training
set either lives on the devices or streams from the host (:mod:`vae_jax.data.stream`), both in
the order :func:`epoch_order` gives.
"""

from __future__ import annotations

import numpy as np

from vae_jax.data import files, images as images_lib, sprites, tfds_source
from vae_jax.data.core import (STORAGES, DataError, Dataset, batched, binarize, check, epoch_order,
                               prepare, scale, to_float, to_unit, unit_float32)
from vae_jax.data.images import CHANNELS
from vae_jax.data.tfds_source import _PROXY_VARS  # noqa: F401 (tests clear these variables)

__all__ = ["CHANNELS", "DATASETS", "STORAGES", "DataError", "Dataset", "batched", "binarize",
           "epoch_order", "load", "prepare", "scale", "to_float", "to_unit"]

# names with their own loaders or fixed metadata; any other name is looked up in TFDS
DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion_mnist", "binarized_mnist", "folder", "array",
                             "dsprites_generated")
OWN_FILES = ("folder", "array")
GENERATED = ("dsprites_generated",)  # rendered here; num_train / num_test pick a subset
_NUM_CLASSES = {"digits": 10, "mnist": 10, "fashion_mnist": 10, "binarized_mnist": None}
_DIGITS_TRAIN = 1500  # of 1797; the remaining 297 are the test split
_SPRITES_TEST = 15_000  # default test split of dsprites_generated: DCI's 10,000 + 5,000 points
_OWN_SPLIT_SEED = 0  # the fixed permutation that holds out an own dataset's test images
_check = check  # the name tests and older callers use


def load(name: str, *, train_split: str | None = None, test_split: str | None = None,
         data_dir: str | None = None, manual_dir: str | None = None, path: str | None = None,
         image_size: int = 0, crop: int = 0, channels: str = "keep", storage: str = "float32",
         test_fraction: float = 0.1, num_train: int = 0, num_test: int = 0) -> Dataset:
    """Loads dataset ``name`` fully into host memory; raises DataError in one line.

    ``storage='uint8'`` keeps the training images of 8-bit sources as uint8 (float sources and
    binarized MNIST stay float32); test images are float32 in [0, 1] always."""
    if storage not in STORAGES:
        raise DataError(f"unknown storage {storage!r}; choose one of {', '.join(STORAGES)}")
    train_split = train_split or "train"
    test_split = test_split or "test"
    shape_kw = dict(image_size=image_size, crop=crop, channels=channels)
    binary = name == "binarized_mnist"
    train_f = test_f = None
    if name not in GENERATED and (num_train or num_test):
        raise DataError(f"num_train / num_test choose a subset of a generated dataset "
                        f"({', '.join(GENERATED)}), not of {name!r}; use split syntax instead")
    if name in GENERATED:
        if not images_lib.is_identity(**shape_kw):
            raise DataError(f"{name} is 64x64 binary: config.data.image_size, crop and channels "
                            f"do not apply to it")
        (train_x, train_y, train_f), (test_x, test_y, test_f) = _load_sprites(
            train_split, test_split, num_train, num_test)
        num_classes = len(sprites.SHAPES)
    elif name == "digits":
        if not images_lib.is_identity(**shape_kw):
            raise DataError("digits is 8x8 grey: config.data.image_size, crop and channels do "
                            "not apply to it")
        (train_x, train_y), (test_x, test_y) = _load_digits(train_split, test_split)
        num_classes = 10
    elif name in OWN_FILES:
        (train_x, train_y), (test_x, test_y), num_classes = _load_own(
            name, path, train_split, test_split, test_fraction, shape_kw)
    else:
        arrays, num_classes = tfds_source.load(name, (train_split, test_split), data_dir,
                                               manual_dir, **shape_kw)
        (train_x, train_y, train_f), (test_x, test_y, test_f) = arrays
        num_classes = _NUM_CLASSES.get(name, num_classes)
        if binary:  # binarized_mnist is stored as uint8 0/1
            train_x, test_x = train_x.astype(np.float32), test_x.astype(np.float32)
    if train_x.dtype == np.uint8 and storage == "float32":
        train_x = unit_float32(train_x)
    if test_x.dtype == np.uint8:
        test_x = unit_float32(test_x)
    for split, (x, y) in zip((train_split, test_split), ((train_x, train_y), (test_x, test_y))):
        check(name, split, x, y, num_classes, binary)
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(f"{name!r}: train images are {train_x.shape[1:]} but test images "
                        f"{test_x.shape[1:]}")
    return Dataset(name, train_x, train_y, test_x, test_y, num_classes, binary, train_split,
                   test_split, train_f, test_f)


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


def _load_sprites(train_split, test_split, num_train, num_test):
    """The splits of ``dsprites_generated`` as uint8 images (0 / 255), shape labels, factors."""
    if (train_split, test_split) != ("train", "test"):
        raise DataError(f"dsprites_generated has only the splits 'train'/'test' (sizes from "
                        f"config.data.num_train / num_test), got {train_split!r}/{test_split!r}")
    try:
        idx = sprites.split_indices(num_train, num_test or _SPRITES_TEST, _OWN_SPLIT_SEED)
    except ValueError as e:
        raise DataError(f"dsprites_generated: {e}") from None
    out = []
    for i in idx:
        c = sprites.classes_of(i)
        out.append((sprites.render(c) * np.uint8(255), c[:, 0].copy(), sprites.factors(c)))
    return out


def _load_own(name, path, train_split, test_split, test_fraction, shape_kw):
    """(train, test, num_classes) of a folder or an array file."""
    if (train_split, test_split) != ("train", "test"):
        raise DataError(f"{name} data has only the splits 'train'/'test' (the test part set by "
                        f"config.data.test_fraction), got {train_split!r}/{test_split!r}")
    if name == "folder":
        x, y, classes = files.load_folder(path, **shape_kw)
        splits, num_classes = {"train": (x, y)}, (len(classes) if classes else None)
    else:
        splits = files.load_array(path)
        where = f"array file {path}"
        splits = {k: (images_lib.transform_numpy(x, where=where, **shape_kw), y)
                  for k, (x, y) in splits.items()}
        ys = [y for _, y in splits.values() if y is not None]
        if ys and len(ys) != len(splits):
            raise DataError(f"{where}: labels for one split but not the other")
        num_classes = int(max(y.max() for y in ys)) + 1 if ys else None
    if "test" in splits:
        return splits["train"], splits["test"], num_classes
    x, y = splits["train"]
    n_test = int(round(test_fraction * len(x)))
    if not 0 < n_test < len(x):
        raise DataError(f"{name} data {path}: config.data.test_fraction={test_fraction} of "
                        f"{len(x)} images leaves {n_test} for testing; need at least one image "
                        f"in each split")
    order = np.random.default_rng(_OWN_SPLIT_SEED).permutation(len(x))
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    pick = lambda idx: (x[idx], None if y is None else y[idx])  # noqa: E731
    return pick(train), pick(test), num_classes
