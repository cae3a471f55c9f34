"""VQ-VAE (van den Oord et al. 2017): the encoder gives ``latent_dim`` vectors z_e of size
``vqvae.code_dim`` per image (flat mode), or with ``vqvae.spatial`` one vector per position of
the conv encoder's feature map (a 7×7 grid on 28×28 images, as in the paper, which quantizes a
feature map), each replaced by its nearest code e_k of a learned codebook of
``vqvae.num_codes`` vectors; the decoder sees z_q = z_e + sg(e − z_e), so the forward pass uses the
codes and the backward pass copies the decoder's gradient straight through to z_e.

Loss per image (sums over the image's code vectors and their entries, like recon over pixels):

    −log p(x | z_q)  +  ||sg(z_e) − e||²  +  β ||z_e − sg(e)||²        (β = ``vqvae.commitment``)

returned as ``recon`` plus ``aux_loss`` (codebook + commitment). With ``vqvae.ema`` the codebook
loss is dropped: the codebook receives no gradient and :func:`post_update` sets it after every
step to N_k-weighted moving averages of the encoder outputs assigned to it,

    N_k ← γ N_k + (1 − γ) n_k,   m_k ← γ m_k + (1 − γ) Σ_{i: k(i) = k} z_e,i,   e_k = m_k / Ñ_k,

with Ñ the Laplace-smoothed cluster sizes (N_k + ε) n / (n + K ε), n = Σ N_k (γ = ``vqvae.decay``).
The statistics start at N_k = 1, m_k = e_k (every code as if it had been assigned itself once),
so the first updates move the codebook smoothly instead of jumping to one batch's means. The
codebook always lives in ``params['codebook']``, so evaluation and figures need params only.

During training the prior over codes is uniform and the posterior a deterministic one-hot, so
KL = n · log K (n codes per image) and ``elbo`` = −recon − KL (a bound under that uniform prior; a
learned autoregressive prior would tighten it). Logged per batch: codebook ``perplexity``
exp(H(p)) of the code frequencies p, the fraction of codes used and the number of codes no
vector in the batch chose (``dead_codes``), and the squared distance ||z_e − e||² per image.

Figures: ``encode`` returns the quantized codes flattened, (z_q, 0), and ``decode`` accepts code
indices [B, n] (integers), quantized vectors [B, n, D] or their flattening [B, n·D];
``sample_prior`` draws uniform random codes, so generic figure code shows reconstructions,
samples and interpolations. In spatial mode the decoder is the mirrored conv decoder starting
from the quantized map itself, and a second stage (``vae_jax.code_prior``) fits a PixelCNN prior
over the grid of codes to replace the uniform one for sampling.
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

LAPLACE_EPS = 1e-5  # ε of the Laplace smoothing of the EMA cluster sizes


@dataclasses.dataclass(frozen=True)
class VQVAEConfig:
    """Codebook of ``num_codes`` vectors of size ``code_dim``; model.latent_dim codes per image."""

    num_codes: int = 128
    code_dim: int = 16
    commitment: float = 0.25  # β of the commitment loss (van den Oord et al. 2017)
    ema: bool = False  # codebook by exponential moving averages instead of its loss
    decay: float = 0.99
    spatial: bool = False  # one code per position of the conv encoder's map (latent_dim unused)
    # the second stage (vae_jax.code_prior): a gated PixelCNN prior over the grid of codes
    prior_channels: int = 64
    prior_layers: int = 5
    prior_kernel: int = 3
    prior_epochs: int = 10
    prior_batch_size: int = 128
    prior_learning_rate: float = 1e-3

    def validate(self) -> None:
        config._min_int("model.vqvae.num_codes", self.num_codes, 2)
        config._min_int("model.vqvae.code_dim", self.code_dim, 1)
        if not (self.commitment >= 0 and math.isfinite(self.commitment)):
            config._fail("model.vqvae.commitment", self.commitment, "must be a finite number >= 0")
        if not 0 < self.decay < 1:
            config._fail("model.vqvae.decay", self.decay, "must be in (0, 1)")
        for f in ("prior_channels", "prior_layers", "prior_epochs", "prior_batch_size"):
            config._min_int(f"model.vqvae.{f}", getattr(self, f), 1)
        config._min_int("model.vqvae.prior_kernel", self.prior_kernel, 3)
        if self.prior_kernel % 2 == 0:
            config._fail("model.vqvae.prior_kernel", self.prior_kernel, "must be odd (a centred kernel)")
        if not (self.prior_learning_rate > 0 and math.isfinite(self.prior_learning_rate)):
            config._fail("model.vqvae.prior_learning_rate", self.prior_learning_rate,
                         "must be a finite number > 0")


def nearest_codes(z_e: jax.Array, codebook: jax.Array) -> jax.Array:
    """Index of the nearest codebook row (Euclidean) for each vector of z_e [..., D] -> [...]."""
    d = (jnp.sum(jnp.square(z_e), -1, keepdims=True) - 2.0 * z_e @ codebook.T
         + jnp.sum(jnp.square(codebook), -1))
    return jnp.argmin(d, axis=-1)


def quantize(z_e: jax.Array, codebook: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(z_q, e, idx): the nearest codes e = codebook[idx] and the straight-through
    z_q = z_e + sg(e − z_e), equal to e in value with ∂z_q/∂z_e = I."""
    idx = nearest_codes(z_e, codebook)
    e = codebook[idx]
    return z_e + jax.lax.stop_gradient(e - z_e), e, idx


