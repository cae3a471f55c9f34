"""Autoencoder baselines on the VAE's networks, the contrast to the VAE: a deterministic code
z = f(x) from the same encoder trunk and a Dense head of ``latent_dim`` units, and the same
decoder and likelihood as the VAE.

- AE: z = f(x), trained on −log p(x | z).
- DAE (Vincent et al. 2008): the encoder sees x̃ = x + σ ε, ε ~ N(0, I) (σ = ``model.dae.noise``,
  ε from the ``key`` given to ``terms``), and the decoder is scored on the clean x. With
  ``num_samples`` = L, L corruptions per image are averaged.

Neither has a prior or a posterior, so ``kl`` is 0 and ``elbo`` = −recon is a *reconstruction
log-likelihood* log p(x | f(x)) (for the DAE: log p(x | f(x̃)) averaged over the noise), not a
bound on log p(x); it is not comparable with a VAE's ELBO. ``decode`` accepts any code, so
z ~ N(0, I) can be pushed through the decoder to show what the AE does off its codes' islands
(``scripts/ae_vs_vae.py``). ``encode`` returns (z, 0) so generic figure code that reads posterior
means works; the zero log-variance is a placeholder, the code is deterministic.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import config, likelihoods, networks
from vae_jax.config import ModelConfig
from vae_jax.models import vae
from vae_jax.models.base import Family, register


@dataclasses.dataclass(frozen=True)
class DAEConfig:
    noise: float = 0.3  # std of the Gaussian noise added to the input

    def validate(self) -> None:
        if not (self.noise >= 0 and math.isfinite(self.noise)):
            config._fail("model.dae.noise", self.noise, "must be a finite number >= 0")


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


class AEFamily(Family):
    name = "ae"
    has_kl = False

    def build(self, cfg, image_shape):
        return AE(cfg.model, tuple(image_shape))

    def terms(self, model, params, batch, key, num_samples, aux=None):
        """AE terms; the code is deterministic, so ``key`` and ``num_samples`` are unused."""
        x = batch["image"]
        return _terms(model, params, x[None], x)


class DAEFamily(AEFamily):
    name = "dae"
    section = DAEConfig

    def terms(self, model, params, batch, key, num_samples, aux=None):
        """DAE terms: encode x + σ ε (L = ``num_samples`` draws from ``key``), score the clean x."""
        x = batch["image"]
        return _terms(model, params, corrupt(x, key, model.cfg.dae.noise, num_samples), x)


register(AEFamily())
register(DAEFamily())
