"""The package's XLA:CPU default (vae_jax/__init__.py): YNNPACK fusions off unless the user says
otherwise. Each case runs in a fresh interpreter, since XLA reads its flags once per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
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


DRAWS = """
import json, vae_jax, jax, jax.numpy as jnp, numpy as np
from jax.extend import random as jr
f = jax.jit(lambda k, p: (jax.random.bernoulli(k, p), jax.random.normal(jax.random.fold_in(k, 1), (3, 50))))
k, p = jax.random.key(7), jnp.linspace(0.0, 1.0, 784).reshape(28, 28)
b, n = f(k, p)
hlo = f.lower(k, p).compile().as_text()
# Random123's known-answer vectors for Threefry-2x32 with 20 rounds (Salmon et al. 2011)
kat = jax.jit(jr.threefry_2x32)(np.array([0x13198A2E, 0x03707344], np.uint32),
                                   np.array([0x243F6A88, 0x85A308D3], np.uint32))
print(json.dumps([" while(" in hlo, np.asarray(b).astype(int).tolist(), np.asarray(n).tolist(),
                  [int(v) for v in np.asarray(kat)]]))
"""


@pytest.mark.skipif(not __import__("jax").__version__.startswith("0.10."),
                    reason="the unrolled lowering applies to jax 0.10.x only")
def test_threefry_is_straight_line_on_cpu_and_draws_the_same_bits():
    def probe(**env):
        e = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "VAE_JAX_XLA_DEFAULTS")}
        e.update(env, JAX_PLATFORMS="cpu")
        out = subprocess.run([sys.executable, "-c", DRAWS], env=e, capture_output=True, text=True,
                             check=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    loop, bern, normal, kat = probe()
    loop_jax, bern_jax, normal_jax, kat_jax = probe(VAE_JAX_XLA_DEFAULTS="0")
    assert not loop and loop_jax  # JAX's own CPU lowering is the rolled loop
    assert kat == kat_jax == [0xC4923A9C, 0x483DF7A0]
    assert bern == bern_jax and normal == normal_jax  # bit for bit
    assert 0.4 < np.mean(bern) < 0.6  # p runs from 0 to 1 over the image
