"""The package's XLA:CPU default (vae_jax/__init__.py): YNNPACK fusions off unless the user says
otherwise. Each case runs in a fresh interpreter, since XLA reads its flags once per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, os, vae_jax, jax, jax.numpy as jnp
hlo = jax.jit(lambda a, b: a @ b).lower(jnp.ones((128, 784)), jnp.ones((784, 400))).compile().as_text()
print(json.dumps([os.environ.get("XLA_FLAGS", ""), "ynn" in hlo]))
"""


def _probe(**env) -> tuple[str, bool]:
    e = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "VAE_JAX_XLA_DEFAULTS")}
    e.update(env, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", PROBE], env=e, capture_output=True, text=True,
                         check=True).stdout
    flags, ynn = json.loads(out.strip().splitlines()[-1])
    return flags, ynn


@pytest.mark.skipif(not __import__("importlib.metadata").metadata.version("jaxlib").startswith("0.10."),
                    reason="the default applies to jaxlib 0.10.x only")
def test_ynn_fusions_off_by_default_and_user_flags_win():
    flags, ynn = _probe()
    assert flags == "--xla_cpu_experimental_ynn_fusion_type=" and not ynn
    # the user's other flags are kept
    flags, ynn = _probe(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    assert flags.split() == ["--xla_force_host_platform_device_count=2",
                             "--xla_cpu_experimental_ynn_fusion_type="] and not ynn
    # opting out leaves XLA's own default (YNNPACK on for this matmul in jaxlib 0.10)
    flags, ynn = _probe(VAE_JAX_XLA_DEFAULTS="0")
    assert flags == "" and ynn
    # a user's own setting of the flag is left as it is
    flags, ynn = _probe(XLA_FLAGS="--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT")
    assert flags == "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT" and ynn
