"""dSprites rendered offline: the factor grid of Matthey et al. (2017) drawn with numpy.

The grid is 3 shapes (square, ellipse, heart) × 6 scales (0.5 … 1) × 40 orientations
(0 … 2π, both ends included as in the released file) × 32 x-positions × 32 y-positions =
737,280 binary 64×64 images. Grid index i is the mixed-radix number of the factor classes in that
order (shape slowest, y-position fastest), the order of the released ``.npz``.

Rendering is deterministic: each (shape, scale, orientation) sprite is point-sampled once at the
pixel centres of a 33×33 patch (720 masks), and an image is its mask pasted with its centre at
pixel (16 + y, 16 + x) for position classes x, y ∈ 0 … 31. Only the requested indices are drawn,
so a subset costs what its size costs.

How it differs from the released file (the TFDS ``dsprites`` dataset): the sprite outlines are
redrawn from their definitions here (a square of side 20 px, an ellipse with semi-axes 11 and
5.5 px and a heart curve, all at scale 1), not the released bitmaps, and positions step by one
whole pixel over 16 … 47 where the released sprites move over a slightly wider span with
sub-pixel steps. The factor grid, its order, the binary 64×64 format and the symmetries (a
square repeats every quarter turn, an ellipse every half turn) are the same.
"""

from __future__ import annotations

import functools

import numpy as np

SHAPES = ("square", "ellipse", "heart")
FACTORS = ("shape", "scale", "orientation", "x_position", "y_position")
SIZES = (3, 6, 40, 32, 32)
NUM_IMAGES = int(np.prod(SIZES))  # 737,280
VALUES = {
    "shape": np.arange(1.0, 4.0),  # 1 square, 2 ellipse, 3 heart, as in the released file
    "scale": np.linspace(0.5, 1.0, 6),
    "orientation": np.linspace(0.0, 2 * np.pi, 40),
    "x_position": np.linspace(0.0, 1.0, 32),
    "y_position": np.linspace(0.0, 1.0, 32),
}
IMAGE = 64
_HALF = 16  # patch radius: a 33×33 patch; centres 16 … 47 keep it inside the image
_CHUNK = 20_000  # images per vectorised paste
_SIZE = 10.0  # half the side of the square at scale 1, in pixels


def _inside(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether sprite-frame points (u right, v up, in units of _SIZE) lie in the shape."""
    if shape == 0:  # square, side 2
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
    if shape == 1:  # ellipse, semi-axes 1.1 and 0.55 (long axis along u)
        return (u / 1.1) ** 2 + (v / 0.55) ** 2 <= 1.0
    # heart: (x² + y² − 1)³ − x² y³ ≤ 0, scaled to about the square's extent
    x, y = u / 1.05, v / 1.05 + 0.15
    return (x * x + y * y - 1.0) ** 3 - x * x * y ** 3 <= 0.0


@functools.lru_cache(maxsize=1)
def masks() -> np.ndarray:
    """The 3 × 6 × 40 sprite masks, uint8 [3, 6, 40, 33, 33], centred on the patch centre."""
    r = np.arange(-_HALF, _HALF + 1, dtype=np.float64)
    dy, dx = np.meshgrid(-r, r, indexing="ij")  # row 0 is the top: v = +16
    out = np.zeros((3, 6, 40, 2 * _HALF + 1, 2 * _HALF + 1), np.uint8)
    for s in range(3):
        for c, scale in enumerate(VALUES["scale"]):
            for o, angle in enumerate(VALUES["orientation"]):
                cos, sin = np.cos(angle), np.sin(angle)
                # rotate the pixel grid by −angle: the sprite turns counter-clockwise by angle
                u = (cos * dx + sin * dy) / (scale * _SIZE)
                v = (-sin * dx + cos * dy) / (scale * _SIZE)
                out[s, c, o] = _inside(s, u, v)
    return out


def classes_of(index: np.ndarray) -> np.ndarray:
    """Grid indices [n] -> factor classes int32 [n, 5] (shape, scale, orientation, x, y)."""
    return np.stack(np.unravel_index(np.asarray(index, np.int64), SIZES), -1).astype(np.int32)


def index_of(classes: np.ndarray) -> np.ndarray:
    """Factor classes [n, 5] -> grid indices int64 [n]."""
    c = np.asarray(classes, np.int64)
    return np.ravel_multi_index(tuple(c.T), SIZES)


def render(classes: np.ndarray) -> np.ndarray:
    """Binary images uint8 in {0, 1} [n, 64, 64, 1] for factor classes [n, 5]."""
    c = np.asarray(classes, np.int64)
    if c.ndim != 2 or c.shape[1] != 5 or (c < 0).any() or (c >= np.array(SIZES)).any():
        raise ValueError(f"factor classes must be [n, 5] within {SIZES}, got shape {c.shape}")
    out = np.zeros((len(c), IMAGE, IMAGE), np.uint8)
    offs = np.arange(2 * _HALF + 1)
    m = masks()
    for a in range(0, len(c), _CHUNK):  # bounded index arrays for large requests
        b = c[a:a + _CHUNK]
        rows = (b[:, 4, None] + offs[None])[:, :, None]  # y class: rows y … y + 32 (centre 16 + y)
        cols = (b[:, 3, None] + offs[None])[:, None, :]
        out[np.arange(a, a + len(b))[:, None, None], rows, cols] = m[b[:, 0], b[:, 1], b[:, 2]]
    return out[..., None]


def factors(classes: np.ndarray) -> dict[str, np.ndarray]:
    """The per-image factor arrays under the TFDS ``dsprites`` names: ``label_<factor>`` (class,
    int32) and ``value_<factor>`` (float32)."""
    c = np.asarray(classes)
    out = {}
    for j, name in enumerate(FACTORS):
        out[f"label_{name}"] = c[:, j].astype(np.int32)
        out[f"value_{name}"] = VALUES[name][c[:, j]].astype(np.float32)
    return out


def split_indices(num_train: int, num_test: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint grid indices of the test split (``num_test`` of them) and the training split
    (``num_train``; 0 = every grid index not in the test split), from one seeded permutation."""
    if num_test < 1 or num_test >= NUM_IMAGES:
        raise ValueError(f"num_test={num_test}: must be in 1 … {NUM_IMAGES - 1}")
    if num_train < 0 or num_train + num_test > NUM_IMAGES:
        raise ValueError(f"num_train={num_train} with num_test={num_test}: the grid has "
                         f"{NUM_IMAGES} images")
    perm = np.random.default_rng(seed).permutation(NUM_IMAGES)
    test = perm[:num_test]
    train = perm[num_test:] if num_train == 0 else perm[num_test:num_test + num_train]
    return train, test
