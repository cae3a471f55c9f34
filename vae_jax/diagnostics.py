"""Metric math on arrays (numpy or jax in, numbers out), tested on hand-made inputs."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def collapse_stats(mu: np.ndarray | None, kl_per_dim: np.ndarray | None,
                   active_threshold: float = 0.01, kl_threshold: float = 0.1) -> dict[str, Any]:
    """Posterior-collapse diagnostics from posterior means [N, d] and/or the mean KL per
    dimension [d] over the same images (either may be None).

    Active units (Burda et al. 2015): dimension d is active when Cov_x(E_q[z_d]) = Var_x(μ_d)
    exceeds ``active_threshold``. A dimension is collapsed when its mean KL(q(z_d|x) || p(z_d))
    is below ``kl_threshold`` nats.
    """
    out: dict[str, Any] = {}
    if mu is not None:
        var = np.asarray(mu, np.float64).var(axis=0)
        out["active_units"] = int(np.sum(var > active_threshold))
        out["mu_variance_per_dim"] = var.tolist()
    if kl_per_dim is not None:
        kl = np.asarray(kl_per_dim, np.float64)
        out["kl_per_dim"] = kl.tolist()
        out["collapsed_dims"] = [int(d) for d in np.flatnonzero(kl < kl_threshold)]
        out["num_collapsed"] = len(out["collapsed_dims"])
    return out


def bce_per_pixel(x: jax.Array, r: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Per-image mean binary cross-entropy −[x log r + (1 − x) log(1 − r)] of targets x and
    reconstructions r, both in [0, 1] ([B, ...] -> [B]); r is clipped to [eps, 1 − eps]."""
    r = jnp.clip(r, eps, 1.0 - eps)
    bce = -(x * jnp.log(r) + (1.0 - x) * jnp.log1p(-r))
    return bce.reshape(bce.shape[0], -1).mean(-1)


def interpolation_smoothness(frames: np.ndarray) -> tuple[float, float]:
    """For paths of decoded images [P, T, ...] in [0, 1]: the mean squared difference between
    successive images (mean over pixels, the T − 1 steps and the P paths), and the same
    divided by what an evenly spaced straight morph between the path's end images would give
    (endpoint MSD / (T − 1)²): 1 for a linear cross-fade, larger when the path jumps."""
    f = np.asarray(frames, np.float64).reshape(*np.shape(frames)[:2], -1)
    steps = ((f[:, 1:] - f[:, :-1]) ** 2).mean(-1)  # [P, T-1]
    ends = ((f[:, -1] - f[:, 0]) ** 2).mean(-1)  # [P]
    ratio = steps.mean(-1) * (f.shape[1] - 1) ** 2 / np.maximum(ends, 1e-12)
    return float(steps.mean()), float(ratio.mean())


def pca_2d(z: np.ndarray) -> tuple[np.ndarray, float]:
    """Projection of codes [N, d] onto their two leading principal axes, and the fraction of the
    variance those axes explain."""
    z = np.asarray(z, np.float64)
    c = z - z.mean(0)
    _, s, vt = np.linalg.svd(c, full_matrices=False)
    k = min(2, vt.shape[0])
    proj = c @ vt[:k].T
    if k < 2:
        proj = np.concatenate([proj, np.zeros((len(z), 2 - k))], 1)
    return proj, float((s[:k] ** 2).sum() / max((s**2).sum(), 1e-30))
