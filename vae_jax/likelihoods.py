"""Observation models log p(x | z) on the decoder's per-pixel outputs.

Each likelihood says how many decoder channels it needs per image channel, how to turn those
outputs into a log-density summed over pixels (one number per image, in nats), what image to show
(the mean) and how to sample. All are numerically stable in the decoder's raw outputs.
'logistic' gives a log-probability of 8-bit levels (a mass, not a density).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

_LOG_2PI = math.log(2 * math.pi)


def _flat(a: jax.Array) -> jax.Array:
    """[..., H, W, C] -> [..., H·W·C]. Elementwise likelihood math runs on these flat rows:
    XLA:CPU does not vectorise along a trailing channel axis of size 1 (README, "Speed")."""
    return a.reshape(*a.shape[:-3], -1)


def _sum_pixels(a: jax.Array) -> jax.Array:
    return a.reshape(*a.shape[:-3], -1).sum(-1)


@dataclasses.dataclass(frozen=True)
class Likelihood:
    """A per-pixel observation model; ``params`` has ``params_per_channel * C`` channels."""

    name: str
    params_per_channel: int
    log_prob: Callable[[jax.Array, jax.Array], jax.Array]  # (params, x) -> [...] summed over pixels
    mean: Callable[[jax.Array], jax.Array]  # params -> image in data space
    sample: Callable[[jax.Array, jax.Array], jax.Array]  # (params, key) -> image


@jax.custom_vjp
def _bernoulli_elementwise(logits: jax.Array, x: jax.Array) -> jax.Array:
    return _bernoulli_fwd(logits, x)[0]


def _bernoulli_fwd(logits, x):
    # x log σ(l) + (1 - x) log(1 - σ(l)) = x l - softplus(l), with
    # softplus(l) = max(l, 0) + log1p(exp(-|l|)): stable for any logit. The backward pass reuses
    # e = exp(-|l|) for σ(l), so value and gradient cost one exp between them (a custom VJP,
    # because this is the hottest elementwise op of an MNIST epoch on CPU).
    e = jnp.exp(-jnp.abs(logits))
    r = 1.0 / (1.0 + e)
    sig = jnp.where(logits >= 0, r, e * r)
    return x * logits - jnp.maximum(logits, 0.0) - jnp.log1p(e), (sig, x, logits)


def _bernoulli_bwd(res, g):
    sig, x, logits = res
    return g * (x - sig), g * logits


_bernoulli_elementwise.defvjp(_bernoulli_fwd, _bernoulli_bwd)


def bernoulli_log_prob(logits: jax.Array, x: jax.Array) -> jax.Array:
    """Σ_pixels x log σ(l) + (1 − x) log(1 − σ(l)). For binary x this is the Bernoulli
    log-mass; for grayscale x in [0, 1] it is minus the summed BCE that the PyTorch example trains
    on (not a normalised density of grayscale images)."""
    return jnp.sum(_bernoulli_elementwise(_flat(logits), _flat(jnp.broadcast_to(x, logits.shape))), -1)


def gaussian_log_prob(mean: jax.Array, log_sigma: jax.Array, x: jax.Array) -> jax.Array:
    mean, log_sigma, x = _flat(mean), _flat(log_sigma), _flat(jnp.broadcast_to(x, mean.shape))
    z = (x - mean) * jnp.exp(-log_sigma)
    return jnp.sum(-0.5 * z * z - log_sigma - 0.5 * _LOG_2PI, -1)


def laplace_log_prob(loc: jax.Array, log_b: jax.Array, x: jax.Array) -> jax.Array:
    loc, log_b, x = _flat(loc), _flat(log_b), _flat(jnp.broadcast_to(x, loc.shape))
    return jnp.sum(-jnp.abs(x - loc) * jnp.exp(-log_b) - log_b - math.log(2.0), -1)


_HALF_BIN = 1.0 / 255.0  # half the width of one of the 256 levels of an 8-bit image in [-1, 1]


def discretized_logistic_log_prob(mean: jax.Array, log_scale: jax.Array, x: jax.Array) -> jax.Array:
    """Σ_pixels log P(x) for x on the 256-level grid of [-1, 1] (bin width 2/255) under a
    logistic(μ, s) discretized into the bins (Salimans et al. 2017, one mixture component):

        P(x) = σ((x − μ + 1/255)/s) − σ((x − μ − 1/255)/s)   for −1 < x < 1,
        P(−1) = σ((−1 − μ + 1/255)/s),   P(1) = 1 − σ((1 − μ − 1/255)/s),

    so the 256 probabilities sum to 1 for any μ, s. Stability: PixelCNN++ subtracts the two cdfs
    and falls back to log pdf + log(2/255) when the difference drops below 1e-5 (an approximation
    with a small jump at the switch). Here the difference is factored exactly instead,

        σ(a) − σ(b) = σ(a) σ(−b) (1 − e^{−(a−b)}),   a − b = 2/(255 s) > 0,

    whose log, −softplus(−a) − softplus(b) + log(−expm1(−(a − b))), is finite and accurate for
    any μ, s and x in float32: it never underflows to log 0 and needs no fallback."""
    inv_s = jnp.exp(-log_scale)
    centered = x - mean
    a = inv_s * (centered + _HALF_BIN)  # upper bin edge
    b = inv_s * (centered - _HALF_BIN)  # lower bin edge
    log_cdf_upper = -jax.nn.softplus(-a)  # log σ(a): the whole left tail, for x = −1
    log_sf_lower = -jax.nn.softplus(b)  # log(1 − σ(b)): the whole right tail, for x = 1
    log_mid = log_cdf_upper + log_sf_lower + jnp.log(-jnp.expm1(-2.0 * _HALF_BIN * inv_s))
    lp = jnp.where(x < -0.999, log_cdf_upper, jnp.where(x > 0.999, log_sf_lower, log_mid))
    return _sum_pixels(lp)


def discretized_logistic_sample(mean: jax.Array, log_scale: jax.Array, key: jax.Array) -> jax.Array:
    """A draw from the discretized logistic: a logistic sample clipped to [-1, 1] and rounded to
    the nearest of the 256 levels."""
    u = jax.random.uniform(key, mean.shape, mean.dtype, minval=1e-5, maxval=1.0 - 1e-5)
    x = jnp.clip(mean + jnp.exp(log_scale) * (jnp.log(u) - jnp.log1p(-u)), -1.0, 1.0)
    level = jnp.round((x + 1.0) * 127.5)  # 0..255
    return jnp.clip(level * (2.0 / 255.0) - 1.0, -1.0, 1.0)  # the clip absorbs float rounding


def _split(params: jax.Array) -> tuple[jax.Array, jax.Array]:
    c = params.shape[-1] // 2
    return params[..., :c], params[..., c:]


def make(name: str, sigma: float = 1.0, min_log_sigma: float = -7.0) -> Likelihood:
    """The likelihood registered as ``name`` (see ``config.LIKELIHOODS``)."""
    log_s = math.log(sigma)
    if name == "bernoulli":
        return Likelihood(
            name, 1, bernoulli_log_prob, jax.nn.sigmoid,
            lambda p, key: jax.random.bernoulli(key, jax.nn.sigmoid(p)).astype(p.dtype))
    if name == "gaussian":
        return Likelihood(
            name, 1, lambda p, x: gaussian_log_prob(p, jnp.full_like(p, log_s), x), lambda p: p,
            lambda p, key: p + sigma * jax.random.normal(key, p.shape, p.dtype))
    if name == "gaussian_learned":
        def ls(p):  # a soft floor keeps the learned scale away from 0 without cutting gradients
            return min_log_sigma + jax.nn.softplus(_split(p)[1] - min_log_sigma)

        return Likelihood(
            name, 2, lambda p, x: gaussian_log_prob(_split(p)[0], ls(p), x),
            lambda p: _split(p)[0],
            lambda p, key: _split(p)[0] + jnp.exp(ls(p)) * jax.random.normal(
                key, _split(p)[0].shape, p.dtype))
    if name == "logistic":
        def lsl(p):  # the same soft floor as 'gaussian_learned' on the log-scale
            return min_log_sigma + jax.nn.softplus(_split(p)[1] - min_log_sigma)

        return Likelihood(
            name, 2, lambda p, x: discretized_logistic_log_prob(_split(p)[0], lsl(p), x),
            lambda p: jnp.clip(_split(p)[0], -1.0, 1.0),
            lambda p, key: discretized_logistic_sample(_split(p)[0], lsl(p), key))
    if name == "laplace":
        return Likelihood(
            name, 1, lambda p, x: laplace_log_prob(p, jnp.full_like(p, log_s), x), lambda p: p,
            lambda p, key: p + sigma * jax.random.laplace(key, p.shape, p.dtype))
    raise ValueError(f"unknown likelihood {name!r}")  # config validation catches this first


def from_config(cfg) -> Likelihood:
    """The likelihood a ``ModelConfig`` names."""
    return make(cfg.likelihood, cfg.sigma, cfg.min_log_sigma)
