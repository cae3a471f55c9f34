"""Estimators on a trained model, through the family contract only (``models.base.Family``):
the test-set ELBO, importance-sampled log p(x), and the evaluation :class:`Context` that
evaluators and figures share (the test split as the model sees it, posteriors and codes computed
once), with the metadata that makes every reported number comparable.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import platform
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import data, likelihoods
from vae_jax.rng import stream


class NotApplicable(Exception):
    """An evaluator does not apply to this model family; the message says why."""


def hardware() -> str:
    d = jax.devices()[0]
    kind = getattr(d, "device_kind", d.platform)
    cpu = f"{os.cpu_count()} CPU cores ({platform.machine()})"
    return f"{len(jax.devices())}x {kind} [{d.platform}], {cpu}"


def binarization_note(cfg, ds: data.Dataset) -> str:
    if ds.statically_binarized:
        return "static (Larochelle & Murray)"
    if cfg.data.binarization == "dynamic":
        return (f"dynamic in training; test set binarized once with seed "
                f"{cfg.data.eval_binarization_seed}")
    return f"none (grayscale in [0, 1], scale '{cfg.data.scale}')"


def common_metadata(exp, ds: data.Dataset, epochs: int) -> dict[str, Any]:
    """What every reported number needs next to it to be comparable."""
    return {
        "dataset": ds.name,
        "split": ds.test_split,
        "num_images": len(ds.test_images),
        "binarization": binarization_note(exp.cfg, ds),
        "likelihood": exp.cfg.model.likelihood,
        "model": exp.family.describe(exp.cfg),
        "epochs": epochs,
        "seed": exp.cfg.seed,
        "hardware": hardware(),
    }


def kl_note(cfg) -> str:
    """How the KL term is computed: closed form, or by Monte Carlo under a learned prior."""
    if cfg.model.prior == "normal":
        return "closed-form KL"
    return (f"Monte Carlo KL log q(z|x) − log p(z) at the same posterior samples (the "
            f"{cfg.model.prior!r} prior has no closed-form KL)")


def test_images(exp, ds: data.Dataset) -> jax.Array:
    """The evaluation split as the model sees it: fixed binarization (when dynamic), scaled."""
    key = stream(jax.random.key(exp.cfg.data.eval_binarization_seed), "eval_binarize")
    return exp.prepare(jnp.asarray(ds.test_images, jnp.float32), key)


def test_batches(exp, ds: data.Dataset) -> tuple[dict[str, jax.Array], np.ndarray]:
    """The prepared test split as [num_batches, eval.batch_size, ...] (zero-padded), with the
    number of real images in each batch."""
    return data.batched({"image": test_images(exp, ds), "label": ds.test_labels}, exp.cfg.eval.batch_size)


class TestELBO:
    """Mean per-image ELBO, reconstruction and KL over the whole evaluation split, with
    ``eval.num_samples`` posterior samples per image, in nats (and bits per dimension)."""

    def __init__(self, exp, ds: data.Dataset):
        self.exp, self.ds = exp, ds
        self.batches, counts = test_batches(exp, ds)
        self.n = int(counts.sum())
        bs = exp.cfg.eval.batch_size
        self.mask = (np.arange(bs)[None] < counts[:, None]).astype(np.float32)
        self._fn = jax.jit(self._sums)

    def _sums(self, params, batches, mask, key):
        exp = self.exp

        def body(acc, xs):
            i, batch, m = xs
            t = exp.family.terms(exp.model, params, batch, jax.random.fold_in(key, i),
                                 exp.cfg.eval.num_samples)
            return {k: acc[k] + jnp.sum(t[k] * m) for k in acc}, None

        zero = {k: jnp.zeros((), jnp.float32) for k in ("elbo", "recon", "kl")}
        sums, _ = jax.lax.scan(body, zero, (jnp.arange(len(mask)), batches, mask))
        return sums

    def __call__(self, params, step: int, epochs: int) -> dict[str, float]:
        t = time.perf_counter()
        key = stream(jax.random.key(self.exp.cfg.seed), "eval")
        sums = jax.device_get(self._fn(params, self.batches, self.mask, key))
        out = {k: float(v) / self.n for k, v in sums.items()}
        out["bits_per_dim"] = -out["elbo"] / (np.prod(self.ds.image_shape) * np.log(2.0))
        out["eval_s"] = time.perf_counter() - t
        return out

    def metadata(self, epochs: int) -> dict[str, Any]:
        return dict(common_metadata(self.exp, self.ds, epochs),
                    estimator=f"ELBO, {self.exp.cfg.eval.num_samples} posterior sample(s) per "
                              f"image, {kl_note(self.exp.cfg)}")


# ----------------------------------------------------------------------------------------------
# Importance-sampled log p(x)


@dataclasses.dataclass(frozen=True)
class Inference:
    """What importance sampling needs: ``posterior(params, batch)``, computed once per batch
    (None: nothing to precompute), and ``log_weights(params, batch, q, key, n)``: n samples
    z ~ q through the inference path, log p(x, z) − log q(z | x), shape [n, B]."""

    posterior: Callable[[Any, dict], Any] | None
    log_weights: Callable[[Any, dict, Any, jax.Array, int], jax.Array]


def inference(exp) -> Inference:
    """The family's importance-sampling path (``Family.proposal`` / ``log_weights``)."""
    fam, model = exp.family, exp.model
    if not fam.has_kl:
        raise NotApplicable(f"family {exp.cfg.model.family!r} gives no importance weights "
                            f"(no stochastic encoder)")
    return Inference(lambda p, b: fam.proposal(model, p, b),
                     lambda p, b, q, key, n: fam.log_weights(model, p, b, q, key, n))


