"""Crop, resize and channel conversion of image batches, shared by the TFDS and own-file sources.

TensorFlow ops (``tf.image``), so the same function runs inside a tf.data pipeline and on numpy
arrays. 8-bit images stay 8-bit (rounded after resizing); float images stay float32 in [0, 1].
"""

from __future__ import annotations

import numpy as np

from vae_jax.data.core import DataError

CHANNELS = ("keep", "grayscale", "rgb")


def is_identity(image_size: int, crop: int, channels: str) -> bool:
    return not image_size and not crop and channels == "keep"


def transform(x, *, image_size: int = 0, crop: int = 0, channels: str = "keep", where: str = ""):
    """[B, H, W, C] images (a tf.Tensor or numpy array, uint8 or float) -> the same dtype, with:
    a central ``crop`` x ``crop`` square (0: a non-square image is cut to its central square only
    when it is resized), a bilinear, antialiased resize to ``image_size`` x ``image_size`` (0:
    keep), and ``channels`` 'grayscale' (ITU-R 601 luma, ``tf.image.rgb_to_grayscale``), 'rgb'
    (grey repeated) or 'keep'. Shapes must be static (they are for TFDS image features)."""
    import tensorflow as tf

    x = tf.convert_to_tensor(x)
    dtype = x.dtype
    h, w, c = (int(d) if d is not None else None for d in x.shape[1:])
    if crop or (image_size and h != w):
        side = crop or min(h, w)
        if side > h or side > w:
            raise DataError(f"{where}: config.data.crop={crop} is larger than the {h}x{w} images")
        top, left = (h - side) // 2, (w - side) // 2
        x = x[:, top:top + side, left:left + side, :]
    y = tf.cast(x, tf.float32)
    changed = False
    if image_size and (int(x.shape[1]) != image_size or int(x.shape[2]) != image_size):
        y = tf.image.resize(y, (image_size, image_size), method="bilinear", antialias=True)
        changed = True
    if channels == "grayscale" and c == 3:
        y, changed = tf.image.rgb_to_grayscale(y), True
    elif channels == "rgb" and c == 1:
        y, changed = tf.tile(y, (1, 1, 1, 3)), True
    elif channels != "keep" and c not in (1, 3):
        raise DataError(f"{where}: config.data.channels={channels!r} needs 1 or 3 channels, "
                        f"the images have {c}")
    if not changed:
        return x
    if dtype == tf.uint8:
        return tf.cast(tf.clip_by_value(tf.round(y), 0.0, 255.0), tf.uint8)
    return tf.clip_by_value(y, 0.0, 1.0)


def transform_numpy(x: np.ndarray, batch: int = 4096, **kw) -> np.ndarray:
    """:func:`transform` on a numpy array, in batches; the identity without importing TF."""
    if is_identity(kw.get("image_size", 0), kw.get("crop", 0), kw.get("channels", "keep")):
        return x
    return np.concatenate([np.asarray(transform(x[i:i + batch], **kw))
                           for i in range(0, len(x), batch)])
