"""Hierarchical VAE with L stochastic layers, ladder-style inference (Sønderby et al. 2016).

Generative (top-down): p(z_L) = N(0, I), p(z_i | z_{i+1}) = N(μ_p, σ_p²) from an MLP of z_{i+1},
p(x | z_1) from the decoder. Inference: a deterministic bottom-up pass gives (μ̂_i, σ̂_i²) at every
level; the posterior at level i combines it with the top-down prior by precision weighting,

    σ_q⁻² = σ̂_i⁻² + σ_p⁻²,   μ_q = (μ̂_i σ̂_i⁻² + μ_p σ_p⁻²) σ_q²,

and q(z_L | x) = N(μ̂_L, σ̂_L²). Each layer's KL is analytic given the sampled parent. Module names
at level 1 (encoder, posterior, decoder) are those of the plain VAE, so with one stochastic layer
this model *is* the VAE with the same parameters. Burda et al. (2015)'s two-layer MNIST model:
``hidden=(200, 200)``, ``hvae.latents=(100, 50)``, ``hvae.upper_hidden=(100, 100)``, tanh.

With a learned prior, q = p is an absorbing state of the ladder path: once q(z_1|·) copies
p(z_1|z_2), shrinking σ_p costs no KL and drives the bottom-up precision share, and with it the
gradient into μ̂, towards zero (the README's comparison shows the effect). Sønderby et al. used
batch normalization and a long KL warm-up against it.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import config, likelihoods, networks, objectives
from vae_jax.config import ModelConfig
from vae_jax.models import vae
from vae_jax.models.base import Family, register


@dataclasses.dataclass(frozen=True)
class HVAEConfig:
    # stochastic layer sizes bottom (z_1, next to x) to top; model.hidden is the deterministic
    # MLP between x and z_1, upper_hidden the MLP between z_i and z_{i+1}
    latents: tuple[int, ...] = (100, 50)
    upper_hidden: tuple[int, ...] = (100, 100)
    # 'ladder': q(z_i|x, z_{i+1}) merges bottom-up and top-down by precision (Sønderby et al. 2016);
    # 'bottom_up': q(z_1|x) q(z_2|z_1) ... , each from the sample below (Burda et al. 2015)
    inference: str = "ladder"

    def validate(self) -> None:
        config._positive_ints("model.hvae.latents", self.latents)
        config._positive_ints("model.hvae.upper_hidden", self.upper_hidden, allow_empty=True)
        config._choice("model.hvae.inference", self.inference, ("ladder", "bottom_up"))


def precision_weighted(mu_hat: jax.Array, lv_hat: jax.Array, mu_p: jax.Array,
                       lv_p: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The ladder posterior N(μ_q, σ_q²) of Sønderby et al. (2016), eq. 18-19:
    σ_q⁻² = σ̂⁻² + σ_p⁻², μ_q = (μ̂ σ̂⁻² + μ_p σ_p⁻²) σ_q², in log-variances (logaddexp keeps
    it finite for any log-variance, and μ_q uses the precision *shares*, which lie in [0, 1])."""
    lv_q = -jnp.logaddexp(-lv_hat, -lv_p)
    w_hat = jnp.exp(lv_q - lv_hat)  # σ̂⁻² / (σ̂⁻² + σ_p⁻²)
    return w_hat * mu_hat + (1.0 - w_hat) * mu_p, lv_q


