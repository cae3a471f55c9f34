"""The VAE family: a diagonal-Gaussian posterior q(z|x) = N(μ, diag σ²) from (μ, log σ²), a
prior chosen by ``model.prior`` (N(0, I), a learned mixture of Gaussians or the VampPrior;
``vae_jax.priors``) and a per-pixel likelihood on the decoder's outputs."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vae_jax import config, likelihoods, networks, objectives, priors
from vae_jax.config import ModelConfig
from vae_jax.models.base import Auxiliary, Family, register


def make_encoder(cfg: ModelConfig) -> nn.Module:
    if cfg.network == "conv":
        return networks.ConvEncoder(cfg.conv_channels, cfg.conv_strides, cfg.activation, cfg.init,
                                    cfg.conv_dense, cfg.conv_impl)
    return networks.MLP(cfg.hidden, cfg.activation, cfg.init)


def make_decoder(cfg: ModelConfig, image_shape: tuple[int, int, int], out_channels: int) -> nn.Module:
    hw = tuple(image_shape[:2])
    if cfg.network == "conv":
        return networks.ConvDecoder(cfg.conv_channels, cfg.conv_strides, hw, out_channels,
                                    cfg.activation, cfg.init, cfg.conv_dense, cfg.conv_head,
                                    cfg.conv_impl)
    return networks.MLPDecoder(tuple(reversed(cfg.hidden)), hw, out_channels, cfg.activation, cfg.init)


def make_prior(cfg: ModelConfig, image_shape: tuple[int, int, int],
               data_range: tuple[float, float]) -> priors.LearnedPrior | None:
    """The learned prior's parameters (None for N(0, I)), for a module's ``setup``."""
    if cfg.prior == "normal":
        return None
    return priors.LearnedPrior(cfg.prior, cfg.prior_components, cfg.latent_dim, tuple(image_shape),
                               tuple(data_range), cfg.pseudo_init_mean, cfg.pseudo_init_std)


def data_range(scale: str) -> tuple[float, float]:
    """The range of the model's inputs under ``data.scale`` (VampPrior pseudo-inputs stay in it)."""
    return (0.0, 1.0) if scale == "unit" else (-1.0, 1.0)


