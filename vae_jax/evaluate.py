"""Evaluators: plug-ins named in ``config.eval.evaluators``, each yielding ``(name, value)`` pairs.

:func:`run` builds one :class:`Context` (the test split as the model sees it, the parameters,
posterior statistics computed once and shared) and runs the configured evaluators in order. All
values land in one flat dict; ``metadata`` holds what makes the numbers comparable (dataset,
binarization, split, number of images, epochs, hardware, wall time) and, per evaluator, how its
numbers were estimated and how long that took. A new evaluator is one function that yields pairs
plus one line in :data:`EVALUATORS`.

Families plug in through :class:`Inference`. The plain VAE gets a fast path (the encoder runs once
per batch, not once per chunk of samples); every other family's importance weights come from its
own ``terms(...)["log_w"]``, i.e. its full inference path (the hierarchical VAE's ladder; for the
CVAE log p(x, z | y) − log q(z | x, y), so the estimate is log p(x | y)); a family may instead
define ``inference(exp) -> Inference``. The KL per dimension comes from the family's
``terms(...)["kl_per_dim"]`` (so a learned CVAE prior and the hierarchical levels count), active
units and figures from ``model.encode`` / ``model.decode`` (with ``batch['label']`` for
conditional families). An evaluator that cannot apply to a family (no importance weights, no
Gaussian posterior) raises :class:`NotApplicable`; ``run`` records the reason and goes on.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import platform
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import data, likelihoods, plots
from vae_jax.config import ConfigError
from vae_jax.rng import stream

if TYPE_CHECKING:
    from vae_jax.train import Experiment

log = logging.getLogger(__name__)


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


def describe_model(m) -> str:
    """The architecture a reported number belongs to, in one line: family, network widths (or
    conv channels), latent sizes and the activation, e.g. 'hvae mlp 200-200 tanh, latents 100-50
    (upper 100-100, bottom_up inference)'."""
    net = "-".join(map(str, m.hidden if m.network == "mlp" else m.conv_channels))
    out = f"{m.family} {m.network} {net} {m.activation}, "
    if m.family == "hvae":
        return out + (f"latents {'-'.join(map(str, m.hvae_latents))} (upper "
                      f"{'-'.join(map(str, m.upper_hidden))}, {m.hvae_inference} inference)")
    if m.family == "vqvae":
        return out + f"{m.latent_dim} codes from {m.vq_num_codes} x {m.vq_code_dim}"
    return out + f"latent {m.latent_dim}"


def common_metadata(exp: "Experiment", ds: data.Dataset, epochs: int) -> dict[str, Any]:
    """What every reported number needs next to it to be comparable."""
    m = exp.cfg.model
    return {
        "dataset": ds.name,
        "split": ds.test_split,
        "num_images": len(ds.test_images),
        "binarization": binarization_note(exp, ds),
        "likelihood": m.likelihood,
        "model": describe_model(m),
        "epochs": epochs,
        "seed": exp.cfg.seed,
        "hardware": hardware(),
    }


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
        return dict(common_metadata(self.exp, self.ds, epochs),
                    estimator=f"ELBO, {self.exp.cfg.eval.num_samples} posterior sample(s) per image")


# ----------------------------------------------------------------------------------------------
# Importance-sampled log p(x)


class NotApplicable(Exception):
    """An evaluator does not apply to this model family; the message says why."""


def _conditional(exp: "Experiment") -> bool:
    return bool(getattr(exp.family, "conditional", False))


@dataclasses.dataclass(frozen=True)
class Inference:
    """What the likelihood and collapse evaluators need from a model family.

    ``posterior(params, batch)`` gives q(z | x) for a batch (``batch['image']``, plus
    ``batch['label']`` for conditional models) as ``(mu, logvar)``, or for hierarchical models a
    dict of layer name -> ``(mu, logvar)``; None when the family has no Gaussian posterior.
    ``log_weights(params, batch, q, key, n)`` draws n samples z ~ q through the family's full
    inference path and returns log p(x, z) − log q(z | x), shape [n, B] (``q`` is
    ``posterior``'s output for the same batch, computed once per batch). A conditional family
    returns log p(x, z | y) − log q(z | x, y), so the estimate is log p(x | y).
    """

    posterior: Callable[[Any, dict], Any] | None
    log_weights: Callable[[Any, dict, Any, jax.Array, int], jax.Array]


