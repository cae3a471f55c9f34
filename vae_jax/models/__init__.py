"""Model families. Each module declares its family (``models.base.Family``: build, objective
terms, encode/decode, prior sampling, per-layer posteriors, description, config section) and
registers it in ``config.FAMILIES``; importing this package registers the shipped ones. A new
family is one module that calls ``base.register`` (here or anywhere before the config is read).
"""

from __future__ import annotations

from vae_jax.config import FAMILIES
from vae_jax.models import ae, cvae, hvae, pixelcnn_vae, tdvae, vae, vqvae  # noqa: F401  (registration)
from vae_jax.models.base import Auxiliary, Family, register  # noqa: F401


def get(name: str) -> Family:
    return FAMILIES.check(name)
