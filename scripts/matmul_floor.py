"""The floor under scripts/benchmark.py's training figure: the matmuls of one MNIST epoch of the
PyTorch-example VAE (784-400-20, batch 128, 468 steps), forward and backward, and nothing else.

    python scripts/matmul_floor.py [--repeats 5]

Per step: the 4 forward matmuls, the 4 weight gradients and the 3 input gradients that a
784-400-(2·20)-400-784 MLP needs (the first layer needs no input gradient), 196.5 GFLOP per
epoch in all, run in one ``lax.scan`` like the real epoch. A cheap stand-in replaces the loss
gradient so that nothing but the matmuls costs time. Prints seconds per epoch and GFLOP/s; the
training benchmark cannot beat this on the same machine.
"""

from __future__ import annotations

import argparse
import time

import vae_jax  # noqa: F401  (the package's XLA:CPU defaults, as in training)
import jax
import jax.numpy as jnp

B, D, H, Z, STEPS = 128, 784, 400, 20, 468


def step(ws, xb):
    w1, w2, w3, w4 = ws
    h1 = xb @ w1
    o = h1 @ w2
    z = o[:, :Z]
    h3 = z @ w3
    y = h3 @ w4
    gy = y - xb
    gw4, gh3 = h3.T @ gy, gy @ w4.T
    gw3, gz = z.T @ gh3, gh3 @ w3.T
    go = jnp.concatenate([gz, gz], 1)
    gw2, gh1 = h1.T @ go, go @ w2.T
    gw1 = xb.T @ gh1
    return (w1 - 1e-9 * gw1, w2 - 1e-9 * gw2, w3 - 1e-9 * gw3, w4 - 1e-9 * gw4), None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    ks = jax.random.split(jax.random.key(0), 5)
    x = jax.random.uniform(ks[0], (STEPS, B, D))
    ws = tuple(0.01 * jax.random.normal(k, s) for k, s in
               zip(ks[1:], [(D, H), (H, 2 * Z), (Z, H), (H, D)]))
    epoch = jax.jit(lambda w, xs: jax.lax.scan(step, w, xs)[0], donate_argnums=0)
    ws = jax.block_until_ready(epoch(ws, x))
    times = []
    for _ in range(max(1, a.repeats)):
        t = time.perf_counter()
        ws = jax.block_until_ready(epoch(ws, x))
        times.append(time.perf_counter() - t)
    flops = STEPS * 2 * B * (5 * D * H + 3 * H * 2 * Z + 3 * Z * H)
    best, median = min(times), sorted(times)[len(times) // 2]
    print(f"matmul-only epoch: min {best:.3f} s, median {median:.3f} s; {flops / 1e9:.1f} GFLOP "
          f"-> {flops / best / 1e9:.0f} GFLOP/s; {STEPS * B / best:,.0f} images/s at most")


if __name__ == "__main__":
    main()