def _encode(exp: "Experiment", params, batch: dict) -> Any:
    args = (batch["image"], batch["label"]) if _conditional(exp) else (batch["image"],)
    return exp.model.apply({"params": params}, *args, method=exp.model.encode)


def gaussian_inference(exp: "Experiment") -> Inference:
    """The plain VAE: q(z|x) = N(μ, diag σ²) from ``model.encode``, p(z) = N(0, I), p(x|z) from
    ``model.decode``; the encoder runs once per batch, the decoder once per sample."""
    model, lik = exp.model, likelihoods.from_config(exp.cfg.model)

    def log_weights(params, batch, q, key, n):
        mu, logvar = q
        eps = jax.random.normal(key, (n, *mu.shape), mu.dtype)
        z = mu + jnp.exp(0.5 * logvar) * eps
        out = model.apply({"params": params}, z.reshape(-1, z.shape[-1]), method=model.decode)
        x = batch["image"]
        log_px_z = lik.log_prob(out.reshape(n, *x.shape[:-1], -1), x)
        # log p(z) − log q(z|x) = Σ_d −z²/2 + ε²/2 + log σ² / 2 (the 2π terms cancel)
        return log_px_z + 0.5 * jnp.sum(eps * eps - z * z + logvar, axis=-1)

    return Inference(lambda params, batch: _encode(exp, params, batch), log_weights)


def terms_inference(exp: "Experiment") -> Inference:
    """Any family whose ``terms`` return ``log_w``: the weights of its own inference path."""

    def log_weights(params, batch, q, key, n):
        t = exp.family.terms(exp.model, params, batch, key, n)
        if "log_w" not in t:
            raise NotApplicable(f"family {exp.cfg.model.family!r} gives no importance weights "
                                f"(no stochastic encoder)")
        return t["log_w"]

    if hasattr(exp.model, "posterior_means"):  # hierarchical: every level of the full inference path
        key = stream(jax.random.key(exp.cfg.seed), "posterior_means")

        def posterior(params, batch):
            return exp.model.apply({"params": params}, batch["image"], rngs={"noise": key},
                                   method=exp.model.posterior_means)
    elif hasattr(exp.model, "encode"):
        def posterior(params, batch):
            return _encode(exp, params, batch)
    else:
        posterior = None
    return Inference(posterior, log_weights)


def inference(exp: "Experiment") -> Inference:
    """The family's own :class:`Inference` when it defines one; the fast Gaussian path for the
    plain VAE; otherwise the weights of the family's ``terms``."""
    hook = getattr(exp.family, "inference", None)
    if hook is not None:
        return hook(exp)
    return gaussian_inference(exp) if exp.cfg.model.family == "vae" else terms_inference(exp)


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
# Pure metrics (arrays in, numbers out), tested on hand-made inputs