class VAE(nn.Module):
    cfg: ModelConfig
    image_shape: tuple[int, int, int]
    data_range: tuple[float, float] = (0.0, 1.0)

    def setup(self):
        self.encoder = make_encoder(self.cfg)
        self.posterior = networks.Dense(2 * self.cfg.latent_dim, self.cfg.init)
        self.decoder = make_decoder(
            self.cfg, self.image_shape,
            likelihoods.from_config(self.cfg).params_per_channel * self.image_shape[-1])
        self.learned_prior = make_prior(self.cfg, self.image_shape, self.data_range)

    def prior(self) -> priors.Mixture | None:
        """The learned prior as a mixture (for 'vamp' the encoder runs on the pseudo-inputs);
        None for N(0, I)."""
        return None if self.learned_prior is None else priors.mixture(self.learned_prior, self.encode)

    def sample_prior(self, key: jax.Array, n: int) -> jax.Array:
        return priors.sample(key, n, self.prior())

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(μ, log σ²) of q(z|x), each [B, latent_dim]."""
        h = self.encoder(x)
        out = self.posterior(h)
        return out[..., : self.cfg.latent_dim], out[..., self.cfg.latent_dim:]

    def decode(self, z: jax.Array) -> jax.Array:
        """Likelihood parameters for a batch of codes [B, d] -> [B, H, W, k·C]."""
        return self.decoder(z)

    def __call__(self, x: jax.Array, num_samples: int = 1) -> dict[str, jax.Array]:
        mu, logvar = self.encode(x)
        z = objectives.reparameterize(self.make_rng("noise"), mu, logvar, num_samples)
        params = self.decoder(z.reshape(-1, z.shape[-1])).reshape(num_samples, *x.shape[:-1], -1)
        out = {"mu": mu, "logvar": logvar, "z": z, "params": params}
        if self.learned_prior is not None:
            out["prior"] = self.prior()
        return out


class VAEFamily(Family):
    name = "vae"
    priors = config.PRIORS

    def build(self, cfg, image_shape):
        return VAE(cfg.model, tuple(image_shape), data_range(cfg.data.scale))

    def terms(self, model, params, batch, key, num_samples, aux=None):
        """Per-example ELBO terms of ``batch['image']`` under ``params``, the log importance
        weights log p(x, z_l) − log q(z_l|x) of the L samples, and the codes and posteriors
        (``_z`` [L, B, d], ``_mu``, ``_logvar``) for total-correlation objectives; with a
        ``discriminator`` auxiliary, its per-example TC estimate ``tc_discriminator``."""
        x = batch["image"]
        out = model.apply({"params": params}, x, num_samples, rngs={"noise": key})
        t = gaussian_terms(model.cfg, x, out, out.get("prior"))
        t.update(_z=out["z"], _mu=out["mu"], _logvar=out["logvar"])
        if aux and "discriminator" in aux:
            t["tc_discriminator"] = tc_logit(aux["discriminator"], out["z"][0])
        return t

    def auxiliaries(self, cfg):
        """objective 'factorvae': the discriminator between codes z ~ q(z) and their
        dimension-wise permutations (a sample of Π_d q(z_d)), Adam(lr, β1 0.5, β2 0.9) as Kim
        & Mnih 2018. Class 0 = from q(z), class 1 = permuted."""
        o = cfg.objective
        if o.name != "factorvae":
            return {}
        disc = networks.Discriminator(o.discriminator_hidden)
        d = cfg.model.latent_dim

        def loss(p, batch, terms, key):
            z = terms["_z"][0]
            zp = objectives.permute_dims(key, z)
            logits = disc.apply({"params": p}, jnp.concatenate([z, zp]))
            target = jnp.concatenate([jnp.zeros(len(z), jnp.int32), jnp.ones(len(z), jnp.int32)])
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, target))

        return {"discriminator": Auxiliary(
            init=lambda key, batch: disc.init(key, jnp.zeros((1, d), jnp.float32))["params"],
            loss=loss, optimizer=optax.adam(o.discriminator_lr, b1=0.5, b2=0.9))}

    def proposal(self, model, params, batch):
        # (μ, log σ²), and the learned prior's mixture when there is one: the encoder runs once
        # per batch, and so does the VampPrior's pass over its pseudo-inputs
        q = self.encode(model, params, batch)
        if model.cfg.prior == "normal":
            return q
        return (*q, model.apply({"params": params}, method=model.prior))

    def log_weights(self, model, params, batch, q, key, n):
        mu, logvar, *learned = q
        mix = learned[0] if learned else None
        eps = jax.random.normal(key, (n, *mu.shape), mu.dtype)
        z = mu + jnp.exp(0.5 * logvar) * eps
        out = model.apply({"params": params}, z.reshape(-1, z.shape[-1]), method=model.decode)
        x = batch["image"]
        log_px_z = likelihoods.from_config(model.cfg).log_prob(out.reshape(n, *x.shape[:-1], -1), x)
        if mix is not None:  # log p(z) − log q(z|x), the 2π terms of q written out
            return log_px_z + priors.log_prob(z, mix) + 0.5 * jnp.sum(
                eps * eps + logvar + math.log(2 * math.pi), axis=-1)
        # log p(z) − log q(z|x) = Σ_d −z²/2 + ε²/2 + log σ² / 2 (the 2π terms cancel)
        return log_px_z + 0.5 * jnp.sum(eps * eps - z * z + logvar, axis=-1)

    def sample_prior(self, model, params, key, n, y=None):
        if model.cfg.prior == "normal":
            return super().sample_prior(model, params, key, n, y)
        return model.apply({"params": params}, key, n, method=model.sample_prior)

    def describe_latents(self, cfg):
        m = cfg.model
        return f"latent {m.latent_dim}" + ("" if m.prior == "normal" else
                                           ", " + priors.describe(m.prior, m.prior_components))


register(VAEFamily())


def tc_logit(disc_params, z: jax.Array) -> jax.Array:
    """log D(z) / (1 − D(z)) per code [B] for the discriminator's parameters (logit of class 0
    minus class 1): its estimate of log q(z) − log Π_d q(z_d), whose mean estimates the TC."""
    logits = networks.discriminator_of(disc_params).apply({"params": disc_params}, z)
    return logits[:, 0] - logits[:, 1]


def gaussian_terms(cfg: ModelConfig, x: jax.Array, out: dict[str, jax.Array],
                   prior: tuple[jax.Array, jax.Array] | priors.Mixture | None = None
                   ) -> dict[str, jax.Array]:
    """ELBO terms for a diagonal-Gaussian posterior ``out`` (mu, logvar, z, params) against the
    prior N(0, I), the diagonal Gaussian ``prior`` = (mu, logvar) (closed-form KL), or a
    :class:`priors.Mixture` (Monte Carlo KL at the samples z, :func:`priors.kl_terms`)."""
    log_px = likelihoods.from_config(cfg).log_prob(out["params"], x[None])
    mu, logvar, z = out["mu"], out["logvar"], out["z"]
    if isinstance(prior, priors.Mixture):
        kl, log_pz, log_qz = priors.kl_terms(z, mu, logvar, prior)
        t = objectives.elbo_terms(log_px, kl)
        t["log_w"] = log_px + log_pz - log_qz
        return t
    if prior is None:
        kl = objectives.gaussian_kl(mu, logvar)
        log_pz = objectives.diag_gaussian_log_prob(z, 0.0, 0.0)
    else:
        kl = objectives.gaussian_kl_to(mu, logvar, *prior)
        log_pz = objectives.diag_gaussian_log_prob(z, *prior)
    t = objectives.elbo_terms(log_px, kl)
    t["log_w"] = log_px + log_pz - objectives.diag_gaussian_log_prob(z, mu, logvar)
    return t
