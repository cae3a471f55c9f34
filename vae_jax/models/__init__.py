"""Model families, picked by name from an explicit registry (never by importing strings).

A family is a Flax module builder plus functions over its parameter pytree:

- ``terms(model, params, batch, key, num_samples)`` -> per-example objective terms: ``recon``
  (−E_q log p(x|z), nats), ``kl``, ``elbo`` (= −recon − kl), ``kl_per_dim`` [B, d]; families with
  a stochastic encoder add ``log_w`` [L, B] = log p(x, z_l) − log q(z_l|x) for the IWAE bound and
  importance sampling; families without a KL term add ``aux_loss`` (see objectives.training_loss).
- ``init(model, rngs, batch)`` -> params; ``init_state`` / ``post_update`` for non-gradient state
  (the VQ-VAE's EMA codebook statistics), identity for the others.

Adding a family is one module and one line in ``FAMILIES``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn

from vae_jax.config import Config
from vae_jax.models import ae, cvae, hvae, vae, vqvae


def _init(model: nn.Module, rngs: dict, batch: dict) -> Any:
    return model.init(rngs, batch["image"])["params"]


@dataclasses.dataclass(frozen=True)
class Family:
    build: Callable[[Config, tuple[int, int, int]], nn.Module]
    terms: Callable[..., dict[str, Any]]  # (model, params, batch, key, num_samples) -> terms
    init: Callable[[nn.Module, dict, dict], Any] = _init
    init_state: Callable[[nn.Module, Any], Any] = lambda model, params: {}
    post_update: Callable[..., tuple[Any, Any]] = lambda model, params, state, terms: (params, state)
    conditional: bool = False  # needs batch["label"]


FAMILIES: dict[str, Family] = {
    "vae": Family(build=lambda cfg, shape: vae.VAE(cfg.model, tuple(shape)), terms=vae.terms),
    "cvae": Family(build=lambda cfg, shape: cvae.CVAE(cfg.model, tuple(shape), cvae.NUM_CLASSES),
                   terms=cvae.terms, init=cvae.init, conditional=True),
    "hvae": Family(build=lambda cfg, shape: hvae.HVAE(cfg.model, tuple(shape)), terms=hvae.terms),
    "vqvae": Family(build=vqvae.build, terms=vqvae.terms, init_state=vqvae.init_state,
                    post_update=vqvae.post_update),
    "ae": Family(build=ae.build, terms=ae.terms),
    "dae": Family(build=ae.build, terms=ae.dae_terms),
}


def get(name: str) -> Family:
    return FAMILIES[name]
