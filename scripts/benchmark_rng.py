"""The training epoch under XLA:CPU with JAX's two lowerings of the Threefry hash, side by side
in one process: its CPU default (a rolled 5-trip loop, whose iterations run as separate small
kernels) and its unrolled GPU lowering (which XLA fuses into the kernels that read the bits).
Checks that both give bit-identical parameters after an epoch, then alternates their epochs
and prints wall and CPU seconds per epoch and the ratios (CPU time, summed over XLA's threads,
is the steadier figure on a shared machine). The README's Speed section has the measurement
that kept JAX's default.

    python scripts/benchmark_rng.py --config configs/paper/burda_vae_1layer.py \\
        --manual_dir ../shared/datasets --batch_size 128 --epochs 5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from jax._src.interpreters import mlir
from jax._src.random import threefry2x32

from vae_jax import config as config_lib
from vae_jax import data, experiment, sharding, train

sys.path.insert(0, __import__("os").path.dirname(__file__))
from benchmark import load_config  # noqa: E402

LOWERINGS = {"rolled": threefry2x32._threefry2x32_cpu_lowering_rule,  # JAX's CPU default
             "straight": threefry2x32._threefry2x32_lowering_rule}  # JAX's GPU lowering


def compiled_epoch(cfg, ds, mesh, lowering):
    mlir.register_lowering(threefry2x32.threefry2x32_p, LOWERINGS[lowering], platform="cpu")
    exp = experiment.Experiment.build(cfg, ds.image_shape, mesh)
    images, labels = train.device_data(ds, mesh)
    state_sh = sharding.state_shardings(jax.eval_shape(exp.init_state), mesh, cfg.mesh)
    state = jax.jit(exp.init_state, out_shardings=state_sh)()
    rep = sharding.replicated(mesh)
    hp = jax.device_put(experiment.hyperparams(cfg), rep)
    ins, outs = train.epoch_shardings(mesh, state_sh, rep, labels)
    fn = jax.jit(exp.train_epoch, in_shardings=ins, out_shardings=outs).lower(
        state, hp, images, labels, jnp.int32(0), exp.data_key()).compile()
    return lambda e: fn(state, hp, images, labels, jnp.int32(e), exp.data_key())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/paper/burda_vae_1layer.py")
    p.add_argument("--manual_dir", default="")
    p.add_argument("--batch_size", type=int, default=0)
    p.add_argument("--epochs", type=int, default=5)
    a = p.parse_args(argv)
    try:
        cfg = load_config(a.config)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, manual_dir=a.manual_dir))
        if a.batch_size:
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=a.batch_size))
        if a.epochs < 1:
            raise config_lib.ConfigError(f"--epochs={a.epochs}: must be >= 1")
        ds = experiment.load_data(cfg)
        mesh, _ = train.setup_devices(cfg)
    except (config_lib.ConfigError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if jax.default_backend() != "cpu":
        print("error: this compares XLA:CPU lowerings; run it on a CPU backend", file=sys.stderr)
        return 2
    run = {k: compiled_epoch(cfg, ds, mesh, k) for k in LOWERINGS}
    mlir.register_lowering(threefry2x32.threefry2x32_p, LOWERINGS["rolled"], platform="cpu")
    first = {k: jax.tree.leaves(f(0)[0].params) for k, f in run.items()}
    same = all(bool(jnp.array_equal(x, y)) for x, y in zip(first["rolled"], first["straight"]))
    wall, cpu = {k: [] for k in run}, {k: [] for k in run}
    for e in range(a.epochs):
        for k, f in run.items():
            t, c = time.perf_counter(), time.process_time()
            jax.block_until_ready(f(e + 1))
            wall[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    med = lambda xs: round(statistics.median(xs), 3)  # noqa: E731
    out = {"config": a.config, "batch_size": cfg.train.batch_size, "bit_identical_params": same,
           **{f"{k}_s_per_epoch": med(wall[k]) for k in run},
           **{f"{k}_cpu_s_per_epoch": med(cpu[k]) for k in run},
           "wall_speedup": round(statistics.median(wall["rolled"]) / statistics.median(wall["straight"]), 3),
           "cpu_speedup": round(statistics.median(cpu["rolled"]) / statistics.median(cpu["straight"]), 3)}
    print(json.dumps(out, indent=1))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
