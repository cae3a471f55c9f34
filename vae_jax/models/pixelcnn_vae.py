"""A VAE with an autoregressive decoder: the VAE's encoder and diagonal-Gaussian q(z|x), a
standard-normal prior, and a gated PixelCNN (``vae_jax.pixelcnn``) conditioned on z as
p(x|z) = Π_ij p(x_ij | x_<ij, z), Bernoulli per pixel (binary images). Such a decoder can model
x without z, which is where posterior collapse is strongest and where KL warm-up and free bits
were introduced (Bowman et al. 2016; Kingma et al. 2016; Chen et al. 2017, "Variational Lossy
Autoencoder"; Gulrajani et al. 2017, "PixelVAE").

Training and the bounds evaluate the decoder with the observed image as its input (teacher
forcing: one pass gives every conditional). ``decode(z)`` draws x ~ p(x|z) by ancestral
sampling (one pixel at a time, compiled; a fixed key, so a figure is reproducible) and returns
the logits of p(x_ij | x_<ij, z) along that sample: the figures show σ(logit), each pixel's
probability given the sampled pixels before it.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import config, likelihoods, networks, objectives, pixelcnn
from vae_jax.config import ModelConfig
from vae_jax.models import vae
from vae_jax.models.base import Family, register
from vae_jax.rng import stream


@dataclasses.dataclass(frozen=True)
class PixelCNNDecoderConfig:
    """The gated PixelCNN decoder: ``layers`` gated layers of ``channels`` features, vertical
    kernels ``kernel``×``kernel`` and horizontal 1×``kernel``."""

    channels: int = 32
    layers: int = 5
    kernel: int = 3

    def validate(self) -> None:
        config._min_int("model.pixelcnn_vae.channels", self.channels, 1)
        config._min_int("model.pixelcnn_vae.layers", self.layers, 1)
        config._min_int("model.pixelcnn_vae.kernel", self.kernel, 2)
        if self.kernel % 2 == 0:
            config._fail("model.pixelcnn_vae.kernel", self.kernel, "must be odd (a centred kernel)")


class PixelCNNVAE(nn.Module):
    cfg: ModelConfig
    image_shape: tuple[int, int, int]

    def setup(self):
        p = self.cfg.pixelcnn_vae
        self.encoder = vae.make_encoder(self.cfg)
        self.posterior = networks.Dense(2 * self.cfg.latent_dim, self.cfg.init)
        self.decoder = pixelcnn.GatedPixelCNN(p.channels, p.layers, p.kernel,
                                              out_features=self.image_shape[-1],
                                              conv_impl=self.cfg.conv_impl)

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(μ, log σ²) of q(z|x), each [B, latent_dim]."""
        out = self.posterior(self.encoder(x))
        return out[..., : self.cfg.latent_dim], out[..., self.cfg.latent_dim:]

    def logits(self, x: jax.Array, z: jax.Array) -> jax.Array:
        """Bernoulli logits of p(x_ij | x_<ij, z) for images x [N, H, W, C] and codes z [N, d]."""
        return self.decoder(x, z)

    def __call__(self, x: jax.Array, num_samples: int = 1) -> dict[str, jax.Array]:
        mu, logvar = self.encode(x)
        z = objectives.reparameterize(self.make_rng("noise"), mu, logvar, num_samples)
        xs = jnp.broadcast_to(x[None], (num_samples, *x.shape)).reshape(-1, *x.shape[1:])
        params = self.decoder(xs, z.reshape(-1, z.shape[-1])).reshape(num_samples, *x.shape)
        return {"mu": mu, "logvar": logvar, "z": z, "params": params}


def sample_logits(model: PixelCNNVAE, params, z: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(x, logits): x ~ p(x|z) by ancestral sampling for codes z [N, d], and the conditional
    logits along it (``logits(x, z)``)."""
    fn = lambda x: model.apply({"params": params}, x, z, method=model.logits)  # noqa: E731
    x0 = jnp.zeros((z.shape[0], *model.image_shape), jnp.float32)
    x = pixelcnn.ancestral_sample(fn, key, x0, pixelcnn.draw_bernoulli)
    return x, fn(x)


class PixelCNNVAEFamily(Family):
    name = "pixelcnn_vae"
    section = PixelCNNDecoderConfig

    def build(self, cfg, image_shape):
        return PixelCNNVAE(cfg.model, tuple(image_shape))

    def validate(self, cfg):
        if cfg.model.likelihood != "bernoulli":
            config._fail("model.likelihood", cfg.model.likelihood,
                         "the PixelCNN decoder models binary pixels: use 'bernoulli'")

    def terms(self, model, params, batch, key, num_samples, aux=None):
        x = batch["image"]
        out = model.apply({"params": params}, x, num_samples, rngs={"noise": key})
        return vae.gaussian_terms(model.cfg, x, out)

    def proposal(self, model, params, batch):
        return self.encode(model, params, batch)  # the encoder runs once per batch

    def log_weights(self, model, params, batch, q, key, n):
        mu, logvar = q
        x = batch["image"]
        eps = jax.random.normal(key, (n, *mu.shape), mu.dtype)
        z = mu + jnp.exp(0.5 * logvar) * eps
        xs = jnp.broadcast_to(x[None], (n, *x.shape)).reshape(-1, *x.shape[1:])
        out = model.apply({"params": params}, xs, z.reshape(-1, z.shape[-1]), method=model.logits)
        log_px_z = likelihoods.from_config(model.cfg).log_prob(out.reshape(n, *x.shape), x)
        # log p(z) − log q(z|x) = Σ_d −z²/2 + ε²/2 + log σ² / 2 (the 2π terms cancel)
        return log_px_z + 0.5 * jnp.sum(eps * eps - z * z + logvar, axis=-1)

    def decode(self, model, params, z, y=None):
        key = stream(jax.random.key(0), "ancestral_decode")
        return sample_logits(model, params, z, key)[1]

    def describe(self, cfg):
        m, p = cfg.model, cfg.model.pixelcnn_vae
        net = "-".join(map(str, m.hidden if m.network == "mlp" else m.conv_channels))
        return (f"{m.family} {m.network} {net} {m.activation} encoder, latent {m.latent_dim}, gated "
                f"PixelCNN decoder {p.layers} layers x {p.channels} channels, kernel {p.kernel}")


register(PixelCNNVAEFamily())
