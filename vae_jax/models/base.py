"""The model contract: everything the training step, the evaluators and the figures know about a
family, declared by the family's own module and registered in ``config.FAMILIES``.

A family subclasses :class:`Family`, overrides what differs from the plain Gaussian VAE and
registers an instance: ``register(MyFamily())``. Nothing else in the package names families.

- ``section``: its config section (a frozen dataclass with defaults and ``validate()``), read as
  ``cfg.model.<name>``; ``validate(cfg)`` checks it against the rest of the config.
- ``build`` / ``init``: the Flax module and its parameters; ``init_state`` / ``post_update`` for
  non-gradient state updated after each optimizer step (running statistics, an EMA codebook).
- ``terms(model, params, batch, key, num_samples, aux=None)`` -> per-example terms: ``recon``
  (−E_q log p(x|z), nats), ``kl``, ``elbo`` (= −recon − kl), ``kl_per_dim`` [B, d]; ``log_w``
  [L, B] = log p(x, z_l) − log q(z_l|x) for the IWAE bound and importance sampling; families
  without a KL term give ``aux_loss`` instead (the training loss adds it to recon). ``aux`` holds
  the auxiliary networks' parameters in training (None in evaluation).
- ``encode`` -> (μ, log σ²) of the first latent layer (or (code, 0) for a deterministic code);
  ``posteriors`` -> {layer name: (μ, log σ²)} for every stochastic layer, '' for a single one
  (the first entry's means are the codes figures and reconstructions pass to ``decode``; a
  family whose decoder reads all layers may put their concatenation first as '');
  ``latent_sizes`` -> the sizes of those layers in ``kl_per_dim``'s order.
- ``decode(z, y)`` -> likelihood parameters; ``sample_prior(key, n, y)`` -> n codes from the
  prior (``y``: labels, for conditional families; None otherwise).
- ``priors``: the ``model.prior`` choices the family implements (``vae_jax.priors``); with a
  learned prior, ``terms``, ``log_weights`` and ``sample_prior`` all use it.
- ``describe(cfg)``: the architecture in one line, for every reported number.
- ``auxiliaries(cfg)``: extra networks with their own loss and optimizer, trained in the same
  compiled step (:class:`Auxiliary`).
- ``proposal`` / ``log_weights``: importance sampling; by default the weights of ``terms``
  (the family's full inference path), a family may give a faster path (the VAE encodes once).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vae_jax.config import FAMILIES, Config


@dataclasses.dataclass(frozen=True)
class Auxiliary:
    """A second network trained beside the model in the same compiled step: ``init(key, batch)``
    -> its parameters; ``loss(aux_params, batch, terms, key)`` -> a scalar, with the model's terms
    of the same step (gradient-stopped); ``optimizer`` its own optax transformation."""

    init: Callable[[jax.Array, dict], Any]
    loss: Callable[[Any, dict, dict, jax.Array], jax.Array]
    optimizer: optax.GradientTransformation


class Family:
    name: str = ""
    section: type | None = None
    conditional: bool = False  # needs batch["label"]
    has_kl: bool = True  # a stochastic encoder and a KL term (β, schedules, free bits, IWAE apply)
    priors: tuple[str, ...] = ("normal",)  # the model.prior values it implements (vae_jax.priors)

    def build(self, cfg: Config, image_shape: tuple[int, int, int]) -> nn.Module:
        raise NotImplementedError

    def validate(self, cfg: Config) -> None:
        """Checks across sections (raise config.ConfigError with one line)."""

    def inputs(self, batch: dict) -> tuple:
        return (batch["image"], batch["label"]) if self.conditional else (batch["image"],)

    def init(self, model: nn.Module, rngs: dict, batch: dict) -> Any:
        return model.init(rngs, *self.inputs(batch))["params"]

    def init_state(self, model: nn.Module, params: Any) -> Any:
        return {}

    def post_update(self, model: nn.Module, params: Any, state: Any, terms: dict) -> tuple[Any, Any]:
        return params, state

    def auxiliaries(self, cfg: Config) -> dict[str, Auxiliary]:
        return {}

    def terms(self, model, params, batch: dict, key: jax.Array, num_samples: int,
              aux: Any = None) -> dict[str, jax.Array]:
        raise NotImplementedError

    def encode(self, model, params, batch: dict) -> tuple[jax.Array, jax.Array]:
        return model.apply({"params": params}, *self.inputs(batch), method=model.encode)

    def posteriors(self, model, params, batch: dict, key: jax.Array) -> dict[str, Any]:
        return {"": self.encode(model, params, batch)}

    def latent_sizes(self, m: Any) -> tuple[int, ...]:
        """Sizes of the stochastic layers (bottom first) for a ModelConfig ``m``."""
        return (m.latent_dim,)

    def decode(self, model, params, z: jax.Array, y: jax.Array | None = None) -> jax.Array:
        args = (z, y) if self.conditional else (z,)
        return model.apply({"params": params}, *args, method=model.decode)

    def sample_prior(self, model, params, key: jax.Array, n: int,
                     y: jax.Array | None = None) -> jax.Array:
        return jax.random.normal(key, (n, self.latent_sizes(model.cfg)[0]), jnp.float32)

    def describe(self, cfg: Config) -> str:
        m = cfg.model
        net = "-".join(map(str, m.hidden if m.network == "mlp" else m.conv_channels))
        if m.network == "conv" and m.conv_dense:
            net += " dense " + "-".join(map(str, m.conv_dense))
        return f"{m.family} {m.network} {net} {m.activation}, " + self.describe_latents(cfg)

    def describe_latents(self, cfg: Config) -> str:
        return f"latent {cfg.model.latent_dim}"

    def proposal(self, model, params, batch: dict) -> Any:
        """What ``log_weights`` reuses across chunks of samples of one batch (None: nothing)."""
        return None

    def log_weights(self, model, params, batch: dict, q: Any, key: jax.Array, n: int) -> jax.Array:
        """log p(x, z) − log q(z|x) of n samples z ~ q, [n, B] (for a conditional family
        log p(x, z|y) − log q(z|x, y), so importance sampling estimates log p(x|y))."""
        return self.terms(model, params, batch, key, n)["log_w"]


def register(family: Family) -> Family:
    return FAMILIES.register(family.name, family)