def collapse_stats(mu: np.ndarray | None, kl_per_dim: np.ndarray | None,
                   active_threshold: float = 0.01, kl_threshold: float = 0.1) -> dict[str, Any]:
    """Posterior-collapse diagnostics from posterior means [N, d] and/or the mean KL per
    dimension [d] over the same images (either may be None).

    Active units (Burda et al. 2015): dimension d is active when Cov_x(E_q[z_d]) = Var_x(μ_d)
    exceeds ``active_threshold``. A dimension is collapsed when its mean KL(q(z_d|x) || p(z_d))
    is below ``kl_threshold`` nats (seed 004: 0.1).
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
    successive images (mean over pixels, the T − 1 steps and the P paths; seed 004), and the same
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


# ----------------------------------------------------------------------------------------------
# Model helpers shared by evaluators and figures


def _to_unit(exp: "Experiment", x: jax.Array) -> np.ndarray:
    """Images in data space -> [0, 1] for display."""
    return np.asarray(_unit(exp, x))


def _unit(exp: "Experiment", x: jax.Array) -> jax.Array:
    if exp.cfg.data.scale == "symmetric":
        x = (x + 1.0) / 2.0
    return jnp.clip(x, 0.0, 1.0)


def encode_mean(exp: "Experiment", params, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
    """Posterior means; ``y`` (labels) is used by conditional families and required there."""
    mu, _ = _encode(exp, params, {"image": x, "label": y})
    return mu


def decode_mean(exp: "Experiment", params, z: jax.Array, y: jax.Array | None = None) -> jax.Array:
    """Decoder means in data space; ``y`` as in :func:`encode_mean`."""
    args = (z, y) if _conditional(exp) else (z,)
    out = exp.model.apply({"params": params}, *args, method=exp.model.decode)
    return likelihoods.from_config(exp.cfg.model).mean(out)


def interpolate(z0: jax.Array, z1: jax.Array, steps: int = 10) -> jax.Array:
    """Linear path z(t) = (1 − t) z0 + t z1 at ``steps`` evenly spaced t in [0, 1]."""
    t = jnp.linspace(0.0, 1.0, steps)[:, None]
    return (1.0 - t) * z0[None] + t * z1[None]


def _layers(q: Any) -> list[tuple[str, tuple[np.ndarray, np.ndarray]]]:
    return list(q.items()) if isinstance(q, dict) else [("", q)]


@dataclasses.dataclass
class Context:
    """Everything evaluators share; expensive pieces are computed on first use and cached."""

    exp: "Experiment"
    ds: data.Dataset
    params: Any
    step: int
    epochs: int
    folder: str  # where figures go
    metrics_path: str | None = None  # the workdir's metrics.jsonl, for training curves

    @property
    def cfg(self):
        return self.exp.cfg

    @functools.cached_property
    def images(self) -> jax.Array:
        return test_images(self.exp, self.ds)

    @functools.cached_property
    def labels(self) -> np.ndarray | None:
        return None if self.ds.test_labels is None else np.asarray(self.ds.test_labels, np.int32)

    @functools.cached_property
    def batches(self) -> list[tuple[dict[str, jax.Array], int]]:
        """The split in ``eval.batch_size`` batches (the last zero-padded), with valid counts."""
        bs, x, y = self.cfg.eval.batch_size, self.images, self.labels
        out = []
        for i in range(0, x.shape[0], bs):
            n = min(bs, x.shape[0] - i)
            batch = {"image": jnp.pad(x[i:i + n], ((0, bs - n), (0, 0), (0, 0), (0, 0)))}
            if y is not None:
                batch["label"] = jnp.pad(jnp.asarray(y[i:i + n]), (0, bs - n))
            out.append((batch, n))
        return out

    def _over_split(self, fn: Callable[[Any, dict], Any]) -> Any:
        """``fn(params, batch)`` (jitted) over every batch, valid rows concatenated, as numpy."""
        fn = jax.jit(fn)
        parts = [jax.tree.map(lambda a, n=n: np.asarray(a[:n]), fn(self.params, b))
                 for b, n in self.batches]
        return jax.tree.map(lambda *a: np.concatenate(a), *parts)

    @functools.cached_property
    def encoded(self) -> Any:
        """The output of ``inference(exp).posterior`` over the split (None without one)."""
        post = inference(self.exp).posterior
        return None if post is None else self._over_split(post)

    @functools.cached_property
    def posterior(self) -> Any:
        """q(z|x) over the split: ``(mu, logvar)`` or a dict of layers of them; None if the
        family has no Gaussian posterior."""
        q = self.encoded
        ok = q is not None and all(isinstance(p, tuple) and len(p) == 2 for _, p in _layers(q))
        return q if ok else None

    @functools.cached_property
    def codes(self) -> np.ndarray:
        """Posterior means [N, d] of the (first) latent layer, or a deterministic encoder's codes."""
        if self.posterior is not None:
            return _layers(self.posterior)[0][1][0]
        if isinstance(self.encoded, np.ndarray) and self.encoded.ndim == 2:
            return self.encoded
        raise NotApplicable(f"family {self.cfg.model.family!r} has no posterior means or [N, d] codes")

    @functools.cached_property
    def kl_per_dim(self) -> np.ndarray | None:
        """Mean over the split of the family's ``terms(...)['kl_per_dim']`` (KL to the family's
        prior, every layer); None when the family has no KL term."""
        exp, key = self.exp, stream(jax.random.key(self.cfg.seed), "collapse")
        t = jax.eval_shape(lambda p, b: exp.family.terms(exp.model, p, b, key, 1), self.params,
                           self.batches[0][0])
        if "kl_per_dim" not in t:
            return None
        kl = self._over_split(lambda p, b: exp.family.terms(exp.model, p, b, key, 1)["kl_per_dim"])
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
            self._decode = jax.jit(lambda p, z, y: _unit(self.exp, decode_mean(self.exp, p, z, y)))
        z = jnp.asarray(z, jnp.float32)
        if _conditional(self.exp):
            y = jnp.asarray(np.zeros(len(z), np.int32) if y is None else y, jnp.int32)
        return np.asarray(self._decode(self.params, z, y if _conditional(self.exp) else None))

    def label_of(self, idx: Any) -> np.ndarray | None:
        return None if self.labels is None else self.labels[idx]

    @functools.cached_property
    def paths(self) -> np.ndarray:
        """Decoded posterior-mean interpolations [P, T, H, W, C] in [0, 1] between ``pairs``
        (conditional families keep the first image's label along the path)."""
        mu, t = self.codes, self.cfg.eval.interpolation_steps
        z = np.stack([np.asarray(interpolate(jnp.asarray(mu[i]), jnp.asarray(mu[j]), t))
                      for i, j in self.pairs])
        y = self.label_of(np.repeat(self.pairs[:, 0], t))
        return self.decode(z.reshape(-1, z.shape[-1]), y).reshape(*z.shape[:2], *self.ds.image_shape)