def importance_log_px(inf: Inference, params, batch: dict, key: jax.Array, k: int,
                      chunk: int) -> tuple[jax.Array, jax.Array]:
    """Per-example log p(x) ≈ log (1/k) Σ_i p(x, z_i) / q(z_i | x), z_i ~ q(z | x), and the mean
    log-weight (the ELBO estimated from the same k samples), each [B].

    The k samples are drawn ``chunk`` at a time inside a ``lax.scan`` that keeps a running maximum
    and a rescaled sum of exp(log w − max) per example, so memory is that of one chunk whatever k
    is and the log-mean-exp never overflows. Chunk i uses ``fold_in(key, i)``: the result is a
    deterministic function of the key, k and chunk. Call it under ``jax.jit``.
    """
    q = None if inf.posterior is None else inf.posterior(params, batch)
    chunk = min(chunk, k)
    n_steps = -(-k // chunk)
    b = batch["image"].shape[0]

    def body(carry, i):
        m, s, total = carry
        lw = inf.log_weights(params, batch, q, jax.random.fold_in(key, i), chunk)
        valid = (i * chunk + jnp.arange(chunk))[:, None] < k  # the last chunk may overrun k
        lw_max = jnp.max(jnp.where(valid, lw, -jnp.inf), axis=0)
        m_new = jnp.maximum(m, lw_max)
        s = s * jnp.exp(m - m_new) + jnp.sum(jnp.where(valid, jnp.exp(lw - m_new), 0.0), axis=0)
        return (m_new, s, total + jnp.sum(jnp.where(valid, lw, 0.0), axis=0)), None

    init = (jnp.full((b,), -jnp.inf), jnp.zeros((b,)), jnp.zeros((b,)))
    (m, s, total), _ = jax.lax.scan(body, init, jnp.arange(n_steps))
    return m + jnp.log(s) - math.log(k), total / k


# ----------------------------------------------------------------------------------------------
# The shared evaluation context


def decode_mean(exp, params, z: jax.Array, y: jax.Array | None = None) -> jax.Array:
    """Decoder means in data space (``y``: labels, used by conditional families)."""
    out = exp.family.decode(exp.model, params, z, y)
    return likelihoods.from_config(exp.cfg.model).mean(out)


def interpolate(z0: jax.Array, z1: jax.Array, steps: int = 10) -> jax.Array:
    """Linear path z(t) = (1 − t) z0 + t z1 at ``steps`` evenly spaced t in [0, 1]."""
    t = jnp.linspace(0.0, 1.0, steps)[:, None]
    return (1.0 - t) * z0[None] + t * z1[None]


@dataclasses.dataclass
class Context:
    """Everything evaluators share; expensive pieces are computed on first use and cached."""

    exp: Any  # experiment.Experiment
    ds: data.Dataset
    params: Any
    step: int
    epochs: int
    folder: str  # where figures go
    metrics_path: str | None = None  # the workdir's metrics.jsonl, for training curves

    @property
    def cfg(self):
        return self.exp.cfg

    @property
    def family(self):
        return self.exp.family

    @functools.cached_property
    def images(self) -> jax.Array:
        return test_images(self.exp, self.ds)

    @functools.cached_property
    def labels(self) -> np.ndarray | None:
        return None if self.ds.test_labels is None else np.asarray(self.ds.test_labels, np.int32)

    @functools.cached_property
    def batches(self) -> list[tuple[dict[str, jax.Array], int]]:
        """The split in ``eval.batch_size`` batches (the last zero-padded), with valid counts."""
        stacked, counts = test_batches(self.exp, self.ds)
        return [(jax.tree.map(lambda a, i=i: a[i], stacked), int(n)) for i, n in enumerate(counts)]

    def over_split(self, fn: Callable[[Any, dict], Any]) -> Any:
        """``fn(params, batch)`` (jitted) over every batch, valid rows concatenated, as numpy."""
        fn = jax.jit(fn)
        parts = [jax.tree.map(lambda a, n=n: np.asarray(a[:n]), fn(self.params, b))
                 for b, n in self.batches]
        return jax.tree.map(lambda *a: np.concatenate(a), *parts)

    @functools.cached_property
    def posterior(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{layer: (μ, log σ²)} of q over the split ('' for a single latent layer)."""
        fam, model = self.family, self.exp.model
        key = stream(jax.random.key(self.cfg.seed), "posterior_means")
        return self.over_split(lambda p, b: fam.posteriors(model, p, b, key))

    @functools.cached_property
    def codes(self) -> np.ndarray:
        """Posterior means [N, d] of the first latent layer (a deterministic encoder's codes)."""
        return next(iter(self.posterior.values()))[0]

    @functools.cached_property
    def kl_per_dim(self) -> np.ndarray | None:
        """Mean over the split of the family's ``terms(...)['kl_per_dim']`` (KL to the family's
        prior, every layer); None when the family has no KL term."""
        if not self.family.has_kl:
            return None
        exp, key = self.exp, stream(jax.random.key(self.cfg.seed), "collapse")
        kl = self.over_split(lambda p, b: exp.family.terms(exp.model, p, b, key, 1)["kl_per_dim"])
        return kl.astype(np.float64).mean(0)

    @functools.cached_property
    def pairs(self) -> np.ndarray:
        """``eval.num_pairs`` pairs of distinct test-image indices, fixed by the seed."""
        n = len(self.ds.test_images)
        rng = np.random.default_rng(self.cfg.seed)
        p = min(self.cfg.eval.num_pairs, n // 2)
        return rng.permutation(n)[: 2 * p].reshape(p, 2)

    def decode(self, z: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """Decoder means in [0, 1] for codes [N, d] (and labels [N] for conditional families)."""
        if "_decode" not in self.__dict__:
            scale = self.cfg.data.scale
            self._decode = jax.jit(lambda p, z, y: data.to_unit(decode_mean(self.exp, p, z, y), scale))
        if self.family.conditional:
            y = jnp.asarray(np.zeros(len(z), np.int32) if y is None else y, jnp.int32)
        else:
            y = None
        return np.asarray(self._decode(self.params, jnp.asarray(z, jnp.float32), y))

    def label_of(self, idx: Any) -> np.ndarray | None:
        return None if self.labels is None else self.labels[idx]

    def prior_codes(self, n: int, y: np.ndarray | None = None) -> np.ndarray:
        """n codes from the family's prior (p(z|y) for labels ``y`` of conditional families)."""
        key = stream(jax.random.key(self.cfg.seed), "figures")
        return np.asarray(self.family.sample_prior(self.exp.model, self.params, key, n,
                                                   None if y is None else jnp.asarray(y)))

    @functools.cached_property
    def paths(self) -> np.ndarray:
        """Decoded posterior-mean interpolations [P, T, H, W, C] in [0, 1] between ``pairs``
        (conditional families keep the first image's label along the path)."""
        mu, t = self.codes, self.cfg.eval.interpolation_steps
        z = np.stack([np.asarray(interpolate(jnp.asarray(mu[i]), jnp.asarray(mu[j]), t))
                      for i, j in self.pairs])
        y = self.label_of(np.repeat(self.pairs[:, 0], t))
        return self.decode(z.reshape(-1, z.shape[-1]), y).reshape(*z.shape[:2], *self.ds.image_shape)
