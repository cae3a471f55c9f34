"""Evaluators: the test-set ELBO (a compiled scan over the whole split) and the figures.

Every number is returned with the metadata that makes it comparable: dataset, binarization,
split, estimator, epochs, hardware and wall time.
"""

from __future__ import annotations

import os
import platform
import time
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import data, likelihoods, plots
from vae_jax.rng import stream

if TYPE_CHECKING:
    from vae_jax.train import Experiment


def hardware() -> str:
    d = jax.devices()[0]
    kind = getattr(d, "device_kind", d.platform)
    cpu = f"{os.cpu_count()} CPU cores ({platform.machine()})"
    return f"{len(jax.devices())}x {kind} [{d.platform}], {cpu}"


def binarization_note(exp: "Experiment", ds: data.Dataset) -> str:
    if ds.statically_binarized:
        return "static (Larochelle & Murray)"
    if exp.cfg.data.binarization == "dynamic":
        return (f"dynamic in training; test set binarized once with seed "
                f"{exp.cfg.data.eval_binarization_seed}")
    return f"none (grayscale in [0, 1], scale '{exp.cfg.data.scale}')"


def test_images(exp: "Experiment", ds: data.Dataset) -> jax.Array:
    """The evaluation split as the model sees it: fixed binarization (when dynamic), scaled."""
    x = jnp.asarray(ds.test_images, jnp.float32)
    key = stream(jax.random.key(exp.cfg.data.eval_binarization_seed), "eval_binarize")
    return exp.prepare(x, key)