class HVAE(nn.Module):
    cfg: ModelConfig
    image_shape: tuple[int, int, int]

    def setup(self):
        cfg = self.cfg
        sizes = cfg.hvae.latents
        self.encoder = vae.make_encoder(cfg)
        self.posterior = networks.Dense(2 * sizes[0], cfg.init)
        self.decoder = vae.make_decoder(
            cfg, self.image_shape, likelihoods.from_config(cfg).params_per_channel * self.image_shape[-1])
        # bottom-up: features (ladder) or the sample (bottom_up) of level i -> (μ̂, log σ̂²) of level i+1
        self.up = [networks.MLP(cfg.hvae.upper_hidden, cfg.activation, cfg.init) for _ in sizes[1:]]
        self.up_heads = [networks.Dense(2 * d, cfg.init) for d in sizes[1:]]
        # top-down: z_{i+1} -> (μ_p, log σ_p²) of level i
        self.down = [networks.MLP(cfg.hvae.upper_hidden, cfg.activation, cfg.init) for _ in sizes[1:]]
        self.down_heads = [networks.Dense(2 * d, cfg.init) for d in sizes[:-1]]

    def bottom_up(self, x: jax.Array) -> list[tuple[jax.Array, jax.Array]]:
        """(μ̂_i, log σ̂_i²) for i = 1..L, each [B, d_i]."""
        h = self.encoder(x)
        out = [self._split(self.posterior(h))]
        for up, head in zip(self.up, self.up_heads):
            h = up(h)
            out.append(self._split(head(h)))
        return out

    def top_down_prior(self, i: int, z_parent: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(μ_p, log σ_p²) of p(z_{i+1} | z_{i+2}) for 0-based level i, any leading shape."""
        lead = z_parent.shape[:-1]
        h = self.down[i](z_parent.reshape(-1, z_parent.shape[-1]))
        mu, lv = self._split(self.down_heads[i](h))
        return mu.reshape(*lead, -1), lv.reshape(*lead, -1)

    def _split(self, o: jax.Array) -> tuple[jax.Array, jax.Array]:
        d = o.shape[-1] // 2
        return o[..., :d], o[..., d:]

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(μ, log σ²) of the bottom-up q at level 1 (what figures and diagnostics use); the same
        for both inference paths, and cheaper than the full bottom-up pass."""
        return self._split(self.posterior(self.encoder(x)))

    def decode(self, z1: jax.Array) -> jax.Array:
        return self.decoder(z1)

    def sample_prior(self, key: jax.Array, n: int) -> jax.Array:
        """Ancestral samples z_1 from p(z_L) Π p(z_i | z_{i+1}); decode them for images."""
        sizes = self.cfg.hvae.latents
        z = jax.random.normal(jax.random.fold_in(key, len(sizes) - 1), (n, sizes[-1]))
        for i in reversed(range(len(sizes) - 1)):
            mu, lv = self.top_down_prior(i, z)
            z = mu + jnp.exp(0.5 * lv) * jax.random.normal(jax.random.fold_in(key, i), mu.shape)
        return z

    def __call__(self, x: jax.Array, num_samples: int = 1) -> dict[str, jax.Array]:
        """L samples through the inference path: per-level KL [B, d_i] (averaged over samples),
        log p(z) and log q(z|x) of the samples, and the decoder's parameters [L, B, H, W, k·C]."""
        if self.cfg.hvae.inference == "bottom_up":
            return self._bottom_up_path(x, num_samples)
        levels = self.bottom_up(x)
        top = len(levels) - 1
        key = self.make_rng("noise")
        kls, log_p, log_q = [None] * len(levels), 0.0, 0.0
        qs = [None] * len(levels)
        z = None
        for i in reversed(range(len(levels))):
            mu_hat, lv_hat = levels[i]
            if i == top:
                mu_q, lv_q = jnp.broadcast_to(mu_hat, (num_samples, *mu_hat.shape)), \
                    jnp.broadcast_to(lv_hat, (num_samples, *lv_hat.shape))
                mu_p = lv_p = jnp.zeros_like(mu_q)
            else:
                mu_p, lv_p = self.top_down_prior(i, z)
                mu_q, lv_q = precision_weighted(mu_hat, lv_hat, mu_p, lv_p)
            # level 1 draws from the key itself, as the plain VAE does (L = 1 reproduces it)
            k_i = key if i == 0 else jax.random.fold_in(key, i)
            z = mu_q + jnp.exp(0.5 * lv_q) * jax.random.normal(k_i, mu_q.shape, mu_q.dtype)
            qs[i] = (mu_q, lv_q)
            kls[i], lp, lq = self._level_terms(z, mu_q, lv_q, mu_p, lv_p, i == top)
            log_p, log_q = log_p + lp, log_q + lq
        return self._decode_out(x, z, num_samples, kls, log_p, log_q, qs)

    def _bottom_up_path(self, x: jax.Array, num_samples: int) -> dict[str, jax.Array]:
        """Burda et al.'s inference: z_1 ~ q(z_1|x), then z_{i+1} ~ q(z_{i+1}|z_i) from the sample."""
        key = self.make_rng("noise")
        mu, lv = self._split(self.posterior(self.encoder(x)))
        mu, lv = jnp.broadcast_to(mu, (num_samples, *mu.shape)), jnp.broadcast_to(lv, (num_samples, *lv.shape))
        qs, zs = [], []
        for i in range(len(self.cfg.hvae.latents)):
            if i > 0:
                h = self.up[i - 1](zs[-1].reshape(-1, zs[-1].shape[-1]))
                mu, lv = self._split(self.up_heads[i - 1](h))
                mu, lv = mu.reshape(num_samples, x.shape[0], -1), lv.reshape(num_samples, x.shape[0], -1)
            k_i = key if i == 0 else jax.random.fold_in(key, i)
            zs.append(mu + jnp.exp(0.5 * lv) * jax.random.normal(k_i, mu.shape, mu.dtype))
            qs.append((mu, lv))
        top = len(zs) - 1
        kls, log_p, log_q = [None] * len(zs), 0.0, 0.0
        for i in range(len(zs)):
            mu_p, lv_p = (jnp.zeros_like(zs[i]),) * 2 if i == top else self.top_down_prior(i, zs[i + 1])
            kls[i], lp, lq = self._level_terms(zs[i], *qs[i], mu_p, lv_p, i == top)
            log_p, log_q = log_p + lp, log_q + lq
        return self._decode_out(x, zs[0], num_samples, kls, log_p, log_q, qs)

    @staticmethod
    def _level_terms(z, mu_q, lv_q, mu_p, lv_p, is_top: bool):
        """Analytic KL of one level given its parent's sample (averaged over samples), and the
        log-densities of the sample under p and q."""
        kl = objectives.gaussian_kl(mu_q, lv_q) if is_top else objectives.gaussian_kl_to(mu_q, lv_q, mu_p, lv_p)
        return (jnp.mean(kl, 0), objectives.diag_gaussian_log_prob(z, mu_p, lv_p),
                objectives.diag_gaussian_log_prob(z, mu_q, lv_q))

    def _decode_out(self, x, z1, num_samples, kls, log_p, log_q, qs) -> dict[str, jax.Array]:
        params = self.decoder(z1.reshape(-1, z1.shape[-1])).reshape(num_samples, *x.shape[:-1], -1)
        return {"kl_levels": kls, "log_pz": log_p, "log_qz": log_q, "params": params,
                "q_levels": qs}

    def posterior_means(self, x: jax.Array, num_samples: int = 16) -> dict[str, tuple[jax.Array, jax.Array]]:
        """Per level ('layer1' = next to x), E_q[z_i | x] and the mean log σ² of q(z_i | ·),
        averaged over ``num_samples`` draws of the levels q(z_i | ·) is conditioned on (z_{i-1}
        bottom-up, z_{i+1} in the ladder): the posterior means whose covariance over x counts
        active units per layer (Burda et al. 2015). Level 1 of the bottom-up path needs no draws."""
        out = self(x, num_samples)
        return {f"layer{i + 1}": (jnp.mean(mu, 0), jnp.mean(lv, 0))
                for i, (mu, lv) in enumerate(out["q_levels"])}


class HVAEFamily(Family):
    name = "hvae"
    section = HVAEConfig

    def build(self, cfg, image_shape):
        return HVAE(cfg.model, tuple(image_shape))

    def terms(self, model, params, batch, key, num_samples, aux=None):
        """ELBO terms with the KL summed over layers, per-layer KLs ``kl_layer{i}`` (1 = bottom),
        and log-weights through the full inference path."""
        x = batch["image"]
        out = model.apply({"params": params}, x, num_samples, rngs={"noise": key})
        log_px = likelihoods.from_config(model.cfg).log_prob(out["params"], x[None])
        t = objectives.elbo_terms(log_px, jnp.concatenate(out["kl_levels"], -1))
        for i, kl in enumerate(out["kl_levels"]):
            t[f"kl_layer{i + 1}"] = jnp.sum(kl, -1)
        t["log_w"] = log_px + out["log_pz"] - out["log_qz"]
        return t

    def posteriors(self, model, params, batch, key):
        return model.apply({"params": params}, batch["image"], rngs={"noise": key},
                           method=model.posterior_means)

    def latent_sizes(self, m):
        return tuple(m.hvae.latents)

    def sample_prior(self, model, params, key, n, y=None):
        return model.apply({"params": params}, key, n, method=model.sample_prior)

    def describe_latents(self, cfg):
        h = cfg.model.hvae
        return (f"latents {'-'.join(map(str, h.latents))} (upper "
                f"{'-'.join(map(str, h.upper_hidden))}, {h.inference} inference)")


register(HVAEFamily())
