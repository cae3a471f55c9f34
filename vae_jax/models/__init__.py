"""Model families, picked by name from an explicit registry (never by importing strings).

A family is a Flax module builder plus a ``terms`` function giving per-example objective terms
(``recon``, ``kl``, ``elbo``, ``kl_per_dim``) for a batch. Adding a family is one module and one
line in ``FAMILIES``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn

from vae_jax.config import Config
from vae_jax.models import vae


@dataclasses.dataclass(frozen=True)
class Family:
    build: Callable[[Config, tuple[int, int, int]], nn.Module]
    terms: Callable[..., dict[str, Any]]  # (model, params, batch, key, num_samples) -> per-example terms


FAMILIES: dict[str, Family] = {
    "vae": Family(build=lambda cfg, shape: vae.VAE(cfg.model, tuple(shape)), terms=vae.terms),
}


def get(name: str) -> Family:
    return FAMILIES[name]
