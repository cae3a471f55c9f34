"""Autoencoder baselines on the VAE's networks (seed 001's contrast): a deterministic code
z = f(x) from the same encoder trunk and a Dense head of ``latent_dim`` units, and the same
decoder and likelihood as the VAE.

- AE: z = f(x), trained on −log p(x | z).
- DAE (Vincent et al. 2008): the encoder sees x̃ = x + σ ε, ε ~ N(0, I) (σ = ``model.dae_noise``,
  ε from the ``key`` given to :func:`dae_terms`), and the decoder is scored on the clean x. With
  ``num_samples`` = L, L corruptions per image are averaged.

Neither has a prior or a posterior, so ``kl`` is 0 and ``elbo`` = −recon is a *reconstruction
log-likelihood* log p(x | f(x)) (for the DAE: log p(x | f(x̃)) averaged over the noise), not a
bound on log p(x); it is not comparable with a VAE's ELBO. ``decode`` accepts any code, so
z ~ N(0, I) can be pushed through the decoder to show what the AE does off its codes' islands
(``scripts/ae_vs_vae.py``). ``encode`` returns (z, 0) so generic figure code that reads posterior
means works; the zero log-variance is a placeholder, the code is deterministic.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import likelihoods, networks
from vae_jax.config import Config, ConfigError, ModelConfig
from vae_jax.models import vae


class AE(nn.Module):
    cfg: ModelConfig
    image_shape: tuple[int, int, int]

    def setup(self):
        self.encoder = vae.make_encoder(self.cfg)
        self.code = networks.Dense(self.cfg.latent_dim, self.cfg.init)
        self.decoder = vae.make_decoder(
            self.cfg, self.image_shape,
            likelihoods.from_config(self.cfg).params_per_channel * self.image_shape[-1])

    def embed(self, x: jax.Array) -> jax.Array:
        """The code z = f(x), [B, latent_dim]."""
        return self.code(self.encoder(x))

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(z, 0): the code in the (μ, log σ²) form that figure code expects."""
        z = self.embed(x)
        return z, jnp.zeros_like(z)

    def decode(self, z: jax.Array) -> jax.Array:
        """Likelihood parameters for codes [B, d] (any codes, e.g. z ~ N(0, I)) -> [B, H, W, k·C]."""
        return self.decoder(z)

    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        z = self.embed(x)
        return {"z": z, "params": self.decoder(z)}


def build(cfg: Config, image_shape: tuple[int, int, int]) -> AE:
    check_no_kl(cfg)
    return AE(cfg.model, tuple(image_shape))


def check_no_kl(cfg: Config) -> None:
    """Families without a KL term ignore β; a β other than 1 is a mistake, not a setting."""
    if cfg.objective.beta != 1.0:
        raise ConfigError(f"config.objective.beta={cfg.objective.beta!r}: family "
                          f"'{cfg.model.family}' has no KL term to weight; use 1.0")


def corrupt(x: jax.Array, key: jax.Array, noise: float, num_samples: int = 1) -> jax.Array:
    """``num_samples`` corrupted copies x + noise·ε of a batch, [L, *x.shape]."""
    eps = jax.random.normal(key, (num_samples, *x.shape), x.dtype)
    return x[None] + noise * eps


def _terms(model: AE, params, x_in: jax.Array, x: jax.Array) -> dict[str, jax.Array]:
    """Terms for inputs ``x_in`` [L, B, ...] scored against the clean targets ``x`` [B, ...]."""
    lead = x_in.shape[:2]
    out = model.apply({"params": params}, x_in.reshape(-1, *x_in.shape[2:]))
    p = out["params"].reshape(*lead, *out["params"].shape[1:])
    recon = -jnp.mean(likelihoods.from_config(model.cfg).log_prob(p, x[None]), axis=0)
    zero = jnp.zeros_like(recon)
    z = out["z"].reshape(*lead, -1)
    return {"recon": recon, "kl": zero, "elbo": -recon,
            "kl_per_dim": jnp.zeros((x.shape[0], model.cfg.latent_dim), recon.dtype),
            "aux_loss": zero,
            # root-mean-square code entry: how far the codes sit from N(0, I)'s scale of 1
            "code_rms": jnp.mean(jnp.sqrt(jnp.mean(jnp.square(z), -1)), 0)}


def terms(model: AE, params, batch: dict[str, jax.Array], key: jax.Array,
          num_samples: int) -> dict[str, jax.Array]:
    """AE terms; the code is deterministic, so ``key`` and ``num_samples`` are unused."""
    x = batch["image"]
    return _terms(model, params, x[None], x)


def dae_terms(model: AE, params, batch: dict[str, jax.Array], key: jax.Array,
              num_samples: int) -> dict[str, jax.Array]:
    """DAE terms: encode x + σ ε (L = ``num_samples`` draws from ``key``), score the clean x."""
    x = batch["image"]
    return _terms(model, params, corrupt(x, key, model.cfg.dae_noise, num_samples), x)