Pairs = Iterator[tuple[str, Any]]


def _test_elbo(ctx: Context) -> Pairs:
    out = TestELBO(ctx.exp, ctx.ds)(ctx.params, ctx.step, ctx.epochs)
    for k in ("elbo", "recon", "kl", "bits_per_dim"):
        yield k, out[k]


def _importance_sampling(ctx: Context) -> Pairs:
    e = ctx.cfg.eval
    inf = inference(ctx.exp)
    fn = jax.jit(lambda p, b, key: importance_log_px(inf, p, b, key, e.k, e.chunk))
    base = stream(jax.random.key(ctx.cfg.seed), "importance")
    log_px, mean_lw = [], []
    for i, (batch, n) in enumerate(ctx.batches):
        a, b = jax.device_get(fn(ctx.params, batch, jax.random.fold_in(base, i)))
        log_px.append(a[:n])
        mean_lw.append(b[:n])
    log_px, mean_lw = np.concatenate(log_px).astype(np.float64), np.concatenate(mean_lw)
    yield "is_log_px", float(log_px.mean())
    yield "is_log_px_stderr", float(log_px.std(ddof=1) / np.sqrt(len(log_px))) if len(log_px) > 1 else 0.0
    yield "is_bits_per_dim", float(-log_px.mean() / (np.prod(ctx.ds.image_shape) * np.log(2.0)))
    yield "is_mean_log_weight", float(mean_lw.mean())


def _collapse(ctx: Context) -> Pairs:
    e = ctx.cfg.eval
    q, kl = ctx.posterior, ctx.kl_per_dim
    if q is None and kl is None:
        raise NotApplicable(f"family {ctx.cfg.model.family!r} has neither a Gaussian posterior nor a KL term")
    layers = _layers(q) if q is not None else []
    for name, (mu, _) in layers:  # active units per posterior layer
        for k, v in collapse_stats(mu, None, e.active_unit_threshold).items():
            yield (f"{name}/{k}" if name else k), v
    if kl is not None:
        yield from collapse_stats(None, kl, kl_threshold=e.collapse_threshold).items()
        yield "kl_total", float(kl.sum())
        sizes = getattr(ctx.cfg.model, "hvae_latents", ()) if ctx.cfg.model.family == "hvae" else ()
        if len(sizes) > 1 and sum(sizes) == len(kl):  # per level, 1 = bottom (next to x)
            for i, part in enumerate(np.split(kl, np.cumsum(sizes)[:-1])):
                for k, v in collapse_stats(None, part, kl_threshold=e.collapse_threshold).items():
                    yield f"layer{i + 1}/{k}", v


