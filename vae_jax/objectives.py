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


# --- Total correlation: β-TCVAE (Chen et al. 2018) and FactorVAE (Kim & Mnih 2018) -------------


def log_importance_weights(batch_size: int, dataset_size: jax.Array, estimator: str) -> jax.Array:
    """log w[i, j], the weight of q(z_i | x_j) in the estimate log q(z_i) ≈ log Σ_j w_ij q(z_i|x_j)
    over a minibatch of B = ``batch_size`` from a dataset of N = ``dataset_size`` points.

    'mws' (minibatch-weighted sampling): w_ij = 1 / B for every j, so that a batch holding the
    whole dataset gives q(z) exactly. (Chen et al.'s equation and code use 1 / (N·B), which
    shifts the estimate of TC = log q(z) − Σ_d log q(z_d) by the constant (d − 1)·log N: the
    same gradients, a value offset by tens of nats.) 'mss' (minibatch-stratified
    sampling, Chen et al. 2018, appendix C): x_i itself has weight 1/N, the other M = B − 1
    points stand for the rest of the dataset, one of them (j = i + 1 mod B) with weight
    (N − M) / (N·M) and the remaining M − 1 with 1/M each; every row sums to 1. Needs N ≥ B."""
    n = jnp.asarray(dataset_size, jnp.float32)
    b = batch_size
    if estimator == "mws":
        return jnp.full((b, b), -jnp.log(jnp.float32(b)))
    if estimator != "mss":
        raise ValueError(f"unknown total-correlation estimator {estimator!r}")
    m = b - 1
    eye = jnp.eye(b, dtype=bool)
    nxt = jnp.roll(eye, 1, axis=1)  # [i, i + 1 mod B]
    w = jnp.where(eye, 1.0 / n, jnp.where(nxt, (n - m) / (n * m), 1.0 / m))
    return jnp.log(w)


def aggregate_posterior_logs(z: jax.Array, mu: jax.Array, logvar: jax.Array, dataset_size,
                             estimator: str = "mss") -> tuple[jax.Array, jax.Array]:
    """Minibatch estimates of log q(z_i) and Σ_d log q(z_id) for the codes z [B, d] sampled from
    the batch's own posteriors N(mu, exp(logvar)) [B, d], where q(z) = E_x q(z|x) is the
    aggregate posterior; each [B]."""
    # log N(z_i,d; mu_j,d, var_j,d): [B (sample i), B (posterior j), d]
    per_dim = -0.5 * (jnp.square(z[:, None] - mu[None]) * jnp.exp(-logvar[None]) + logvar[None]
                      + jnp.log(2 * jnp.pi))
    log_w = log_importance_weights(z.shape[0], dataset_size, estimator)
    log_qz = jax.scipy.special.logsumexp(log_w + per_dim.sum(-1), axis=1)
    log_prod = jnp.sum(jax.scipy.special.logsumexp(log_w[..., None] + per_dim, axis=1), -1)
    return log_qz, log_prod


def total_correlation(z, mu, logvar, dataset_size, estimator: str = "mss") -> jax.Array:
    """The minibatch estimate of TC = KL(q(z) || Π_d q(z_d)) = E_q[log q(z) − Σ_d log q(z_d)]."""
    log_qz, log_prod = aggregate_posterior_logs(z, mu, logvar, dataset_size, estimator)
    return jnp.mean(log_qz - log_prod)


def _tc_inputs(terms, hp, name):
    if "_z" not in terms:
        raise ValueError(f"objective {name!r} needs the family's codes (terms '_z', '_mu', "
                         f"'_logvar'); the 'vae' family gives them")
    return terms["_z"][0], terms["_mu"], terms["_logvar"]


def beta_tcvae_loss(terms, step, hp, cfg):
    """recon + α·MI + β·TC + γ·dimension-wise KL with α = γ = 1 (Chen et al. 2018), written as
    recon + KL + (β − 1)·TC: the closed-form KL stands for its sampled decomposition MI + TC +
    dimension-wise KL (equal in expectation, lower variance). TC by ``cfg.tc_estimator`` over the
    minibatch, N = ``hp['dataset_size']`` (the training split's size, from the data)."""
    if "dataset_size" not in hp:
        raise ValueError("objective 'beta_tcvae' needs the training set size (hp['dataset_size'])")
    z, mu, logvar = _tc_inputs(terms, hp, "beta_tcvae")
    tc = total_correlation(z, mu, logvar, hp["dataset_size"], cfg.tc_estimator)
    loss = jnp.mean(terms["recon"]) + jnp.mean(terms["kl"]) + (hp["beta"] - 1.0) * tc
    return loss, {"tc": tc, "beta": hp["beta"]}


def factorvae_loss(terms, step, hp, cfg):
    """recon + KL + γ·TC (Kim & Mnih 2018; γ = ``beta``), TC ≈ E_q[log D(z) / (1 − D(z))] from
    the discriminator (the family's ``tc_discriminator`` term, given its auxiliary)."""
    if "tc_discriminator" not in terms:
        raise ValueError("objective 'factorvae' needs the discriminator's estimate "
                         "(terms['tc_discriminator']): train it as the family's auxiliary")
    tc = jnp.mean(terms["tc_discriminator"])
    return jnp.mean(terms["recon"]) + jnp.mean(terms["kl"]) + hp["beta"] * tc, {"beta": hp["beta"]}


def permute_dims(key: jax.Array, z: jax.Array) -> jax.Array:
    """Each column of z [B, d] shuffled independently across the batch: a sample of Π_d q(z_d)
    (Kim & Mnih 2018, algorithm 1)."""
    keys = jax.random.split(key, z.shape[1])
    return jax.vmap(lambda k, col: jax.random.permutation(k, col), in_axes=(0, 1), out_axes=1)(keys, z)


OBJECTIVES.register("beta_tcvae", beta_tcvae_loss)
OBJECTIVES.register("factorvae", factorvae_loss)
