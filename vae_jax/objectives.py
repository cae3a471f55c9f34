"""The ELBO and its pieces: closed-form Gaussian KL, per-example terms, the β-weighted loss.

Every quantity is per image, in nats. ``elbo`` is always the unweighted bound
E_q[log p(x|z)] - KL(q(z|x) || p(z)); β only enters the training loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vae_jax.config import OBJECTIVES


def gaussian_kl(mu: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mu, exp(logvar)) || N(0, 1)) per dimension: ½(μ² + σ² − 1 − log σ²)."""
    return 0.5 * (jnp.square(mu) + jnp.exp(logvar) - 1.0 - logvar)


def reparameterize(key: jax.Array, mu: jax.Array, logvar: jax.Array, num_samples: int) -> jax.Array:
    """z = μ + σ ⊙ ε with ε ~ N(0, I); returns [num_samples, *mu.shape]."""
    eps = jax.random.normal(key, (num_samples, *mu.shape), mu.dtype)
    return mu + jnp.exp(0.5 * logvar) * eps


def elbo_terms(log_px: jax.Array, kl_per_dim: jax.Array) -> dict[str, jax.Array]:
    """Per-example terms from log p(x|z) for L samples ([L, B]) and the KL per dimension ([B, d]).

    ``recon`` is the Monte Carlo estimate of −E_q[log p(x|z)] (a cost, in nats), ``kl`` the sum
    of ``kl_per_dim`` (the closed-form KL, or a Monte Carlo estimate under a learned prior,
    ``vae_jax.priors``), ``elbo`` = −recon − kl.
    """
    recon = -jnp.mean(log_px, axis=0)
    kl = jnp.sum(kl_per_dim, axis=-1)
    return {"recon": recon, "kl": kl, "elbo": -recon - kl, "kl_per_dim": kl_per_dim}


def beta_vae_loss(terms: dict[str, jax.Array], beta: float | jax.Array) -> jax.Array:
    """Mean over the batch of recon + β·KL (β = 1: the negative ELBO)."""
    return jnp.mean(terms["recon"] + beta * terms["kl"])


# --- KL schedules, free bits, capacity, IWAE --------------------------------------------------
# Batchable hyperparameters arrive as a dict of float32 scalars ``hp`` (experiment.hyperparams),
# so one compiled program can train a population with different values.


def kl_weight(schedule: str, step: jax.Array, hp: dict[str, jax.Array], cycle_ratio: float) -> jax.Array:
    """β at ``step``: 'constant' β; 'linear' warm-up 0 → β over ``warmup_steps`` (Bowman et al.
    2016, Sønderby et al. 2016); 'cyclical' repeats a linear rise over the first ``cycle_ratio``
    of every ``cycle_steps`` then holds β (Fu et al. 2019). ('capacity' uses β as well.)"""
    step = jnp.asarray(step, jnp.float32)
    if schedule == "linear":
        return hp["beta"] * jnp.minimum(1.0, step / hp["warmup_steps"])
    if schedule == "cyclical":
        phase = jnp.mod(step, hp["cycle_steps"]) / hp["cycle_steps"]
        return hp["beta"] * jnp.minimum(1.0, phase / cycle_ratio)
    return hp["beta"]


def capacity(step: jax.Array, hp: dict[str, jax.Array]) -> jax.Array:
    """C at ``step``: linear from 0 to ``capacity_max`` over ``capacity_steps`` (Burgess et al. 2018)."""
    return hp["capacity_max"] * jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / hp["capacity_steps"])


def free_bits_kl(kl_per_dim: jax.Array, free_bits: jax.Array, group: int = 1) -> jax.Array:
    """Σ_groups max(λ, E_batch[KL_group]) (Kingma et al. 2016). A group whose batch-mean KL is
    below λ contributes the constant λ and so gets no gradient. λ = 0 gives the plain mean KL."""
    kl = jnp.mean(kl_per_dim, axis=0)
    d = kl.shape[-1]
    pad = (-d) % group
    kl = jnp.pad(kl, (0, pad)).reshape(-1, group).sum(-1)
    return jnp.sum(jnp.maximum(free_bits, kl))


def iwae_bound(log_w: jax.Array) -> jax.Array:
    """log (1/k) Σ_k w_k per example from log-weights [k, B] (Burda et al. 2015); k = 1 is the ELBO."""
    k = log_w.shape[0]
    return jax.scipy.special.logsumexp(log_w, axis=0) - jnp.log(jnp.float32(k))


def diag_gaussian_log_prob(z: jax.Array, mu: jax.Array, logvar: jax.Array) -> jax.Array:
    """log N(z; μ, diag exp(logvar)) summed over the last axis."""
    return -0.5 * jnp.sum(jnp.square(z - mu) * jnp.exp(-logvar) + logvar + jnp.log(2 * jnp.pi), -1)


def gaussian_kl_to(mu_q, logvar_q, mu_p, logvar_p) -> jax.Array:
    """KL(N(μq, σq²) || N(μp, σp²)) per dimension."""
    return 0.5 * (logvar_p - logvar_q + (jnp.exp(logvar_q) + jnp.square(mu_q - mu_p))
                  * jnp.exp(-logvar_p) - 1.0)


def training_loss(terms: dict[str, jax.Array], step: jax.Array, hp: dict[str, jax.Array],
                  cfg) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The scalar loss of the objective ``cfg.name`` (an ObjectiveConfig) and what to log about
    it. Families without a KL term (VQ-VAE, AE, DAE) give ``aux_loss`` (codebook and commitment
    losses, or 0) and are trained on recon + aux_loss whatever the objective."""
    if "aux_loss" in terms:
        return jnp.mean(terms["recon"]) + jnp.mean(terms["aux_loss"]), {}
    return OBJECTIVES[cfg.name](terms, step, hp, cfg)


def elbo_loss(terms, step, hp, cfg):
    """'capacity': recon + γ·|KL − C|; every other schedule recon + β_t · KL, with KL under free
    bits when λ > 0."""
    recon = jnp.mean(terms["recon"])
    if cfg.schedule == "capacity":
        c = capacity(step, hp)
        return recon + hp["capacity_gamma"] * jnp.abs(jnp.mean(terms["kl"]) - c), {"capacity": c}
    beta = kl_weight(cfg.schedule, step, hp, cfg.cycle_ratio)
    kl = free_bits_kl(terms["kl_per_dim"], hp["free_bits"], cfg.free_bits_group)
    return recon + beta * kl, {"beta": beta}


def iwae_loss(terms, step, hp, cfg):
    """The negative k-sample importance-weighted bound (k = objective.num_samples)."""
    return -jnp.mean(iwae_bound(terms["log_w"])), {}


OBJECTIVES.register("elbo", elbo_loss)
OBJECTIVES.register("iwae", iwae_loss)