def _reconstruction(ctx: Context) -> Pairs:
    exp, codes = ctx.exp, ctx.codes  # raises NotApplicable for families without codes

    def per_image(params, batch):  # x as the model sees it; targets and reconstructions in [0, 1]
        x, y, z = batch["image"], batch.get("label"), batch["code"]
        r = _unit(exp, decode_mean(exp, params, z, y))
        u = _unit(exp, x)
        return bce_per_pixel(u, r), jnp.mean(jnp.square(u - r).reshape(x.shape[0], -1), -1)

    bs = ctx.cfg.eval.batch_size
    z = np.pad(codes, ((0, len(ctx.batches) * bs - len(codes)), (0, 0)))
    fn = jax.jit(per_image)
    parts = [jax.device_get(fn(ctx.params, dict(b, code=jnp.asarray(z[i * bs:(i + 1) * bs]))))
             for i, (b, _) in enumerate(ctx.batches)]
    bce, mse = (np.concatenate([p[j][:n] for p, (_, n) in zip(parts, ctx.batches)]) for j in (0, 1))
    yield "bce_per_pixel", float(bce.mean())
    yield "mse_per_pixel", float(mse.mean())


def _smoothness(ctx: Context) -> Pairs:
    msd, ratio = interpolation_smoothness(ctx.paths)
    yield "interpolation_smoothness", msd
    yield "interpolation_jump_ratio", ratio


def _figures(ctx: Context) -> Pairs:
    yield "figures", sorted(os.path.basename(p) for p in figure_paths(ctx))


@dataclasses.dataclass(frozen=True)
class Evaluator:
    run: Callable[[Context], Pairs]
    describe: Callable[[Any], str]  # Config -> how the numbers are estimated (for the metadata)


EVALUATORS: dict[str, Evaluator] = {
    "test_elbo": Evaluator(_test_elbo, lambda c: (
        f"ELBO, {c.eval.num_samples} posterior sample(s) per image, closed-form KL")),
    "importance_sampling": Evaluator(_importance_sampling, lambda c: (
        f"importance sampling with q(z|x) as proposal, k={c.eval.k} samples per image in chunks "
        f"of {c.eval.chunk}, stable log-mean-exp; deterministic given seed {c.seed}, "
        f"eval.batch_size {c.eval.batch_size} and the chunk size")),
    "collapse": Evaluator(_collapse, lambda c: (
        f"posterior means and the family's KL per dimension, averaged over the split; active "
        f"when Var_x(E_q[z_d]) > {c.eval.active_unit_threshold}; collapsed when mean KL_d < "
        f"{c.eval.collapse_threshold} nats")),
    "reconstruction": Evaluator(_reconstruction, lambda c: (
        "decoder mean at the posterior mean vs the input, both mapped to [0, 1]; BCE and squared "
        "error averaged over pixels and images")),
    "smoothness": Evaluator(_smoothness, lambda c: (
        f"{c.eval.num_pairs} seeded pairs of test images, {c.eval.interpolation_steps}-point "
        f"posterior-mean paths, decoder means in [0, 1]")),
    "figures": Evaluator(_figures, lambda c: "PNG files in the figures folder"),
}


def check_names(names: tuple[str, ...]) -> None:
    """Raises ConfigError (one line) for an evaluator name that is not registered."""
    for n in names:
        if n not in EVALUATORS:
            raise ConfigError(f"config.eval.evaluators={tuple(names)!r}: unknown {n!r}; "
                              f"allowed: {', '.join(EVALUATORS)}")


def restore(cfg, workdir: str) -> tuple["Experiment", data.Dataset, int, Any]:
    """(experiment, dataset, step, params) of the latest checkpoint in ``workdir``, for scripts."""
    from vae_jax import checkpoint, train

    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise checkpoint.CheckpointError(f"no checkpoints in {workdir}: train there first")
    ds = train.load_data(cfg)
    exp = train.Experiment.build(cfg, ds.image_shape)
    ckpt = checkpoint.Checkpointer(workdir, cfg.train.keep_checkpoints)
    restored = ckpt.restore_latest(jax.eval_shape(exp.init_state))
    ckpt.close()
    if restored is None:
        raise checkpoint.CheckpointError(f"no checkpoints in {workdir}: train there first")
    return exp, ds, restored[0], restored[1].params


def _plain(v: Any) -> Any:
    """Numbers and arrays -> JSON types."""
    if isinstance(v, (list, tuple)):
        return [_plain(a) for a in v]
    if isinstance(v, (np.ndarray, jax.Array)):
        return np.asarray(v).tolist()
    if isinstance(v, (np.integer, np.bool_)):
        return v.item()
    if isinstance(v, (float, np.floating)):
        return float(v)
    return v