def usage_stats(idx: jax.Array, num_codes: int) -> dict[str, jax.Array]:
    """Perplexity exp(−Σ p_k log p_k) of the code frequencies p over all vectors in ``idx``
    (= the number of codes used when they are used equally), fraction of codes used, and the
    number of unused ('dead') codes; scalars."""
    counts = jnp.sum(jax.nn.one_hot(idx.reshape(-1), num_codes, dtype=jnp.float32), 0)
    p = counts / jnp.sum(counts)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    used = jnp.sum(counts > 0).astype(jnp.float32)
    return {"perplexity": jnp.exp(entropy), "codes_used": used / num_codes,
            "dead_codes": num_codes - used}


class VQVAE(nn.Module):
    cfg: ModelConfig
    image_shape: tuple[int, int, int]

    def setup(self):
        cfg = self.cfg
        self.encoder = vae.make_encoder(cfg)
        width = cfg.vqvae.code_dim if cfg.vqvae.spatial else cfg.latent_dim * cfg.vqvae.code_dim
        self.pre_quant = networks.Dense(width, cfg.init)  # spatial: a 1×1 conv on the map
        # codes well inside the cloud of initial encoder outputs, so that nearest-neighbour
        # assignment follows their direction and many codes get used (fewer dead codes than
        # U(±1/K) or N(0, 1) initialisation)
        self.codebook = self.param("codebook", nn.initializers.normal(0.1),
                                   (cfg.vqvae.num_codes, cfg.vqvae.code_dim))
        self.decoder = vae.make_decoder(
            cfg, self.image_shape, likelihoods.from_config(cfg).params_per_channel * self.image_shape[-1])

    @property
    def code_shape(self) -> tuple[int, ...]:
        """The codes of one image: (h, w) of the encoder's map in spatial mode, else (latent_dim,)."""
        if self.cfg.vqvae.spatial:
            return grid_shape(self.cfg, self.image_shape)
        return (self.cfg.latent_dim,)

    def encode_continuous(self, x: jax.Array) -> jax.Array:
        """z_e, [B, *code_shape, vqvae.code_dim]."""
        h = self.encoder(x)
        if self.cfg.vqvae.spatial:  # the conv encoder's flattened map, back to [B, h, w, C]
            h = h.reshape(x.shape[0], *self.code_shape, -1)
        return self.pre_quant(h).reshape(x.shape[0], *self.code_shape, self.cfg.vqvae.code_dim)

    def encode_indices(self, x: jax.Array) -> jax.Array:
        """Code indices [B, *code_shape]."""
        return nearest_codes(self.encode_continuous(x), self.codebook)

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(z_q flattened [B, latent_dim·vqvae.code_dim], zeros): quantized codes in the (μ, log σ²)
        form generic figure code reads; decode(z_q) is the model's reconstruction."""
        z = self.codebook[self.encode_indices(x)].reshape(x.shape[0], -1)
        return z, jnp.zeros_like(z)

    def decode(self, z: jax.Array) -> jax.Array:
        """Likelihood parameters from code indices [B, *code_shape] or [B, n] (integer dtype),
        quantized vectors [B, *code_shape, D] or their flattening [B, n·D]."""
        if jnp.issubdtype(z.dtype, jnp.integer):
            z = self.codebook[z]
        return self._decode_vectors(z)

    def _decode_vectors(self, z: jax.Array) -> jax.Array:
        if self.cfg.vqvae.spatial:  # the map itself enters the conv decoder
            return self.decoder(z.reshape(z.shape[0], *self.code_shape, self.cfg.vqvae.code_dim))
        return self.decoder(z.reshape(z.shape[0], -1))

    def sample_prior(self, key: jax.Array, n: int) -> jax.Array:
        """n draws from the uniform prior over codes, as flattened code vectors (decode them)."""
        idx = jax.random.randint(key, (n, *self.code_shape), 0, self.cfg.vqvae.num_codes)
        return self.codebook[idx].reshape(n, -1)

    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        z_e = self.encode_continuous(x)
        # under EMA the codebook is set by post_update and must receive no gradient
        cb = jax.lax.stop_gradient(self.codebook) if self.cfg.vqvae.ema else self.codebook
        z_q, e, idx = quantize(z_e, cb)
        return {"z_e": z_e, "e": e, "idx": idx, "params": self._decode_vectors(z_q)}


