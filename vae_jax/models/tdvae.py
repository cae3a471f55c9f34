"""Top-down hierarchical VAE (Ladder VAE, Sønderby et al. 2016; the IAF paper's bidirectional
inference, Kingma et al. 2016; NVAE, Vahdat & Kautz 2020; VDVAE, Child 2021), with MLP blocks.

A deterministic bottom-up pass gives features per stochastic layer,

    f_1 = MLP_hidden(x),   f_{i+1} = MLP_up(f_i)      (``model.hidden``, ``model.tdvae.up_hidden``),

and a deterministic top-down state h, shared by the generative model and the posterior, runs
from the top layer L down to layer 1. It starts from a learned constant h_0 (zero-initialised)
of width H = ``top_down_hidden[-1]``. At layer i (top to bottom):

    prior      p(z_L) = N(0, I);   p(z_i | h) = N(μ_p, σ_p²) with (μ_p, log σ_p²) = Dense(h), i < L
    posterior  q(z_i | h, f_i):  μ_q = μ_p + Δμ,  log σ_q² = log σ_p² + Δlog σ²,
               (Δμ, Δlog σ²) = Dense([h, f_i]) with zero-initialised weights (NVAE's residual
               posterior: at initialisation q = p and every KL is 0)
    merge      h ← h + Dense_H(MLP_top_down([h, z_i]))      (i > 1)

and the decoder reads [h, z_1] (the state after merging z_L … z_2, together with z_1) through the
mirror of ``model.hidden``, so every layer reaches x. Log-variances (of p and q, below the top
prior) pass a soft floor ``min_logvar`` + softplus(· − ``min_logvar``); ``-inf`` switches it off.
Each layer's KL is analytic given its sampled parents; ``log_w`` runs through the whole inference
path. Sampling noise: layer 1 draws from the step's key itself (as the plain VAE does), layer i
from ``fold_in(key, i − 1)``. With one stochastic layer and ``min_logvar=-inf`` this is the plain
VAE (its terms equal the ``vae`` family's under mapped parameters; ``tests/test_tdvae.py``).

Two switches take parts of the design out, for ablations: ``posterior='direct'`` makes q an
ordinary Dense of [h, f_i] (default initialisation, no residual on the prior), and
``decoder_input='z1'`` has the decoder read z_1 alone, so the upper layers reach x only through
p(z_1 | h) (the generative path of Sønderby et al.'s Ladder VAE).

Codes: ``decode`` takes the concatenation [z_1, …, z_L] (bottom first, sizes ``latents``) and runs
the top-down merges on it; ``sample_prior`` returns that concatenation drawn ancestrally;
``encode`` returns (μ, log σ²) of q along the posterior-mean path (each layer's μ_q given the
means above it); ``posteriors`` gives '' = the concatenation of the per-layer posterior means
E_q[z_i | x] (what figures, reconstructions and interpolations decode; its active units are
the total over layers) followed by ``layer1`` … ``layerL``.

Normalization: ``norm='layer'`` puts a LayerNorm after every hidden Dense. Batch normalization is
deliberately not offered: its statistics make each example's terms depend on the rest of its
batch, so ``log_w`` would no longer be a per-image importance weight (IWAE training and
importance-sampled log p(x) assume it is), a data-sharded batch would need cross-device
statistics, and the running averages used at evaluation would have to reach every evaluator,
which receives parameters only (``estimators.Context``). Residual conv blocks are not
implemented; ``model.network`` must be 'mlp'.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import config, likelihoods, networks, objectives
from vae_jax.config import ModelConfig
from vae_jax.models.base import Family, register

POSTERIORS = ("residual", "direct")
DECODER_INPUTS = ("state", "z1")


@dataclasses.dataclass(frozen=True)
class TDVAEConfig:
    latents: tuple[int, ...] = (32, 32)  # stochastic layer sizes, bottom (z_1, next to x) first
    up_hidden: tuple[int, ...] = (100, 100)  # bottom-up MLP from layer i's features to layer i+1's
    top_down_hidden: tuple[int, ...] = (200, 200)  # the merge MLP; its last width is the state's
    min_logvar: float = -10.0  # soft floor on log-variances; -inf = none
    norm: str = "none"  # 'none' or 'layer' (see the module docstring for 'batch')
    posterior: str = "residual"  # 'residual' (μ_p + Δμ, zero-initialised Δ) or 'direct'
    decoder_input: str = "state"  # 'state': the decoder reads [h, z_1]; 'z1': z_1 alone

    def validate(self) -> None:
        config._positive_ints("model.tdvae.latents", self.latents)
        config._positive_ints("model.tdvae.up_hidden", self.up_hidden, allow_empty=True)
        config._positive_ints("model.tdvae.top_down_hidden", self.top_down_hidden)
        if math.isnan(self.min_logvar) or self.min_logvar == math.inf:
            config._fail("model.tdvae.min_logvar", self.min_logvar, "must be a number or -inf")
        if self.norm == "batch":
            config._fail("model.tdvae.norm", self.norm, "batch normalization is not offered (its "
                         "statistics couple the examples of a batch, see vae_jax/models/tdvae.py); "
                         "use 'none' or 'layer'")
        config._choice("model.tdvae.norm", self.norm, networks.NORMS)
        config._choice("model.tdvae.posterior", self.posterior, POSTERIORS)
        config._choice("model.tdvae.decoder_input", self.decoder_input, DECODER_INPUTS)


def soft_floor(lv: jax.Array, lo: float) -> jax.Array:
    """lo + softplus(lv − lo): ≈ lv well above lo, never below it; lo = −inf: lv unchanged."""
    return lv if lo == -math.inf else lo + jax.nn.softplus(lv - lo)


def _split(o: jax.Array) -> tuple[jax.Array, jax.Array]:
    d = o.shape[-1] // 2
    return o[..., :d], o[..., d:]


class TDVAE(nn.Module):
    cfg: ModelConfig
    image_shape: tuple[int, int, int]

    def setup(self):
        cfg, t = self.cfg, self.cfg.tdvae
        sizes = t.latents
        self.width = t.top_down_hidden[-1]
        mlp = lambda hidden, flatten=False: networks.MLP(  # noqa: E731
            tuple(hidden), cfg.activation, cfg.init, t.norm, flatten)
        self.encoder = mlp(cfg.hidden, flatten=True)
        self.up = [mlp(t.up_hidden) for _ in sizes[1:]]
        self.h0 = self.param("h0", nn.initializers.zeros, (self.width,))
        if t.posterior == "residual":
            zeros = nn.initializers.zeros
            self.posterior = [nn.Dense(2 * d, kernel_init=zeros, bias_init=zeros) for d in sizes]
        else:
            self.posterior = [networks.Dense(2 * d, cfg.init) for d in sizes]
        self.prior = [networks.Dense(2 * d, cfg.init) for d in sizes[:-1]]
        # merge[i - 1] folds z_{i+1} (0-based level i >= 1) into the state
        self.merge = [mlp(t.top_down_hidden) for _ in sizes[1:]]
        self.merge_out = [networks.Dense(self.width, cfg.init) for _ in sizes[1:]]
        out = likelihoods.from_config(cfg).params_per_channel * self.image_shape[-1]
        self.decoder = networks.MLPDecoder(tuple(reversed(cfg.hidden)), tuple(self.image_shape[:2]),
                                           out, cfg.activation, cfg.init, t.norm)

    # --- pieces of the top-down path (0-based level i; any leading shape) -----------------------

    def bottom_up(self, x: jax.Array) -> list[jax.Array]:
        f = self.encoder(x.reshape(x.shape[0], -1))
        feats = [f]
        for up in self.up:
            f = up(f)
            feats.append(f)
        return feats

    def _state0(self, lead: tuple[int, ...], dtype) -> jax.Array:
        return jnp.broadcast_to(self.h0.astype(dtype), (*lead, self.width))

    def _prior(self, i: int, h: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(μ_p, log σ_p² before the floor, log σ_p²) of level i given the state."""
        d = self.cfg.tdvae.latents[i]
        if i == len(self.cfg.tdvae.latents) - 1:
            z = jnp.zeros((*h.shape[:-1], d), h.dtype)
            return z, z, z
        mu, lv = _split(self.prior[i](h))
        return mu, lv, soft_floor(lv, self.cfg.tdvae.min_logvar)

    def _posterior(self, i, h, f, mu_p, lv_p_raw) -> tuple[jax.Array, jax.Array]:
        f = jnp.broadcast_to(f, (*h.shape[:-1], f.shape[-1]))
        d_mu, d_lv = _split(self.posterior[i](jnp.concatenate([h, f], -1)))
        if self.cfg.tdvae.posterior == "direct":
            return d_mu, soft_floor(d_lv, self.cfg.tdvae.min_logvar)
        return mu_p + d_mu, soft_floor(lv_p_raw + d_lv, self.cfg.tdvae.min_logvar)

    def _merge(self, i: int, h: jax.Array, z: jax.Array) -> jax.Array:
        return h + self.merge_out[i - 1](self.merge[i - 1](jnp.concatenate([h, z], -1)))

    def _decode_state(self, h: jax.Array, z1: jax.Array) -> jax.Array:
        lead = z1.shape[:-1]
        hz = z1 if self.cfg.tdvae.decoder_input == "z1" else jnp.concatenate([h, z1], -1)
        out = self.decoder(hz.reshape(-1, hz.shape[-1]))
        return out.reshape(*lead, *out.shape[1:])

    def _split_code(self, z: jax.Array) -> list[jax.Array]:
        sizes = self.cfg.tdvae.latents
        return jnp.split(z, [sum(sizes[:i + 1]) for i in range(len(sizes) - 1)], axis=-1)

    # --- the contract's methods ------------------------------------------------------------------

    def __call__(self, x: jax.Array, num_samples: int = 1, mean_path: bool = False) -> dict:
        """``num_samples`` draws through the inference path: per level (bottom first) the sample
        z_i, q's and p's (μ, log σ²) [L, B, d_i] and the analytic KL given the sampled parents,
        and the decoder's parameters [L, B, H, W, k·C]. ``mean_path``: z_i = μ_q (no noise)."""
        feats = self.bottom_up(x)
        key = None if mean_path else self.make_rng("noise")
        n = len(feats)
        h = self._state0((num_samples, x.shape[0]), feats[0].dtype)
        levels = [None] * n
        for i in reversed(range(n)):
            mu_p, lv_raw, lv_p = self._prior(i, h)
            mu_q, lv_q = self._posterior(i, h, feats[i], mu_p, lv_raw)
            if mean_path:
                z = mu_q
            else:
                k_i = key if i == 0 else jax.random.fold_in(key, i)
                z = mu_q + jnp.exp(0.5 * lv_q) * jax.random.normal(k_i, mu_q.shape, mu_q.dtype)
            kl = (objectives.gaussian_kl(mu_q, lv_q) if i == n - 1
                  else objectives.gaussian_kl_to(mu_q, lv_q, mu_p, lv_p))
            levels[i] = {"z": z, "q": (mu_q, lv_q), "p": (mu_p, lv_p), "kl": kl}
            if i > 0:
                h = self._merge(i, h, z)
        return {"levels": levels, "params": self._decode_state(h, levels[0]["z"])}

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(μ_q, log σ_q²) of every level along the posterior-mean path, concatenated bottom
        first: [B, Σ latents] each (the code ``decode`` reads)."""
        out = self(x, 1, mean_path=True)
        mu = jnp.concatenate([lv["q"][0][0] for lv in out["levels"]], -1)
        return mu, jnp.concatenate([lv["q"][1][0] for lv in out["levels"]], -1)

    def decode(self, z: jax.Array) -> jax.Array:
        """Likelihood parameters for codes [..., Σ latents] = [z_1, …, z_L]: the top-down merges
        of z_L … z_2 from h_0, then the decoder on [h, z_1]."""
        zs = self._split_code(z)
        h = self._state0(z.shape[:-1], z.dtype)
        for i in reversed(range(1, len(zs))):
            h = self._merge(i, h, zs[i])
        return self._decode_state(h, zs[0])

    def priors(self, z: jax.Array) -> list[tuple[jax.Array, jax.Array]]:
        """Per level (bottom first) (μ_p, log σ_p²) of p(z_i | z_{>i}) for codes [..., Σ latents]."""
        zs = self._split_code(z)
        h = self._state0(z.shape[:-1], z.dtype)
        out = [None] * len(zs)
        for i in reversed(range(len(zs))):
            mu, _, lv = self._prior(i, h)
            out[i] = (mu, lv)
            if i > 0:
                h = self._merge(i, h, zs[i])
        return out

    def sample_prior(self, key: jax.Array, n: int) -> jax.Array:
        """Ancestral samples [n, Σ latents] from p(z_L) Π p(z_i | h(z_{>i}))."""
        sizes = self.cfg.tdvae.latents
        h = self._state0((n,), jnp.float32)
        zs = [None] * len(sizes)
        for i in reversed(range(len(sizes))):
            mu, _, lv = self._prior(i, h)
            zs[i] = mu + jnp.exp(0.5 * lv) * jax.random.normal(jax.random.fold_in(key, i), mu.shape)
            if i > 0:
                h = self._merge(i, h, zs[i])
        return jnp.concatenate(zs, -1)

    def posterior_means(self, x: jax.Array, num_samples: int = 16) -> dict:
        """'' = [E_q z_1, …, E_q z_L] and each level's (E_q[z_i | x], mean log σ_q²), averaged
        over ``num_samples`` draws of the levels above (Burda et al.'s active units per layer)."""
        out = self(x, num_samples)
        per = {f"layer{i + 1}": (jnp.mean(lv["q"][0], 0), jnp.mean(lv["q"][1], 0))
               for i, lv in enumerate(out["levels"])}
        both = tuple(jnp.concatenate([v[j] for v in per.values()], -1) for j in (0, 1))
        return {"": both, **per}


class TDVAEFamily(Family):
    name = "tdvae"
    section = TDVAEConfig

    def build(self, cfg, image_shape):
        return TDVAE(cfg.model, tuple(image_shape))

    def validate(self, cfg):
        if cfg.model.family == "tdvae" and cfg.model.network != "mlp":
            config._fail("model.network", cfg.model.network,
                         "family 'tdvae' has MLP blocks only; use 'mlp'")

    def terms(self, model, params, batch, key, num_samples, aux=None):
        """ELBO terms with the KL of every level (``kl_per_dim`` bottom first, so free bits and
        warm-ups reach all of them), ``kl_layer{i}`` (1 = bottom) and log-weights through the
        whole inference path."""
        x = batch["image"]
        out = model.apply({"params": params}, x, num_samples, rngs={"noise": key})
        log_px = likelihoods.from_config(model.cfg).log_prob(out["params"], x[None])
        kls = [jnp.mean(lv["kl"], 0) for lv in out["levels"]]
        t = objectives.elbo_terms(log_px, jnp.concatenate(kls, -1))
        for i, kl in enumerate(kls):
            t[f"kl_layer{i + 1}"] = jnp.sum(kl, -1)
        log_p = sum(objectives.diag_gaussian_log_prob(lv["z"], *lv["p"]) for lv in out["levels"])
        log_q = sum(objectives.diag_gaussian_log_prob(lv["z"], *lv["q"]) for lv in out["levels"])
        t["log_w"] = log_px + log_p - log_q
        return t

    def posteriors(self, model, params, batch, key):
        return model.apply({"params": params}, batch["image"], rngs={"noise": key},
                           method=model.posterior_means)

    def latent_sizes(self, m):
        return tuple(m.tdvae.latents)

    def sample_prior(self, model, params, key, n, y=None):
        return model.apply({"params": params}, key, n, method=model.sample_prior)

    def describe_latents(self, cfg):
        t = cfg.model.tdvae
        j = lambda v: "-".join(map(str, v)) or "none"  # noqa: E731
        dec = "decoder reads [state, z1]" if t.decoder_input == "state" else "decoder reads z1"
        return (f"latents {j(t.latents)} top-down (up {j(t.up_hidden)}, top-down "
                f"{j(t.top_down_hidden)}, {t.posterior} posterior, {dec}, norm {t.norm}, "
                f"min log-variance {t.min_logvar:g})")


register(TDVAEFamily())