def run(exp: "Experiment", ds: data.Dataset, params, step: int, epochs: int,
        workdir: str) -> dict[str, Any]:
    """Runs ``exp.cfg.eval.evaluators`` on the test split; figures go to ``<workdir>/figures``.

    Returns ``{"step", <every value>, "metadata": {<common>, "estimator", "wall_s",
    "evaluators": {name: {"estimator", "wall_s", "values": [names]} or {"skipped": why}}}}``."""
    cfg = exp.cfg
    check_names(cfg.eval.evaluators)
    if cfg.eval.num_images:
        n = min(cfg.eval.num_images, len(ds.test_images))
        ds = dataclasses.replace(ds, test_images=ds.test_images[:n], test_labels=(
            None if ds.test_labels is None else ds.test_labels[:n]))
    metrics = os.path.join(workdir, "metrics.jsonl")
    ctx = Context(exp, ds, params, step, epochs, os.path.join(workdir, "figures"),
                  metrics if os.path.exists(metrics) else None)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"step": step}
    blocks: dict[str, dict[str, Any]] = {}
    for name in cfg.eval.evaluators:
        t = time.perf_counter()
        values = {}
        try:
            for k, v in EVALUATORS[name].run(ctx):
                if k in out or k in values:
                    raise ValueError(f"evaluator {name!r} yields {k!r}, which is already taken")
                values[k] = _plain(v)
        except NotApplicable as e:
            blocks[name] = {"skipped": str(e)}
            continue
        out.update(values)
        blocks[name] = {"estimator": EVALUATORS[name].describe(cfg),
                        "wall_s": round(time.perf_counter() - t, 3), "values": list(values)}
    ran = [(n, b) for n, b in blocks.items() if "estimator" in b]
    out["metadata"] = dict(common_metadata(exp, ds, epochs), step=step,
                           estimator="; ".join(f"{n}: {b['estimator']}" if i else b["estimator"]
                                               for i, (n, b) in enumerate(ran)),
                           wall_s=round(time.perf_counter() - t0, 2), evaluators=blocks)
    return out


# ----------------------------------------------------------------------------------------------
# Figures


def write_figures(exp: "Experiment", params, ds: data.Dataset, folder: str,
                  metrics_path: str | None = None) -> list[str]:
    """All figures of :func:`figure_paths` into ``folder``; training curves come from
    ``metrics_path`` or, when None, from a ``metrics.jsonl`` next to ``folder`` if there is one."""
    if metrics_path is None:
        sibling = os.path.join(os.path.dirname(os.path.abspath(folder)), "metrics.jsonl")
        metrics_path = sibling if os.path.exists(sibling) else None
    try:
        return figure_paths(Context(exp, ds, params, 0, 0, folder, metrics_path))
    except NotApplicable as e:
        log.warning("no figures: %s", e)
        return []


def _prior_codes(ctx: Context, n: int, y: np.ndarray | None) -> np.ndarray:
    """n codes from the family's prior: ancestral ``model.sample_prior`` when it has one (the
    hierarchical VAE), p(z|y) from ``model.prior`` for conditional families, else N(0, I)."""
    model, key = ctx.exp.model, stream(jax.random.key(ctx.cfg.seed), "figures")
    if hasattr(model, "sample_prior"):
        return np.asarray(model.apply({"params": ctx.params}, key, n, method=model.sample_prior))
    eps = jax.random.normal(key, (n, ctx.codes.shape[-1]))
    if _conditional(ctx.exp) and hasattr(model, "prior"):
        mu, logvar = model.apply({"params": ctx.params}, jnp.asarray(y), method=model.prior)
        return np.asarray(mu + jnp.exp(0.5 * logvar) * eps)
    return np.asarray(eps)


