"""Named PRNG streams: one base key per run, folded with the step and a purpose name.

Inside the compiled step, ``stream(jax.random.fold_in(base, step), "noise")`` gives the key for the
reparameterization noise; other purposes ("binarize", "shuffle", "eval") get independent keys
the same way, so adding a stream never changes the numbers of another.
"""

import zlib

import jax


def stream(key: jax.Array, name: str) -> jax.Array:
    """An independent key for purpose ``name`` (a stable hash, the same in every process)."""
    return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)
