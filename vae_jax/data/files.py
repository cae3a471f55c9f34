"""A researcher's own images, offline: a folder of PNG/JPEG files (one sub-folder per class gives
labels, sorted by folder name) or a ``.npz`` / ``.npy`` array file. Every problem is one
DataError line naming the file.

Array files: ``.npy`` holds the images; ``.npz`` holds them under ``image`` (or ``x``), with
optional ``label`` (or ``y``) and an optional explicit test split ``test_image`` / ``test_label``
(or ``x_test`` / ``y_test``). Images are [N, H, W] or [N, H, W, C], uint8 (0..255) or float in
[0, 1]; labels integers >= 0. Without an explicit test split, ``test_fraction`` of the images
(a fixed permutation) is held out.
"""

from __future__ import annotations

import os

import numpy as np

from vae_jax.data import images as images_lib
from vae_jax.data.core import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_KEYS = {"train": (("image", "x"), ("label", "y")),
         "test": (("test_image", "x_test"), ("test_label", "y_test"))}


def _read_image(path: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "RGB"):
                im = im.convert("RGB" if im.mode in ("RGBA", "P", "CMYK", "YCbCr", "LA") else "L")
            a = np.asarray(im)
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"cannot read image {path}: {type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}") from None
    if a.dtype != np.uint8:
        raise DataError(f"image {path}: {a.dtype} pixels, expected 8-bit (mode L or RGB)")
    return a[..., None] if a.ndim == 2 else a


def _image_files(folder: str) -> list[str]:
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS)
                  and os.path.isfile(os.path.join(folder, f)))


def load_folder(path: str, *, image_size=0, crop=0, channels="keep"):
    """(uint8 images [N, H, W, C], int32 labels or None, class names or None)."""
    if not path or not os.path.isdir(path):
        raise DataError(f"image folder {path!r} does not exist (config.data.path)")
    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))
                     and _image_files(os.path.join(path, d)))
    top = _image_files(path)
    if classes and top:
        raise DataError(f"image folder {path} has both images ({top[0]}, ...) and class "
                        f"sub-folders ({classes[0]}, ...): use one layout")
    files = ([(os.path.join(path, c, f), i) for i, c in enumerate(classes)
              for f in _image_files(os.path.join(path, c))] if classes
             else [(os.path.join(path, f), -1) for f in top])
    if not files:
        raise DataError(f"image folder {path} has no {'/'.join(IMAGE_EXTENSIONS)} images "
                        f"(directly or in class sub-folders)")
    arrays = [_read_image(f) for f, _ in files]
    if any(a.shape[-1] == 3 for a in arrays):  # mixed grey and colour: all colour
        arrays = [np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a for a in arrays]
    if not images_lib.is_identity(image_size, crop, channels):
        kw = dict(image_size=image_size, crop=crop, channels=channels, where=f"image folder {path}")
        arrays = [images_lib.transform_numpy(a[None], **kw)[0] for a in arrays]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        first = arrays[0].shape
        odd = next(i for i, a in enumerate(arrays) if a.shape != first)
        raise DataError(f"image folder {path}: images of different sizes ({files[0][0]} is "
                        f"{_hw(first)}, {files[odd][0]} is {_hw(arrays[odd].shape)}); set "
                        f"config.data.image_size to resize them")
    labels = np.asarray([y for _, y in files], np.int32) if classes else None
    return np.stack(arrays), labels, (classes or None)


def _hw(shape) -> str:
    return f"{shape[0]}x{shape[1]}x{shape[2]}"


def _images(x: np.ndarray, where: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[0] == 0:
        raise DataError(f"{where}: expected images [N, H, W] or [N, H, W, C], got shape {x.shape}")
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind != "f":
        raise DataError(f"{where}: images of dtype {x.dtype}, expected uint8 (0..255) or float "
                        f"in [0, 1]")
    if not np.isfinite(x).all():
        raise DataError(f"{where}: images contain NaN or inf")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise DataError(f"{where}: float images span [{lo:g}, {hi:g}], expected within [0, 1] "
                        f"(or uint8 0..255)")
    return x.astype(np.float32)


def _labels(y, n: int, where: str):
    if y is None:
        return None
    y = np.asarray(y)
    if y.dtype.kind not in "iu" or y.shape != (n,):
        raise DataError(f"{where}: labels must be {n} integers, got {y.dtype} {y.shape}")
    if y.min() < 0:
        raise DataError(f"{where}: negative label {int(y.min())}")
    return y.astype(np.int32)


def load_array(path: str):
    """{'train': (images, labels), 'test': (images, labels)} ('test' only when the file holds an
    explicit test split); images uint8 or float32 [N, H, W, C]."""
    if not path or not os.path.isfile(path):
        raise DataError(f"array file {path!r} does not exist (config.data.path)")
    if not path.endswith((".npz", ".npy")):
        raise DataError(f"array file {path}: expected a .npz or .npy file")
    try:
        loaded = np.load(path, allow_pickle=False)
        contents = {k: loaded[k] for k in loaded.files} if path.endswith(".npz") else {"image": loaded}
    except Exception as e:  # noqa: BLE001 - numpy raises many kinds for a damaged file
        raise DataError(f"cannot read array file {path}: {type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}") from None
    out = {}
    for split, (ikeys, lkeys) in _KEYS.items():
        ik = next((k for k in ikeys if k in contents), None)
        if ik is None:
            if split == "train":
                raise DataError(f"array file {path} has no images: expected a key "
                                f"{' or '.join(ikeys)} (it has {', '.join(contents) or 'none'})")
            continue
        x = _images(contents[ik], f"array file {path} [{ik}]")
        lk = next((k for k in lkeys if k in contents), None)
        out[split] = (x, _labels(contents.get(lk), len(x), f"array file {path} [{lk}]"))
    return out
