"""The ELBO and its pieces: closed-form Gaussian KL, per-example terms, the β-weighted loss.

Every quantity is per image, in nats. ``elbo`` is always the unweighted bound
E_q[log p(x|z)] - KL(q(z|x) || p(z)); β only enters the training loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def gaussian_kl(mu: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mu, exp(logvar)) || N(0, 1)) per dimension: ½(μ² + σ² − 1 − log σ²)."""
    return 0.5 * (jnp.square(mu) + jnp.exp(logvar) - 1.0 - logvar)


def reparameterize(key: jax.Array, mu: jax.Array, logvar: jax.Array, num_samples: int) -> jax.Array:
    """z = μ + σ ⊙ ε with ε ~ N(0, I); returns [num_samples, *mu.shape]."""
    eps = jax.random.normal(key, (num_samples, *mu.shape), mu.dtype)
    return mu + jnp.exp(0.5 * logvar) * eps


def elbo_terms(log_px: jax.Array, kl_per_dim: jax.Array) -> dict[str, jax.Array]:
    """Per-example terms from log p(x|z) for L samples ([L, B]) and the KL per dimension ([B, d]).

    ``recon`` is the Monte Carlo estimate of −E_q[log p(x|z)] (a cost, in nats), ``kl`` the
    closed-form KL, ``elbo`` = −recon − kl.
    """
    recon = -jnp.mean(log_px, axis=0)
    kl = jnp.sum(kl_per_dim, axis=-1)
    return {"recon": recon, "kl": kl, "elbo": -recon - kl, "kl_per_dim": kl_per_dim}


def beta_vae_loss(terms: dict[str, jax.Array], beta: float | jax.Array) -> jax.Array:
    """Mean over the batch of recon + β·KL (β = 1: the negative ELBO)."""
    return jnp.mean(terms["recon"] + beta * terms["kl"])
