"""The dataset container, its checks, and the device-side conversions every input path shares.

Training images are stored either as float32 in [0, 1] or, for 8-bit sources, as uint8 (a
quarter of the memory); :func:`to_float` maps uint8 to exactly the float32 values that
``x.astype(float32) / 255`` gives on the host, so the storage dtype never changes a result.
Test images are always float32 in [0, 1].
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

STORAGES = ("float32", "uint8")
# uint8 -> float32 in [0, 1], each entry the correctly rounded v / 255 of the host conversion.
# A table lookup, not a division in the compiled step: XLA rewrites x / 255 as x * (1 / 255),
# which rounds 126 of the 256 values differently.
_UNIT = np.arange(256, dtype=np.float32) / np.float32(255.0)


class DataError(Exception):
    """Bad or missing data; the message is one clear line."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A train and an evaluation split: images [N, H, W, C], the test images float32 in [0, 1],
    the training images float32 in [0, 1] or uint8 (8-bit sources, see :func:`to_float`).
    ``*_factors`` hold further per-image values of the source (e.g. dSprites' ``label_*`` and
    ``value_*`` generative factors) by name."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray | None
    test_images: np.ndarray
    test_labels: np.ndarray | None
    num_classes: int | None
    statically_binarized: bool
    train_split: str
    test_split: str
    train_factors: dict | None = None
    test_factors: dict | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])

    @property
    def storage(self) -> str:
        """The training images' dtype: 'uint8' or 'float32'."""
        return str(self.train_images.dtype)

    @property
    def train_nbytes(self) -> int:
        """Bytes of the training images and labels as stored (what the device copy takes)."""
        return int(self.train_images.nbytes + (0 if self.train_labels is None else
                                               len(self.train_labels) * 4))


def unit_float32(x: np.ndarray) -> np.ndarray:
    """uint8 images -> float32 in [0, 1] on the host (``v / 255`` correctly rounded)."""
    out = np.asarray(x).astype(np.float32)
    out /= 255.0
    return out


def to_float(x):
    """Images as stored -> float32 in [0, 1], inside a compiled step: uint8 through the exact
    table, float32 unchanged."""
    x = jnp.asarray(x)
    if x.dtype == jnp.uint8:
        return jnp.asarray(_UNIT)[x.astype(jnp.int32)]
    return x


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
    """Device-side preprocessing of stored images (uint8, or float32 in [0, 1]) for a DataConfig
    ``cfg``: :func:`to_float`, dynamic binarization (a fresh draw from ``key``), :func:`scale`."""
    x = to_float(x)
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


def epoch_order(data_key, epoch, n: int, batch_size: int):
    """The example indices of an epoch's batches, [n // batch_size, batch_size]: a permutation
    from ``fold_in(data_key, epoch)`` cut into whole batches. Both input paths call this, the
    on-device one inside its compiled epoch, the streaming one on the host CPU."""
    steps = n // batch_size
    perm = jax.random.permutation(jax.random.fold_in(jax.random.wrap_key_data(data_key), epoch), n)
    return perm[: steps * batch_size].reshape(steps, batch_size)


def check(name, split, images, labels, num_classes, binary):
    """One DataError line when ``images`` (float32 in [0, 1] or uint8) or ``labels`` are not
    what a Dataset holds."""
    where = f"{name!r} split {split!r}"
    if images.ndim != 4 or images.shape[0] == 0 or images.dtype not in (np.float32, np.uint8):
        raise DataError(f"{where}: expected float32 (or uint8) images [N>0, H, W, C], got "
                        f"{images.dtype} {images.shape}")
    if images.dtype == np.float32:
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
