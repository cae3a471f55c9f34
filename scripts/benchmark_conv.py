"""Every convolution of a config's training step, timed alone under each implementation of
``vae_jax.conv``: forward, input gradient and kernel gradient, each jitted on its own, the
implementations alternating so a machine whose speed drifts affects each alike.

    python scripts/benchmark_conv.py --config configs/fashion_conv.py [--impls xla,canonical,subpixel]

The layers are read off the model's forward pass (its jaxpr under ``conv_impl='xla'``), so any
conv config works; the batch is the config's ``train.batch_size``. Jitted alone, each
convolution sits in the program's entry computation, where XLA:CPU's own pass already gives the
'xla' gradients the Eigen layout; inside the scanned training epoch it does not (see
``vae_jax.conv``), so 'xla' here is faster than it is in training.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import config as config_lib
from vae_jax import conv, experiment

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark import load_config  # noqa: E402

SHAPES = {"digits": (8, 8, 1), "cifar10": (32, 32, 3), "dsprites_generated": (64, 64, 1)}


def conv_layers(cfg: config_lib.Config, image_shape) -> list[dict]:
    """(x shape, kernel shape, strides, padding, input dilation) of each convolution in the
    model's forward pass, in order."""
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, conv_impl="xla"))
    exp = experiment.Experiment.build(cfg, image_shape)
    state = jax.eval_shape(exp.init_state)
    batch = {"image": jnp.zeros((cfg.train.batch_size, *image_shape), jnp.float32),
             "label": jnp.zeros((cfg.train.batch_size,), jnp.int32)}
    jaxpr = jax.make_jaxpr(lambda p: exp.terms(p, batch, jax.random.key(0)))(state.params)
    found = []

    def walk(jx):
        for eqn in jx.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                found.append({"x": tuple(eqn.invars[0].aval.shape), "w": tuple(eqn.invars[1].aval.shape),
                              "strides": tuple(eqn.params["window_strides"]),
                              "padding": tuple(tuple(p) for p in eqn.params["padding"]),
                              "dilation": tuple(eqn.params["lhs_dilation"])})
            for v in eqn.params.values():
                if hasattr(v, "jaxpr"):
                    walk(v.jaxpr)
                elif hasattr(v, "eqns"):
                    walk(v)

    walk(jaxpr.jaxpr)
    return found


def time_layer(layer: dict, impls: list[str], repeats: int) -> dict[str, list[float]]:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=layer["x"]), jnp.float32)
    w = jnp.asarray(rng.normal(size=layer["w"]), jnp.float32)
    fns = {}
    for impl in impls:
        def f(x, w, impl=impl):
            return conv.conv2d(x, w, layer["strides"], layer["padding"], layer["dilation"], impl)
        g = jnp.ones(jax.eval_shape(f, x, w).shape, jnp.float32)
        fns[impl] = [jax.jit(f),
                     jax.jit(lambda x, w, g, f=f: jax.vjp(lambda a: f(a, w), x)[1](g)[0]),
                     jax.jit(lambda x, w, g, f=f: jax.vjp(lambda b: f(x, b), w)[1](g)[0])]
        args = [(x, w), (x, w, g), (x, w, g)]
        for fn, a in zip(fns[impl], args):
            jax.block_until_ready(fn(*a))
    out = {impl: [[], [], []] for impl in impls}
    for _ in range(repeats):
        for impl in impls:
            for i, (fn, a) in enumerate(zip(fns[impl], args)):
                t = time.perf_counter()
                jax.block_until_ready(fn(*a))
                out[impl][i].append(1000 * (time.perf_counter() - t))
    return {impl: [statistics.median(v) for v in out[impl]] for impl in impls}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/fashion_conv.py")
    p.add_argument("--impls", default="canonical,subpixel")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default="")
    a = p.parse_args(argv)
    impls = [s.strip() for s in a.impls.split(",") if s.strip()]
    bad = [i for i in impls if i not in conv.IMPLS or i == "auto"]
    if bad or not impls:
        print(f"error: --impls={a.impls!r}: a comma-separated list of xla, canonical, subpixel",
              file=sys.stderr)
        return 2
    try:
        cfg = load_config(a.config)
    except config_lib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    shape = SHAPES.get(cfg.data.name, (28, 28, 1))
    layers = conv_layers(cfg, shape)
    if not layers:
        print(f"error: {a.config} has no convolutions", file=sys.stderr)
        return 2
    rows, totals = [], {impl: [0.0, 0.0, 0.0] for impl in impls}
    print(f"{'x':>20} {'kernel':>16} {'s':>6} {'d':>6}  " + "  ".join(
        f"{impl + ' fwd/dx/dw ms':>28}" for impl in impls))
    for layer in layers:
        t = time_layer(layer, impls, a.repeats)
        rows.append(dict(layer, ms=t))
        for impl in impls:
            totals[impl] = [s + v for s, v in zip(totals[impl], t[impl])]
        print(f"{str(layer['x']):>20} {str(layer['w']):>16} {str(layer['strides']):>6} "
              f"{str(layer['dilation']):>6}  " + "  ".join(
                  f"{'/'.join(f'{v:.1f}' for v in t[impl]):>28}" for impl in impls), flush=True)
    print("total  " + "  ".join(f"{impl}: {sum(v):.1f} ms ({'/'.join(f'{x:.1f}' for x in v)})"
                                for impl, v in totals.items()))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"config": a.config, "layers": rows, "totals_ms": totals,
                       "jax": jax.__version__}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