class TestELBO:
    """Mean per-image ELBO, reconstruction and KL over the whole evaluation split, with
    ``eval.num_samples`` posterior samples per image, in nats (and bits per dimension)."""

    def __init__(self, exp: "Experiment", ds: data.Dataset):
        self.exp, self.ds = exp, ds
        bs = exp.cfg.eval.batch_size
        x = test_images(exp, ds)
        n = x.shape[0]
        self.n = n
        nb = -(-n // bs)
        pad = nb * bs - n
        self.images = jnp.pad(x, ((0, pad), (0, 0), (0, 0), (0, 0))).reshape(nb, bs, *x.shape[1:])
        self.mask = (jnp.arange(nb * bs) < n).astype(jnp.float32).reshape(nb, bs)
        self.labels = None
        if ds.test_labels is not None:
            self.labels = jnp.pad(jnp.asarray(ds.test_labels, jnp.int32), (0, pad)).reshape(nb, bs)
        self._fn = jax.jit(self._sums)

    def _sums(self, params, images, labels, mask, key):
        exp = self.exp

        def body(acc, xs):
            i, x, m = xs[0], xs[1], xs[2]
            batch = {"image": x}
            if labels is not None:
                batch["label"] = xs[3]
            t = exp.family.terms(exp.model, params, batch, jax.random.fold_in(key, i),
                                 exp.cfg.eval.num_samples)
            return {k: acc[k] + jnp.sum(t[k] * m) for k in acc}, None

        zero = {k: jnp.zeros((), jnp.float32) for k in ("elbo", "recon", "kl")}
        xs = (jnp.arange(images.shape[0]), images, mask) + (() if labels is None else (labels,))
        sums, _ = jax.lax.scan(body, zero, xs)
        return sums

    def __call__(self, params, step: int, epochs: int) -> dict[str, float]:
        t = time.perf_counter()
        key = stream(jax.random.key(self.exp.cfg.seed), "eval")
        sums = jax.device_get(self._fn(params, self.images, self.labels, self.mask, key))
        out = {k: float(v) / self.n for k, v in sums.items()}
        out["bits_per_dim"] = -out["elbo"] / (np.prod(self.ds.image_shape) * np.log(2.0))
        out["eval_s"] = time.perf_counter() - t
        return out

    def metadata(self, epochs: int) -> dict[str, Any]:
        return {
            "dataset": self.ds.name,
            "split": self.ds.test_split,
            "num_images": self.n,
            "binarization": binarization_note(self.exp, self.ds),
            "estimator": f"ELBO, {self.exp.cfg.eval.num_samples} posterior sample(s) per image",
            "likelihood": self.exp.cfg.model.likelihood,
            "epochs": epochs,
            "hardware": hardware(),
        }


def _to_unit(exp: "Experiment", x: jax.Array) -> np.ndarray:
    """Images in data space -> [0, 1] for display."""
    if exp.cfg.data.scale == "symmetric":
        x = (x + 1.0) / 2.0
    return np.clip(np.asarray(x), 0.0, 1.0)


def encode_mean(exp: "Experiment", params, x: jax.Array) -> jax.Array:
    mu, _ = exp.model.apply({"params": params}, x, method=exp.model.encode)
    return mu


def decode_mean(exp: "Experiment", params, z: jax.Array) -> jax.Array:
    out = exp.model.apply({"params": params}, z, method=exp.model.decode)
    return likelihoods.from_config(exp.cfg.model).mean(out)


def interpolate(z0: jax.Array, z1: jax.Array, steps: int = 10) -> jax.Array:
    """Linear path z(t) = (1 − t) z0 + t z1 at ``steps`` evenly spaced t in [0, 1]."""
    t = jnp.linspace(0.0, 1.0, steps)[:, None]
    return (1.0 - t) * z0[None] + t * z1[None]


def _pick_pair(ds: data.Dataset) -> tuple[int, int]:
    if ds.test_labels is None:
        return 0, 1
    other = int(np.argmax(ds.test_labels != ds.test_labels[0]))
    return 0, other


def write_figures(exp: "Experiment", params, ds: data.Dataset, folder: str) -> list[str]:
    """Reconstructions, an 8×8 grid of prior samples, a 10-step interpolation between two test
    images' posterior means, and for 2-D latents the decoded manifold and the latent scatter."""
    os.makedirs(folder, exist_ok=True)
    x = test_images(exp, ds)
    enc = jax.jit(lambda p, x: encode_mean(exp, p, x))
    dec = jax.jit(lambda p, z: decode_mean(exp, p, z))
    paths = []
    n = min(32, x.shape[0] // 8 * 8)
    recon = dec(params, enc(params, x[:n]))
    paths.append(plots.reconstructions(_to_unit(exp, x[:n]), _to_unit(exp, recon),
                                       os.path.join(folder, "reconstructions.png")))
    z = jax.random.normal(stream(jax.random.key(exp.cfg.seed), "figures"),
                          (64, exp.cfg.model.latent_dim))
    paths.append(plots.image_grid(_to_unit(exp, dec(params, z)), 8, 8,
                                  os.path.join(folder, "samples.png"), "samples from the prior"))
    i, j = _pick_pair(ds)
    mus = enc(params, x[jnp.array([i, j])])
    strip = dec(params, interpolate(mus[0], mus[1], 10))
    paths.append(plots.strips([_to_unit(exp, strip)], os.path.join(folder, "interpolation.png"),
                              f"posterior-mean interpolation, test images {i} → {j}"))
    if exp.cfg.model.latent_dim == 2:
        g = 20
        lin = np.linspace(-3.0, 3.0, g)
        grid = np.stack(np.meshgrid(lin, lin[::-1]), -1).reshape(-1, 2)  # rows top→bottom
        paths.append(plots.manifold(_to_unit(exp, dec(params, jnp.asarray(grid, jnp.float32))), g, 3.0,
                                    os.path.join(folder, "manifold.png")))
        m = min(5000, x.shape[0])
        mu = np.concatenate([np.asarray(enc(params, x[k:k + 1000])) for k in range(0, m, 1000)])[:m]
        labels = None if ds.test_labels is None else ds.test_labels[:m]
        paths.append(plots.latent_scatter(mu, labels, os.path.join(folder, "latent_scatter.png"),
                                          f"posterior means of {m} test images"))
    return paths
