"""Matplotlib figures from numpy arrays. Nothing here knows about models or JAX: callers decode
images and pass them in, so every figure can be tested on hand-made arrays."""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def tile(images: np.ndarray, rows: int, cols: int, pad: int = 1) -> np.ndarray:
    """[rows*cols, H, W, C] images in [0, 1] -> one [rows*(H+pad)-pad, cols*(W+pad)-pad, C] mosaic."""
    images = np.asarray(images, np.float32)
    n, h, w, c = images.shape
    if n != rows * cols:
        raise ValueError(f"tile needs {rows * cols} images, got {n}")
    out = np.ones((rows * (h + pad) - pad, cols * (w + pad) - pad, c), np.float32)
    for i in range(n):
        r, k = divmod(i, cols)
        out[r * (h + pad): r * (h + pad) + h, k * (w + pad): k * (w + pad) + w] = images[i]
    return np.clip(out, 0.0, 1.0)


def _show(ax, mosaic: np.ndarray) -> None:
    if mosaic.shape[-1] == 1:
        ax.imshow(mosaic[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(mosaic, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def image_grid(images: np.ndarray, rows: int, cols: int, path: str, title: str = "") -> str:
    """A rows×cols grid of images (e.g. 8×8 prior samples)."""
    fig, ax = plt.subplots(figsize=(cols * 0.6 + 0.4, rows * 0.6 + 0.6))
    _show(ax, tile(images, rows, cols))
    if title:
        ax.set_title(title)
    return _save(fig, path)


def image_grids(panels: Sequence[tuple[np.ndarray, str]], rows: int, cols: int, path: str,
                title: str = "") -> str:
    """rows×cols grids side by side, one per (images, panel title), e.g. samples from two priors."""
    fig, axes = plt.subplots(1, len(panels), figsize=(len(panels) * (cols * 0.6 + 0.4), rows * 0.6 + 0.9),
                             squeeze=False)
    for ax, (images, name) in zip(axes[0], panels):
        _show(ax, tile(images, rows, cols))
        ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def reconstructions(inputs: np.ndarray, recons: np.ndarray, path: str) -> str:
    """Inputs (top row of each pair) against their reconstructions (bottom row)."""
    n = len(inputs)
    cols = min(n, 8)
    rows = n // cols
    pairs = []
    for r in range(rows):
        pairs.append(inputs[r * cols:(r + 1) * cols])
        pairs.append(recons[r * cols:(r + 1) * cols])
    fig, ax = plt.subplots(figsize=(cols * 0.6 + 0.4, 2 * rows * 0.6 + 0.6))
    _show(ax, tile(np.concatenate(pairs), 2 * rows, cols))
    ax.set_title("inputs (odd rows) / reconstructions (even rows)")
    return _save(fig, path)


def strips(rows_of_images: Sequence[np.ndarray], path: str, title: str = "",
           row_labels: Sequence[str] | None = None) -> str:
    """Several equal-length image strips, one per row (interpolations, traversals)."""
    rows = len(rows_of_images)
    cols = len(rows_of_images[0])
    fig, ax = plt.subplots(figsize=(cols * 0.6 + 0.8, rows * 0.6 + 0.6))
    _show(ax, tile(np.concatenate(list(rows_of_images)), rows, cols))
    if row_labels is not None:
        h = rows_of_images[0].shape[1] + 1
        ax.set_yticks([i * h + h / 2 for i in range(rows)])
        ax.set_yticklabels(row_labels)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def latent_scatter(z: np.ndarray, labels: np.ndarray | None, path: str, title: str = "",
                   axes: tuple[str, str] = ("z[0]", "z[1]")) -> str:
    """2-D codes coloured by label (the caller projects larger latents, e.g. by PCA)."""
    fig, ax = plt.subplots(figsize=(6, 5))
    sc = ax.scatter(z[:, 0], z[:, 1], c=labels if labels is not None else "tab:blue",
                    cmap="tab10", s=3, alpha=0.7)
    if labels is not None:
        fig.colorbar(sc, ax=ax, ticks=range(int(labels.max()) + 1), label="label")
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(title or "posterior means")
    return _save(fig, path)


def manifold(images: np.ndarray, n: int, extent: float, path: str) -> str:
    """An n×n grid of images decoded on a regular grid of a 2-D latent space; row 0 is the top
    (largest z[1]), column 0 the left (smallest z[0])."""
    fig, ax = plt.subplots(figsize=(7, 7))
    _show(ax, tile(images, n, n, pad=0))
    ax.set_title(f"decoded 2-D latent grid, z in [-{extent}, {extent}]²")
    return _save(fig, path)


def image_row(images: np.ndarray, titles: Sequence[str], path: str, title: str = "") -> str:
    """Images side by side, each with its own caption (e.g. latent arithmetic)."""
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(1.6 * n, 2.0))
    for ax, img, t in zip(np.atleast_1d(axes), images, titles):
        _show(ax, np.clip(np.asarray(img, np.float32), 0.0, 1.0))
        ax.set_title(t, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def bars(values: np.ndarray, path: str, title: str = "", xlabel: str = "", ylabel: str = "",
         threshold: float | None = None) -> str:
    """One bar per entry (e.g. KL per latent dimension), with an optional dashed threshold."""
    values = np.asarray(values, np.float64)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.25 * len(values) + 1.5), 3.0))
    ax.bar(np.arange(len(values)), values, color="tab:blue")
    if threshold is not None:
        ax.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"threshold {threshold:g}")
        ax.legend(fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, path)


def line_panels(panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]],
                path: str, title: str = "", xlabel: str = "step", log_x: bool = False,
                log_y: bool = False) -> str:
    """Side-by-side panels ``{panel title: {line label: (xs, ys)}}`` (training curves, variance
    ratios); empty lines are skipped."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (name, lines) in zip(axes[0], panels.items()):
        for label, (xs, ys) in lines.items():
            if len(xs):
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=label)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        if log_x:
            ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
        if any(len(xs) for xs, _ in lines.values()):
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
