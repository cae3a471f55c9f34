"""Population benchmark: M β members trained together in one compiled program against the same M
members trained one after another (the single-run compiled epoch, called M times), same config,
same data, same epochs. Compile time is excluded from the epoch times and printed separately.

    python scripts/benchmark_population.py --manual_dir ../shared/datasets            # MNIST
    python scripts/benchmark_population.py --synthetic --epochs 3 --json out.json     # no files

Default model: configs/mnist_pytorch_example.py (784-400-20 MLP, batch 128). Each timed epoch
runs every mode once, in an order that rotates from epoch to epoch, so that a machine whose load
changes affects all modes alike; the script prints per-epoch wall and process CPU seconds, their
medians, the ratio population / sequential (median of the per-epoch ratios) and images/s per
member and in all. Population modes: 'vmap' (members in lockstep, batched matmuls) and 'map'
(members one after another inside the compiled call); see vae_jax/experiment.py. It also prints
what XLA emitted for the dense layers of the vmapped program (plain vs batched dots).

``--cpu_devices N`` splits the host CPU into N XLA devices (``jax_num_cpu_devices``) and shards
the population's members over them (mesh ``members=N``): with 'map' each
device runs its share of the members one after another and the devices run side by side, still
bit for bit the single runs. The sequential baseline stays on one device, as a single run would.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import config as config_lib
from vae_jax import data, estimators, experiment, sharding, train
from vae_jax.sweep import load_config_file

BETAS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


def dots_summary(hlo: str) -> str:
    """What XLA emitted for the matmuls of a compiled program: plain and batched dots."""
    plain, batched = [], []
    for m in re.finditer(r"= (f32\[[0-9,]+\])\{[^}]*\} dot\(([^)]*)\)([^\n]*)", hlo):
        (batched if "lhs_batch_dims" in m.group(3) else plain).append(m.group(1))
    return (f"{len(plain)} plain dots {sorted(set(plain))}, {len(batched)} batched dot_generals "
            f"{sorted(set(batched))}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/mnist_pytorch_example.py")
    p.add_argument("--manual_dir", default="", help="raw dataset files (offline TFDS prepare)")
    p.add_argument("--synthetic", action="store_true", help="random images of MNIST's shape")
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per mode")
    p.add_argument("--steps", type=int, default=0, help="use only this many steps per epoch (0 = all)")
    p.add_argument("--strategies", default="vmap,map", help="population modes to time")
    p.add_argument("--json", default="", help="also write the figures here")
    p.add_argument("--cpu_devices", type=int, default=1,
                   help="split the CPU into this many XLA devices and the members over them")
    a = p.parse_args(argv)
    try:
        raw = load_config_file(a.config)
        if a.manual_dir:
            raw.data.manual_dir = a.manual_dir
        cfg = config_lib.from_config_dict(raw)
        strategies = [s for s in a.strategies.split(",") if s]
        bad = [s for s in strategies if s not in config_lib.POPULATION_STRATEGIES]
        if bad or not strategies:
            raise config_lib.ConfigError(f"--strategies={a.strategies!r}: choose from "
                                         f"{', '.join(config_lib.POPULATION_STRATEGIES)}")
        if a.members < 1 or a.epochs < 1:
            raise config_lib.ConfigError(f"--members={a.members} --epochs={a.epochs}: must be >= 1")
        if a.cpu_devices < 1 or a.members % a.cpu_devices:
            raise config_lib.ConfigError(f"--cpu_devices={a.cpu_devices}: must be >= 1 and divide "
                                         f"--members={a.members}")
        if a.cpu_devices > 1:  # before anything touches a device
            jax.config.update("jax_num_cpu_devices", a.cpu_devices)
            if jax.default_backend() != "cpu":
                raise config_lib.ConfigError(f"--cpu_devices={a.cpu_devices}: only on CPU")
        if a.synthetic:
            rng = np.random.default_rng(0)
            imgs = rng.random((60000, 28, 28, 1), dtype=np.float32)
            labels = rng.integers(0, 10, 60000).astype(np.int32)
            ds = data.Dataset("mnist(synthetic)", imgs, labels, imgs[:1000], labels[:1000], 10, False,
                              "synthetic", "synthetic")
        else:
            ds = experiment.load_data(cfg)
    except (config_lib.ConfigError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    betas = BETAS[: a.members] if a.members <= len(BETAS) else tuple(np.geomspace(0.1, 16, a.members))
    cfg = dataclasses.replace(cfg, population=dataclasses.replace(
        cfg.population, members=tuple({"objective.beta": float(b)} for b in betas)))
    members = config_lib.member_configs(cfg)
    M = len(members)
    exp = experiment.Experiment.build(members[0], ds.image_shape)
    images, labels = train.device_data(ds)
    if a.steps:
        n = a.steps * cfg.train.batch_size
        images, labels = images[:n], (None if labels is None else labels[:n])
    steps = images.shape[0] // cfg.train.batch_size
    n_img = steps * cfg.train.batch_size
    data_key = exp.data_key()
    hp = experiment.stack_hyperparams(members)
    hps = [experiment.hyperparams(m) for m in members]
    seeds = experiment.seeds(members)

    print(f"{ds.name}: {n_img} images/epoch ({steps} steps of {cfg.train.batch_size}); model "
          f"{cfg.model.network} hidden {cfg.model.hidden} latent {cfg.model.latent_dim}; {M} members "
          f"β = {', '.join(f'{b:g}' for b in betas)}")
    print(f"hardware: {estimators.hardware()}; jax {jax.__version__}; load average at start "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")

    modes: dict[str, dict] = {}
    mesh = None
    if a.cpu_devices > 1:
        mesh = sharding.make_mesh(config_lib.MeshConfig(members=a.cpu_devices, data=1), M,
                                  jax.devices()[: a.cpu_devices])
        print(f"members split over {a.cpu_devices} CPU devices, {M // a.cpu_devices} on each")
    for s in strategies:
        state = jax.jit(experiment.init_fn(exp))(seeds)
        jit_kw: dict = {}
        if mesh is not None:
            msh, rep = sharding.member_sharding(mesh), sharding.replicated(mesh)
            state = jax.device_put(state, msh)
            jit_kw = dict(in_shardings=(msh, msh, rep, None if labels is None else rep, rep, rep),
                          out_shardings=(msh, msh))
        t = time.perf_counter()
        fn = jax.jit(experiment.epoch_fn(exp, s, mesh), donate_argnums=0, **jit_kw).lower(
            state, hp, images, labels, jnp.int32(0), data_key).compile()
        modes[f"population/{s}"] = dict(fn=fn, state=state, compile_s=time.perf_counter() - t)
        if s == "vmap":
            print("vmapped program:", dots_summary(fn.as_text()))
    single0 = jax.jit(exp.init_state)()
    t = time.perf_counter()
    sfn = jax.jit(exp.train_epoch, donate_argnums=0).lower(
        single0, hps[0], images, labels, jnp.int32(0), data_key).compile()
    compile_s = time.perf_counter() - t
    init = jax.jit(exp.init_state)  # the seed as an argument: compiled once for all members
    modes["sequential"] = dict(fn=sfn, state=[init(jnp.int32(m.seed)) for m in members],
                               compile_s=compile_s)
    print("compile (excluded from epoch times): " + ", ".join(
        f"{k} {v['compile_s']:.1f} s" for k, v in modes.items())
          + f" (sequential runs in separate processes would compile {M} times)")
    print("single-run program:", dots_summary(sfn.as_text()))

    for v in modes.values():
        v["wall"], v["cpu"] = [], []
    names = list(modes)
    for epoch in range(a.epochs):
        order = names[epoch % len(names):] + names[: epoch % len(names)]
        for k in order:
            v = modes[k]
            c, t = time.process_time(), time.perf_counter()
            if k == "sequential":
                for i in range(M):
                    v["state"][i], _ = v["fn"](v["state"][i], hps[i], images, labels, jnp.int32(epoch), data_key)
            else:
                v["state"], _ = v["fn"](v["state"], hp, images, labels, jnp.int32(epoch), data_key)
            jax.block_until_ready(v["state"])
            v["wall"].append(time.perf_counter() - t)
            v["cpu"].append(time.process_time() - c)
        print(f"epoch {epoch + 1}: " + "  ".join(f"{k} {modes[k]['wall'][-1]:.2f} s wall / "
                                                  f"{modes[k]['cpu'][-1]:.2f} s cpu" for k in names)
              + f"  (load {os.getloadavg()[0]:.1f})", flush=True)

    seq = modes["sequential"]
    out = {"dataset": ds.name, "images_per_epoch": n_img, "members": M, "epochs": a.epochs,
           "hardware": estimators.hardware(), "jax": jax.__version__, "modes": {}}
    print(f"\nmedians over {a.epochs} epoch(s), {M} members each seeing {n_img} images per epoch:")
    for k, v in modes.items():
        wall, cpu = statistics.median(v["wall"]), statistics.median(v["cpu"])
        ratio = statistics.median(np.array(v["wall"]) / np.array(seq["wall"]))
        cpu_ratio = statistics.median(np.array(v["cpu"]) / np.array(seq["cpu"]))
        per_member = n_img / wall * (M if k == "sequential" else 1)  # while the member trains
        total = M * n_img / wall
        out["modes"][k] = dict(wall_s=wall, cpu_s=cpu, ratio=ratio, cpu_ratio=cpu_ratio,
                               compile_s=v["compile_s"], images_per_s_per_member=per_member,
                               images_per_s_total=total)
        print(f"  {k:18} {wall:7.2f} s/epoch wall ({cpu:6.2f} s cpu)  ratio to sequential "
              f"{ratio:.3f} wall, {cpu_ratio:.3f} cpu  | per member {per_member:8,.0f} img/s, "
              f"all members {total:8,.0f} img/s  | compile {v['compile_s']:.1f} s")
    print(f"load average at end {', '.join(f'{x:.1f}' for x in os.getloadavg())} (wall times on a "
          f"shared machine are noisy: compare the cpu column too)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
