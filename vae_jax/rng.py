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


def unroll_threefry_on_cpu() -> bool:
    """Lowers the Threefry-2x32 hash (Salmon et al. 2011) for XLA:CPU as straight-line code.

    JAX lowers it for CPU as a 5-iteration ``while`` loop (smaller programs, faster compiles);
    XLA:CPU then runs every iteration's ops as separate small kernels with copies between them,
    which made the binarization and ε draws a large share of a small MLP's training step. JAX's
    unrolled lowering (the one it uses on GPU) fuses the hash into the kernels that read the bits.
    Same algorithm, same bits: every number is unchanged (the README has the measured speed-up).

    Uses JAX internals, so it is applied only on the tested jax 0.10.x and returns False (changing
    nothing) when they are not where expected."""
    if not jax.__version__.startswith("0.10."):
        return False
    try:
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32 as tf

        prim, rule = tf.threefry2x32_p, tf._threefry2x32_lowering_rule
    except (ImportError, AttributeError):
        return False
    mlir.register_lowering(prim, rule, platform="cpu")
    return True