def figure_paths(ctx: Context) -> list[str]:
    """Reconstructions; 8×8 prior samples (for conditional families row r is class r);
    posterior-mean interpolation strips; latent traversals (one row per dimension, highest KL
    first); the latent scatter coloured by label (PCA for d > 2) and for d = 2 the decoded
    manifold; z̄(5) + z̄(3) − z̄(8) from class-mean codes when the labels allow (unconditional
    families); KL per dimension; training curves when a metrics file is known."""
    exp, ds, folder = ctx.exp, ctx.ds, ctx.folder
    os.makedirs(folder, exist_ok=True)
    x, mu, labels = ctx.images, ctx.codes, ctx.labels
    d = mu.shape[-1]
    cond = _conditional(exp)
    f = lambda name: os.path.join(folder, name)  # noqa: E731
    paths = []
    n = min(32, x.shape[0] // 8 * 8)
    paths.append(plots.reconstructions(_to_unit(exp, x[:n]), ctx.decode(mu[:n], ctx.label_of(slice(0, n))),
                                       f("reconstructions.png")))
    y = np.arange(64, dtype=np.int32) // 8 if cond else None
    paths.append(plots.image_grid(ctx.decode(_prior_codes(ctx, 64, y), y), 8, 8, f("samples.png"),
                                  "samples from the prior" + (" (row r: class r)" if cond else "")))
    paths.append(plots.strips(list(ctx.paths), f("interpolation.png"),
                              "posterior-mean interpolations between test images",
                              [f"{i}→{j}" for i, j in ctx.pairs]))

    kl_all = ctx.kl_per_dim
    kl = None if kl_all is None or len(kl_all) < d else kl_all[:d]  # the first layer's dims
    order = np.argsort(kl)[::-1] if kl is not None else np.argsort(mu.var(0))[::-1]
    vals = np.linspace(-3.0, 3.0, 10)
    codes = np.repeat(mu[0][None, None], d, 0).repeat(len(vals), 1)  # [d, 10, d] around image 0
    for row, dim in enumerate(order):
        codes[row, :, dim] = vals
    y0 = ctx.label_of(np.zeros(d * len(vals), np.int32))
    trav = ctx.decode(codes.reshape(-1, d), y0).reshape(d, len(vals), *ds.image_shape)
    paths.append(plots.strips(list(trav), f("traversals.png"),
                              "latent traversals from test image 0's posterior mean, z_d in [-3, 3]",
                              [f"z{k} KL {kl[k]:.2f}" if kl is not None else f"z{k}" for k in order]))
    if kl_all is not None:
        paths.append(plots.bars(kl_all, f("kl_per_dim.png"), "mean KL per latent dimension (test)",
                                "latent dimension", "KL (nats)", threshold=ctx.cfg.eval.collapse_threshold))

    if d == 2:
        g = 20
        lin = np.linspace(-3.0, 3.0, g)
        grid = np.stack(np.meshgrid(lin, lin[::-1]), -1).reshape(-1, 2)  # rows top→bottom
        yg = ctx.label_of(np.zeros(len(grid), np.int32))
        paths.append(plots.manifold(ctx.decode(grid, yg), g, 3.0, f("manifold.png")))
    m = min(5000, len(mu))
    if d == 2:
        proj, axes, title = mu, ("z[0]", "z[1]"), f"posterior means of {m} test images"
    else:
        proj, frac = pca_2d(mu)
        axes = ("principal component 1", "principal component 2")
        title = f"PCA of {d}-D posterior means, {m} test images ({100 * frac:.0f}% of variance)"
    paths.append(plots.latent_scatter(proj[:m], None if labels is None else labels[:m],
                                      f("latent_scatter.png"), title, axes))

    if not cond and labels is not None and all(np.any(labels == c) for c in (3, 5, 8)):
        means = {c: mu[labels == c].mean(0) for c in (3, 5, 8)}
        codes = np.stack([means[5], means[3], means[8], means[5] + means[3] - means[8]])
        titles = ["z̄(5)", "z̄(3)", "z̄(8)", "z̄(5) + z̄(3) − z̄(8)"]
        paths.append(plots.image_row(ctx.decode(codes), titles, f("arithmetic.png"),
                                     "latent arithmetic on class-mean codes"))

    if ctx.metrics_path:
        from vae_jax.metrics import read_jsonl

        rows = list(read_jsonl(ctx.metrics_path))

        def line(split, key):
            sel = [r for r in rows if r["split"] == split and isinstance(r.get(key), (int, float))]
            return [r["step"] for r in sel], [r[key] for r in sel]

        panels = {label: {s: line(s, key) for s in ("train", "test")} for key, label in
                  (("elbo", "ELBO (nats)"), ("recon", "reconstruction (nats)"), ("kl", "KL (nats)"))}
        if any(xs for p in panels.values() for xs, _ in p.values()):
            paths.append(plots.line_panels(panels, f("training_curves.png"), "training curves"))
    return paths