def grid_shape(cfg: ModelConfig, image_shape: tuple[int, ...]) -> tuple[int, int]:
    """(h, w) of the conv encoder's output map for images of ``image_shape`` ('SAME' padding:
    every stride-2 layer halves the size, rounding up)."""
    h, w = image_shape[:2]
    for s in cfg.conv_strides:
        h, w = -(-h // s), -(-w // s)
    return h, w


def sample_images(model: VQVAE, params, key: jax.Array, n: int) -> jax.Array:
    """n images (the likelihood's mean) decoded from uniformly random codes."""
    z = model.apply({"params": params}, key, n, method=model.sample_prior)
    out = model.apply({"params": params}, z, method=model.decode)
    return likelihoods.from_config(model.cfg).mean(out)


def terms(model: VQVAE, params, batch: dict[str, jax.Array], key: jax.Array,
          num_samples: int, aux=None) -> dict[str, jax.Array]:
    """Per-example VQ-VAE terms; the encoder is deterministic, so ``key`` and ``num_samples``
    are unused. ``_z_e`` and ``_idx`` feed the EMA codebook update in :func:`post_update`."""
    cfg = model.cfg
    x = batch["image"]
    out = model.apply({"params": params}, x)
    recon = -likelihoods.from_config(cfg).log_prob(out["params"], x)
    z_e, e = out["z_e"], out["e"]
    per_image = lambda a: jnp.sum(jnp.square(a).reshape(a.shape[0], -1), axis=-1)  # noqa: E731
    commitment = per_image(z_e - jax.lax.stop_gradient(e))
    extra = cfg.vqvae.commitment * commitment
    if not cfg.vqvae.ema:
        extra = extra + per_image(jax.lax.stop_gradient(z_e) - e)
    b = x.shape[0]
    n = math.prod(out["idx"].shape[1:])  # codes per image
    log_k = math.log(cfg.vqvae.num_codes)
    kl = jnp.full((b,), n * log_k, recon.dtype)
    stats = {k: jnp.broadcast_to(v, (b,)) for k, v in usage_stats(out["idx"], cfg.vqvae.num_codes).items()}
    return {"recon": recon, "kl": kl, "elbo": -recon - kl,
            "kl_per_dim": jnp.full((b, n), log_k, recon.dtype),
            "aux_loss": extra, "vq_sq_distance": jax.lax.stop_gradient(commitment), **stats,
            "_z_e": jax.lax.stop_gradient(z_e), "_idx": out["idx"]}


def init_state(model: VQVAE, params) -> dict:
    """EMA statistics (cluster sizes N [K], sums m [K, D]); empty without ``vqvae.ema``."""
    if not model.cfg.vqvae.ema:
        return {}
    cb = params["codebook"]
    return {"cluster_size": jnp.ones(cb.shape[:1], cb.dtype), "embed_sum": jnp.asarray(cb)}


def ema_update(codebook_state: dict, z_e: jax.Array, idx: jax.Array, decay: float
               ) -> tuple[jax.Array, dict]:
    """One EMA step of the statistics from encoder outputs z_e [..., D] assigned to codes idx
    [...]; returns (new codebook, new statistics)."""
    n_codes, dim = codebook_state["embed_sum"].shape
    onehot = jax.nn.one_hot(idx.reshape(-1), n_codes, dtype=z_e.dtype)  # [N, K]
    counts = jnp.sum(onehot, 0)
    sums = onehot.T @ z_e.reshape(-1, dim)
    size = decay * codebook_state["cluster_size"] + (1.0 - decay) * counts
    embed_sum = decay * codebook_state["embed_sum"] + (1.0 - decay) * sums
    total = jnp.sum(size)
    smoothed = (size + LAPLACE_EPS) / (total + n_codes * LAPLACE_EPS) * total
    return embed_sum / smoothed[:, None], {"cluster_size": size, "embed_sum": embed_sum}


def post_update(model: VQVAE, params, state: dict, t: dict) -> tuple:
    """After the optimizer step: under ``vqvae.ema`` overwrite the codebook with its EMA estimate."""
    if not model.cfg.vqvae.ema:
        return params, state
    codebook, state = ema_update(state, t["_z_e"], t["_idx"], model.cfg.vqvae.decay)
    return type(params)({**params, "codebook": codebook}), state


class VQVAEFamily(Family):
    name = "vqvae"
    section = VQVAEConfig
    has_kl = False
    terms = staticmethod(terms)

    def build(self, cfg, image_shape):
        return VQVAE(cfg.model, tuple(image_shape))

    def init_state(self, model, params):
        return init_state(model, params)

    def post_update(self, model, params, state, terms):
        return post_update(model, params, state, terms)

    def validate(self, cfg):
        if cfg.model.vqvae.spatial and cfg.model.network != "conv":
            config._fail("model.vqvae.spatial", True, "quantizes the conv encoder's feature map: "
                         "use model.network 'conv'")

    def sample_prior(self, model, params, key, n, y=None):
        return model.apply({"params": params}, key, n, method=model.sample_prior)

    def describe_latents(self, cfg):
        m = cfg.model
        if m.vqvae.spatial:
            down = 2 ** sum(s == 2 for s in m.conv_strides)
            return (f"a grid of codes (one per position of the encoder map, 1/{down} of the image "
                    f"size) from {m.vqvae.num_codes} x {m.vqvae.code_dim}")
        return f"{m.latent_dim} codes from {m.vqvae.num_codes} x {m.vqvae.code_dim}"


register(VQVAEFamily())
