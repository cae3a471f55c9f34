"""vae_jax: variational autoencoders in JAX/Flax with ml-collections configs and Orbax checkpoints."""

import importlib.metadata as _metadata
import os as _os

__version__ = "0.1.0"

# XLA:CPU default, set before any JAX backend starts (XLA reads XLA_FLAGS when the first backend
# is created, which importing vae_jax does not do). jaxlib 0.10 routes CPU matmuls through
# YNNPACK fusions, which for this codebase's shapes are slower than XLA's Eigen path (the README
# has the importance-sampling measurement). Only CPU compilation reads the flag. Left alone when XLA_FLAGS already names it, when
# VAE_JAX_XLA_DEFAULTS=0, or on jaxlib versions other than the tested 0.10.x (XLA aborts on flags
# it does not know).
_FLAG = "--xla_cpu_experimental_ynn_fusion_type="


def _apply_xla_defaults() -> None:
    flags = _os.environ.get("XLA_FLAGS", "")
    if _os.environ.get("VAE_JAX_XLA_DEFAULTS", "1") == "0" or _FLAG.rstrip("=") in flags:
        return
    try:
        if not _metadata.version("jaxlib").startswith("0.10."):
            return
    except _metadata.PackageNotFoundError:
        return
    _os.environ["XLA_FLAGS"] = f"{flags} {_FLAG}".strip()


_apply_xla_defaults()

# the shipped model families and objectives register themselves in config.FAMILIES / OBJECTIVES
from vae_jax import models as _models, objectives as _objectives  # noqa: E402,F401
