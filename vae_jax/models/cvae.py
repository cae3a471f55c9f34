"""Conditional VAE (Sohn et al. 2015; seeds 000 and 004): q(z|x, y), p(x|z, y) and a prior p(z|y)
that is N(0, I) for every class ('standard') or a learned diagonal Gaussian per class ('learned').

    log p(x|y) >= E_q(z|x,y)[log p(x|z, y)] − KL(q(z|x, y) || p(z|y))
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import likelihoods, networks
from vae_jax.config import ModelConfig
from vae_jax.models import vae

NUM_CLASSES = 10  # every labelled dataset here (digits, mnist, fashion_mnist) has 10 classes


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
        if cfg.cvae_prior == "learned":
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
        if self.cfg.cvae_prior == "learned":
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


def init(model: CVAE, rngs: dict, batch: dict) -> dict:
    return model.init(rngs, batch["image"], batch["label"])["params"]


def terms(model: CVAE, params, batch: dict[str, jax.Array], key: jax.Array,
          num_samples: int) -> dict[str, jax.Array]:
    """Per-example terms of the CVAE bound on log p(x|y)."""
    out = model.apply({"params": params}, batch["image"], batch["label"], num_samples,
                      rngs={"noise": key})
    prior = None if model.cfg.cvae_prior == "standard" else (out["prior_mu"], out["prior_logvar"])
    return vae.gaussian_terms(model.cfg, batch["image"], out, prior)
