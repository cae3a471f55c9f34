"""Conditional VAE (Sohn et al. 2015): q(z|x, y), p(x|z, y) and a prior p(z|y)
that is N(0, I) for every class ('standard') or a learned diagonal Gaussian per class ('learned').

    log p(x|y) >= E_q(z|x,y)[log p(x|z, y)] − KL(q(z|x, y) || p(z|y))
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import config, likelihoods, networks
from vae_jax.config import ModelConfig
from vae_jax.models import vae
from vae_jax.models.base import Family, register

NUM_CLASSES = 10  # every labelled dataset here (digits, mnist, fashion_mnist) has 10 classes


@dataclasses.dataclass(frozen=True)
class CVAEConfig:
    # the prior p(z|y): 'standard' N(0, I) for every class, or 'learned' N(μ_y, σ_y²)
    prior: str = "standard"

    def validate(self) -> None:
        config._choice("model.cvae.prior", self.prior, ("standard", "learned"))


class CVAE(nn.Module):
    cfg: ModelConfig
    image_shape: tuple[int, int, int]
    num_classes: int = NUM_CLASSES

    def setup(self):
        cfg = self.cfg
        # MLP: the label joins the flattened image at the input; conv: after the conv trunk.
        self.trunk = vae.make_encoder(cfg)
        self.posterior = networks.Dense(2 * cfg.latent_dim, cfg.init)
        self.decoder = vae.make_decoder(
            cfg, self.image_shape, likelihoods.from_config(cfg).params_per_channel * self.image_shape[-1])
        if cfg.cvae.prior == "learned":
            self.prior_mu = self.param("prior_mu", nn.initializers.zeros, (self.num_classes, cfg.latent_dim))
            self.prior_logvar = self.param("prior_logvar", nn.initializers.zeros,
                                           (self.num_classes, cfg.latent_dim))

    def _onehot(self, y: jax.Array) -> jax.Array:
        return jax.nn.one_hot(y, self.num_classes, dtype=jnp.float32)

    def encode(self, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(μ, log σ²) of q(z|x, y)."""
        yh = self._onehot(y)
        if self.cfg.network == "mlp":
            h = self.trunk(jnp.concatenate([x.reshape(x.shape[0], -1), yh], -1))
        else:
            h = jnp.concatenate([self.trunk(x), yh], -1)
        out = self.posterior(h)
        return out[..., : self.cfg.latent_dim], out[..., self.cfg.latent_dim:]

    def decode(self, z: jax.Array, y: jax.Array) -> jax.Array:
        """Likelihood parameters of p(x|z, y) for codes [B, d] and labels [B]."""
        return self.decoder(jnp.concatenate([z, self._onehot(y)], -1))

    def prior(self, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(μ, log σ²) of p(z|y); zeros for the standard prior."""
        if self.cfg.cvae.prior == "learned":
            return self.prior_mu[y], self.prior_logvar[y]
        z = jnp.zeros((y.shape[0], self.cfg.latent_dim), jnp.float32)
        return z, z

    def sample_prior(self, key: jax.Array, y: jax.Array) -> jax.Array:
        """z ~ p(z|y) for each label in ``y``."""
        mu, logvar = self.prior(y)
        return mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape, mu.dtype)

    def __call__(self, x: jax.Array, y: jax.Array, num_samples: int = 1) -> dict[str, jax.Array]:
        mu, logvar = self.encode(x, y)
        eps = jax.random.normal(self.make_rng("noise"), (num_samples, *mu.shape), mu.dtype)
        z = mu + jnp.exp(0.5 * logvar) * eps
        yl = jnp.broadcast_to(y, (num_samples, *y.shape)).reshape(-1)
        params = self.decode(z.reshape(-1, z.shape[-1]), yl).reshape(num_samples, *x.shape[:-1], -1)
        pmu, plv = self.prior(y)
        return {"mu": mu, "logvar": logvar, "z": z, "params": params, "prior_mu": pmu, "prior_logvar": plv}


class CVAEFamily(Family):
    name = "cvae"
    section = CVAEConfig
    conditional = True

    def build(self, cfg, image_shape):
        return CVAE(cfg.model, tuple(image_shape), NUM_CLASSES)

    def terms(self, model, params, batch, key, num_samples, aux=None):
        """Per-example terms of the CVAE bound on log p(x|y)."""
        out = model.apply({"params": params}, batch["image"], batch["label"], num_samples,
                          rngs={"noise": key})
        prior = None if model.cfg.cvae.prior == "standard" else (out["prior_mu"], out["prior_logvar"])
        return vae.gaussian_terms(model.cfg, batch["image"], out, prior)

    def sample_prior(self, model, params, key, n, y=None):
        y = jnp.zeros((n,), jnp.int32) if y is None else jnp.asarray(y, jnp.int32)
        return model.apply({"params": params}, key, y, method=model.sample_prior)

    def describe_latents(self, cfg):
        return f"latent {cfg.model.latent_dim}, {cfg.model.cvae.prior} prior p(z|y)"


register(CVAEFamily())
