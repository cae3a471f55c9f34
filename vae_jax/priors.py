"""Priors p(z) over a flat Gaussian latent, chosen by ``model.prior`` (``config.PRIORS``):

- 'normal': N(0, I); the KL to a diagonal-Gaussian posterior has a closed form.
- 'mog': a learned mixture of K diagonal Gaussians, Σ_k π_k N(z; m_k, diag s_k²), with learned
  means, log-variances and mixture logits.
- 'vamp': the VampPrior (Tomczak & Welling 2018), p(z) = 1/K Σ_k q(z | u_k): the family's own
  encoder applied to K learned pseudo-inputs u_k. As in their code, the pseudo-inputs start as
  N(0.05, 0.01²) per pixel and pass through a hardtanh to the data range (here a clip).

Both learned priors are mixtures of diagonal Gaussians (:class:`Mixture`), so one density, one
sampler and one KL estimate serve both. Their KL(q(z|x) || p(z)) has no closed form and is
estimated by Monte Carlo at the posterior samples z_l ~ q(z|x) the likelihood term uses:
KL ≈ 1/L Σ_l [log q(z_l|x) − log p(z_l)] (Tomczak & Welling do the same).

A family uses them by holding a :class:`LearnedPrior` submodule (its parameters sit in the
model's parameter tree, so the optimizer trains them and Orbax checkpoints them) and calling
:func:`mixture`, :func:`kl_terms`, :func:`log_prob` and :func:`sample`.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

_LOG_2PI = math.log(2 * math.pi)


class Mixture(NamedTuple):
    """Σ_k exp(log_weights_k) N(z; means_k, diag exp(logvars_k)); weights normalised."""

    means: jax.Array  # [K, d]
    logvars: jax.Array  # [K, d]
    log_weights: jax.Array  # [K]


def describe(kind: str, components: int) -> str:
    return {"normal": "N(0, I) prior",
            "mog": f"mixture-of-{components}-Gaussians prior (Monte Carlo KL)",
            "vamp": f"VampPrior with {components} pseudo-inputs (Monte Carlo KL)"}[kind]


class LearnedPrior(nn.Module):
    """The parameters of a learned prior: 'mog' means [K, d] (N(0, 1) init, so components start
    spread like draws from N(0, I)), log-variances (0) and logits (0: equal weights); 'vamp' the
    pseudo-inputs [K, *input_shape]."""

    kind: str
    components: int
    latent_dim: int
    input_shape: tuple[int, ...]
    data_range: tuple[float, float] = (0.0, 1.0)
    init_mean: float = 0.05
    init_std: float = 0.01

    def setup(self):
        k, d = self.components, self.latent_dim
        if self.kind == "mog":
            self.means = self.param("means", nn.initializers.normal(1.0), (k, d))
            self.logvars = self.param("logvars", nn.initializers.zeros, (k, d))
            self.logits = self.param("logits", nn.initializers.zeros, (k,))
        elif self.kind == "vamp":
            self.pseudo = self.param(
                "pseudo_inputs",
                lambda key, shape: self.init_mean + self.init_std * jax.random.normal(key, shape),
                (k, *self.input_shape))
        else:
            raise ValueError(f"no learned prior {self.kind!r}")

    def __call__(self) -> Mixture | jax.Array:
        """'mog': the mixture; 'vamp': the pseudo-inputs, clipped to the data range."""
        if self.kind == "mog":
            return Mixture(self.means, self.logvars, jax.nn.log_softmax(self.logits))
        return jnp.clip(self.pseudo, *self.data_range)


def mixture(prior: LearnedPrior, encode: Callable[[jax.Array], tuple[jax.Array, jax.Array]]) -> Mixture:
    """The prior as a mixture; ``encode`` maps inputs to (μ, log σ²) of q(z|x) (for 'vamp')."""
    out = prior()
    if prior.kind == "mog":
        return out
    mu, logvar = encode(out)
    k = mu.shape[0]
    return Mixture(mu, logvar, jnp.full((k,), -math.log(k), mu.dtype))


def _f32(mix: Mixture) -> Mixture:
    return Mixture(*(jnp.asarray(a, jnp.float32) for a in mix))


def _component_log_probs(z: jax.Array, mix: Mixture) -> jax.Array:
    """log N(z; m_k, diag s_k²) for every component, z [..., d] -> [..., K]. The quadratic form
    Σ_d (z_d − m_kd)² / s_kd² is expanded into matrix products, so memory and time are those of
    a [..., d] x [d, K] product rather than of a [..., K, d] array (importance sampling evaluates
    it for thousands of samples per image, training for every sample of every step)."""
    m, lv, _ = mix
    prec = jnp.exp(-lv)
    quad = _mm(z * z, prec.T) - 2.0 * _mm(z, (m * prec).T) + jnp.sum(m * m * prec, -1)
    return -0.5 * (jnp.maximum(quad, 0.0) + jnp.sum(lv, -1) + z.shape[-1] * _LOG_2PI)


def _mm(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def log_prob(z: jax.Array, mix: Mixture) -> jax.Array:
    """log p(z) = log Σ_k π_k N(z; m_k, diag s_k²) for z [..., d] -> [...]."""
    mix = _f32(mix)
    return jax.nn.logsumexp(_component_log_probs(jnp.asarray(z, jnp.float32), mix) + mix.log_weights, -1)


def log_prob_per_dim(z: jax.Array, mix: Mixture) -> jax.Array:
    """log p(z) split over dimensions, [..., d]; the terms sum to log p(z) exactly.

    A mixture does not factorise over dimensions, so the split is a choice. With the
    responsibilities r_k(z) = π_k N_k(z) / p(z), the identity log p(z) = Σ_k r_k log N_k(z)
    − KL(r(z) || π) holds for every z; Σ_k r_k log N_k(z) is a sum over dimensions of
    Σ_k r_k log N(z_d; m_kd, s_kd²) (dimension d's log-density under the components that explain
    z), and the component-choice term KL(r || π) ≥ 0 is shared equally by the d dimensions. For
    one component the terms are the per-dimension Gaussian log-densities. (The exact chain rule
    log p(z_d | z_<d) needs a [..., K, d] array and made a training step of the MNIST models an
    order of magnitude slower on CPU.)"""
    mix = _f32(mix)
    m, lv, lw = mix
    z = jnp.asarray(z, jnp.float32)
    joint = _component_log_probs(z, mix) + lw  # [..., K]
    log_p = jax.nn.logsumexp(joint, -1)
    r = jnp.exp(joint - log_p[..., None])
    prec = jnp.exp(-lv)
    # Σ_k r_k log N(z_d; m_kd, s_kd²) for every d, by products of r [..., K] with [K, d] arrays
    per_dim = -0.5 * (z * z * _mm(r, prec) - 2.0 * z * _mm(r, m * prec)
                      + _mm(r, m * m * prec + lv) + _LOG_2PI)
    rest = log_p - per_dim.sum(-1)  # −KL(r || π), up to rounding
    return per_dim + rest[..., None] / z.shape[-1]


def kl_terms(z: jax.Array, mu: jax.Array, logvar: jax.Array, mix: Mixture
             ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Monte Carlo KL(q || p) of L samples z [L, B, d] ~ q = N(μ, diag exp(logvar)) [B, d]:
    (kl_per_dim [B, d], log p(z) [L, B], log q(z|x) [L, B]).

    ``kl_per_dim`` is the sample mean of log q(z_d|x) minus dimension d's share of log p(z)
    (:func:`log_prob_per_dim`). The terms sum to the Monte Carlo KL that the loss and the ELBO
    use, so free bits, β and warm-up act on that KL; for a single Gaussian component each term's
    expectation is that dimension's closed-form KL. For a mixture, read a dimension's value as
    its KL against the components that explain the sample, plus an equal share of the nats spent
    on choosing the component."""
    zf = jnp.asarray(z, jnp.float32)
    mu, logvar = jnp.asarray(mu, jnp.float32), jnp.asarray(logvar, jnp.float32)
    log_q = -0.5 * (jnp.square(zf - mu) * jnp.exp(-logvar) + logvar + _LOG_2PI)  # [L, B, d]
    log_p = log_prob_per_dim(zf, mix)
    kl_per_dim = jnp.mean(log_q - log_p, axis=0)
    return kl_per_dim.astype(z.dtype), log_p.sum(-1).astype(z.dtype), log_q.sum(-1).astype(z.dtype)


def sample(key: jax.Array, n: int, mix: Mixture) -> jax.Array:
    """n draws from the mixture: a component k ~ π, then z ~ N(m_k, diag s_k²); [n, d]."""
    k_comp, k_z = jax.random.split(key)
    m, lv, lw = _f32(mix)
    c = jax.random.categorical(k_comp, lw, shape=(n,))
    return m[c] + jnp.exp(0.5 * lv[c]) * jax.random.normal(k_z, (n, m.shape[-1]), jnp.float32)
