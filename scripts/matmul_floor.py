"""The floor under scripts/benchmark.py's training figure: the matmuls of one MNIST epoch of the
PyTorch-example VAE (784-400-20, batch 128, 468 steps), forward and backward, and nothing else.

    python scripts/matmul_floor.py [--repeats 5]
    python scripts/matmul_floor.py --config configs/paper/burda_vae_1layer.py --batch_sizes 20,128

With ``--config`` the matmuls are read off that config's compiled training step instead: every
``dot_general`` in the step's jaxpr (forward, backward, any family), run alone with operands of
the same shapes for one MNIST epoch's steps (60,000 images) at each batch size, beside the same
process's 2048² matmul peak. Its fraction of that peak is the most ``scripts/benchmark.py`` can
report for the config on this machine.

Per step: the 4 forward matmuls, the 4 weight gradients and the 3 input gradients that a
784-400-(2·20)-400-784 MLP needs (the first layer needs no input gradient), 196.5 GFLOP per
epoch in all, run in one ``lax.scan`` like the real epoch. A cheap stand-in replaces the loss
gradient so that nothing but the matmuls costs time. Prints seconds per epoch and GFLOP/s; the
training benchmark cannot beat this on the same machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import time

import vae_jax  # noqa: F401  (the package's XLA:CPU defaults, as in training)
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

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


def _sub_jaxprs(params: dict):
    for v in params.values():
        for x in (v if isinstance(v, (list, tuple)) else (v,)):
            if isinstance(x, jax.extend.core.ClosedJaxpr):
                yield x.jaxpr
            elif isinstance(x, jax.extend.core.Jaxpr):
                yield x


def step_dots(jaxpr) -> list:
    """Every dot_general of a jaxpr and its sub-jaxprs: (lhs aval, rhs aval, params)."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            out.append((eqn.invars[0].aval, eqn.invars[1].aval, dict(eqn.params)))
        for sub in _sub_jaxprs(eqn.params):
            out += step_dots(sub)
    return out


def dot_flops(lhs, rhs, params) -> int:
    (lc, rc), (lb, _) = params["dimension_numbers"]
    contract = int(np.prod([lhs.shape[d] for d in lc]))
    return 2 * int(np.prod(lhs.shape)) * int(np.prod(rhs.shape)) // contract // int(
        np.prod([lhs.shape[d] for d in lb]) or 1)


def dots_only_epoch(dots: list, steps: int):
    """A compiled epoch of ``steps`` scan steps that runs exactly ``dots`` (random operands) and
    nothing else but one scalar add per operand and one sum per product, which keep XLA from
    hoisting the invariant products out of the loop."""
    keys = jax.random.split(jax.random.key(0), 2 * len(dots))
    ops = [(jax.random.normal(keys[2 * i], l.shape, l.dtype), jax.random.normal(keys[2 * i + 1], r.shape, r.dtype))
           for i, (l, r, _) in enumerate(dots)]

    def body(c, _):
        acc = c
        for (a, b), (_, _, prm) in zip(ops, dots):
            out = jax.lax.dot_general(a + c, b, prm["dimension_numbers"],
                                      preferred_element_type=prm.get("preferred_element_type"))
            acc = acc + 1e-30 * jnp.sum(out)
        return acc, None

    return jax.jit(lambda c: jax.lax.scan(body, c, None, length=steps)[0])


def _timed(fn, arg, repeats: int) -> float:
    jax.block_until_ready(fn(arg))
    best = float("inf")
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        jax.block_until_ready(fn(arg))
        best = min(best, time.perf_counter() - t)
    return best


def config_floor(path: str, batch_sizes: list[int], repeats: int, n_images: int = 60000) -> None:
    from vae_jax import config as config_lib, experiment

    spec = importlib.util.spec_from_file_location("floor_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = config_lib.from_config_dict(mod.get_config())
    a = jnp.ones((2048, 2048), jnp.float32)
    peak = 2 * 2048 ** 3 / _timed(jax.jit(lambda x: x @ x), a, repeats)
    print(f"{path}: 2048² matmul peak {peak / 1e9:.1f} GFLOP/s")
    for bs in batch_sizes:
        c = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=bs))
        exp = experiment.Experiment.build(c, (28, 28, 1))
        state = jax.eval_shape(exp.init_state)
        batch = {"image": jax.ShapeDtypeStruct((bs, 28, 28, 1), jnp.float32),
                 "label": jax.ShapeDtypeStruct((bs,), jnp.int32)}
        jaxpr = jax.make_jaxpr(lambda s, b, h: exp.train_step(s, b, h, 1))(
            state, batch, experiment.hyperparams(c)).jaxpr
        dots = step_dots(jaxpr)
        steps = n_images // bs
        flops = steps * sum(dot_flops(*d) for d in dots)
        sec = _timed(dots_only_epoch(dots, steps), jnp.float32(0), repeats)
        print(f"batch {bs:>4}: {len(dots)} matmuls per step, {steps} steps, {flops / 1e9:.1f} GFLOP; "
              f"matmuls alone {sec:.3f} s/epoch = {flops / sec / 1e9:.1f} GFLOP/s = "
              f"{100 * flops / sec / peak:.1f}% of the peak")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--config", default="", help="read the matmuls off this config's training step")
    p.add_argument("--batch_sizes", default="", help="with --config: comma-separated (default: the config's)")
    a = p.parse_args()
    if a.config:
        sizes = [int(b) for b in a.batch_sizes.split(",") if b.strip()]
        if not sizes:
            from vae_jax.sweep import load_config_file
            sizes = [int(load_config_file(a.config).train.batch_size)]
        config_floor(a.config, sizes, a.repeats)
        return
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
