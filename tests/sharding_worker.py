"""The 8-device checks of tests/test_sharding.py, run in a subprocess started with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the flag must be set before JAX starts,
and the rest of the suite keeps one device). Prints one JSON object of measured quantities;
the assertions live in tests/test_sharding.py.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharding_worker.py OUTDIR
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from conftest import replace, tiny  # noqa: E402
from vae_jax import checkpoint, experiment, sharding, train
from vae_jax.config import ConfigError  # noqa: E402

BATCH = 120  # 8 x 15: divides the data axis; 12 steps per epoch on the 1500 digits


def max_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def one_step(out: dict) -> None:
    """One optimizer step: single device (no mesh) against data-parallel over 8 devices, with
    replicated and with FSDP-sharded parameters."""
    for mode in ("replicated", "fsdp"):
        cfg = tiny(train=dict(batch_size=BATCH),
                   mesh=dict(param_sharding=mode, fsdp_min_size=64))
        ds = experiment.load_data(cfg)
        hp = experiment.hyperparams(cfg)
        batch = {"image": jnp.asarray(ds.train_images[:BATCH])}
        exp1 = experiment.Experiment.build(cfg, ds.image_shape)
        s1 = jax.jit(exp1.init_state)()
        n1, m1 = jax.jit(exp1.train_step)(s1, batch, hp)

        mesh = sharding.make_mesh(cfg.mesh)
        exp8 = experiment.Experiment.build(cfg, ds.image_shape, mesh)
        abstract = jax.eval_shape(exp8.init_state)
        st_sh = sharding.state_shardings(abstract, mesh, cfg.mesh)
        s8 = jax.jit(exp8.init_state, out_shardings=st_sh)()
        rep = sharding.replicated(mesh)
        b8 = jax.device_put(batch, sharding.batch_sharding(mesh))
        init_diff = max_diff(s1.params, jax.device_get(s8.params))
        step = jax.jit(exp8.train_step, in_shardings=(st_sh, sharding.batch_sharding(mesh), rep),
                       out_shardings=(st_sh, rep), donate_argnums=0)
        n8, m8 = step(s8, b8, jax.device_put(hp, rep))
        specs = [str(x.sharding.spec) for x in jax.tree.leaves(n8.params)]
        out[f"step_{mode}"] = {
            "devices": len(mesh.devices.flat),
            "batch_shard_rows": b8["image"].addressable_shards[0].data.shape[0],
            "init_param_diff": init_diff,
            "param_diff": max_diff(n1.params, jax.device_get(n8.params)),
            "opt_diff": max_diff(n1.opt_state, jax.device_get(n8.opt_state)),
            "metrics_1": {k: float(m1[k]) for k in ("loss", "recon", "kl", "elbo")},
            "metrics_8": {k: float(m8[k]) for k in ("loss", "recon", "kl", "elbo")},
            "param_specs": specs,
            "param_shardings_preserved": all(
                x.sharding.is_equivalent_to(s, x.ndim) for x, s in
                zip(jax.tree.leaves(n8.params), jax.tree.leaves(st_sh.params))),
        }


def no_retrace(out: dict) -> None:
    """The sharded epoch, jitted as train_and_evaluate does, traced once over three epochs."""
    cfg = tiny(train=dict(batch_size=BATCH))
    ds = experiment.load_data(cfg)
    mesh = sharding.make_mesh(cfg.mesh)
    exp = experiment.Experiment.build(cfg, ds.image_shape, mesh)
    abstract = jax.eval_shape(exp.init_state)
    st_sh = sharding.state_shardings(abstract, mesh, cfg.mesh)
    state = jax.jit(exp.init_state, out_shardings=st_sh)()
    images, labels = train.device_data(ds, mesh)
    rep = sharding.replicated(mesh)
    hp = jax.device_put(experiment.hyperparams(cfg), rep)
    traces = []

    def counted(*a):
        traces.append(1)
        return exp.train_epoch(*a)

    ins, outs = train.epoch_shardings(mesh, st_sh, rep, labels)
    fn = jax.jit(counted, in_shardings=ins, out_shardings=outs, donate_argnums=0)
    for e in range(3):
        state, m = fn(state, hp, images, labels, jnp.int32(e), exp.data_key())
    out["retrace"] = {"traces": len(traces), "cache_size": fn._cache_size(),
                      "step": int(state.step), "images_replicated": images.sharding.is_fully_replicated,
                      "images_equal": bool(np.array_equal(np.asarray(images), ds.train_images))}


def _params(workdir: str, cfg, mesh=None):
    ds = experiment.load_data(cfg)
    exp = experiment.Experiment.build(cfg, ds.image_shape)
    ck = checkpoint.Checkpointer(workdir)
    step, state = ck.restore_latest(jax.eval_shape(exp.init_state))
    ck.close()
    return step, jax.device_get(state.params)


def full_run_with_resume(out: dict, root: str) -> None:
    """A tiny run on 8 devices straight through, the same stopped after epoch 1 and re-run, and
    the same on one device (mesh.data=1)."""
    cfg = tiny(train=dict(batch_size=BATCH, num_epochs=2))

    class Stop(Exception):
        pass

    def stop(epoch):
        if epoch == 1:
            raise Stop

    straight = train.train_and_evaluate(cfg, os.path.join(root, "straight"))
    try:
        train.train_and_evaluate(cfg, os.path.join(root, "resumed"), on_epoch_end=stop)
    except Stop:
        pass
    mid = _params(os.path.join(root, "resumed"), cfg)[0]
    train.train_and_evaluate(cfg, os.path.join(root, "resumed"))
    one = replace(cfg, mesh=dict(data=1))
    single = train.train_and_evaluate(one, os.path.join(root, "single"))
    (sa, a), (sb, b), (sc, c) = (_params(os.path.join(root, d), cfg)
                                 for d in ("straight", "resumed", "single"))
    out["run"] = {"steps": [sa, sb, sc], "mid_step": mid,
                  "resume_bit_for_bit": all(np.array_equal(x, y) for x, y in
                                            zip(jax.tree.leaves(a), jax.tree.leaves(b))),
                  "vs_single_param_diff": max_diff(a, c),
                  "elbo_8": straight["elbo"], "elbo_1": single["elbo"],
                  "devices_8": straight["metadata"]["devices"],
                  "devices_1": single["metadata"]["devices"]}


def sharded_population(out: dict, root: str) -> None:
    """8 members over the 8 devices ('members' axis) against the same population on one device."""
    members = tuple({"objective.beta": b, "seed": i % 3} for i, b in
                    enumerate((0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 8.0)))
    base = tiny(train=dict(num_epochs=1))
    base = dataclasses.replace(base, population=dataclasses.replace(
        base.population, members=members, strategy="vmap", evaluators=()))
    sharded = replace(base, mesh=dict(members=8))
    single = replace(base, mesh=dict(members=1, data=1))
    res = {}
    for name, cfg in (("sharded", sharded), ("single", single)):
        wd = os.path.join(root, f"pop_{name}")
        s = train.train_and_evaluate(cfg, wd)
        res[name] = (s, experiment.restore(cfg, wd)[3])
    (s8, st8), (s1, st1) = res["sharded"], res["single"]
    # 'map' over the 8 member rows against 'map' on one device: bit for bit
    maps = {}
    for name, cfg in (("map_sharded", sharded), ("map_single", single)):
        cfg = replace(cfg, population=dict(strategy="map"))
        wd = os.path.join(root, f"pop_{name}")
        train.train_and_evaluate(cfg, wd)
        maps[name] = experiment.restore(cfg, wd)[3]
    try:
        train.train_and_evaluate(
            replace(base, mesh=dict(members=4, data=2), population=dict(strategy="map")),
            os.path.join(root, "pop_map_data"))
        map_error = ""
    except ConfigError as e:
        map_error = str(e)
    out["population"] = {
        "param_diff": max_diff(st8.params, st1.params),
        "elbo_diff": max(abs(s8["members"][k]["elbo"] - s1["members"][k]["elbo"]) for k in s8["members"]),
        "mesh_8": s8["metadata"]["devices"]["mesh"], "mesh_1": s1["metadata"]["devices"]["mesh"],
        "map_sharded_diff": max_diff(maps["map_sharded"].params, maps["map_single"].params),
        "auto_strategy": [experiment.resolve_strategy("auto", d) for d in (1, 2)],
        "map_error": map_error,
        "map_workdir_has_checkpoints": os.path.isdir(os.path.join(root, "pop_map_data", "checkpoints")),
    }


def batch_error(out: dict, root: str) -> None:
    cfg = tiny()  # batch 100 on an 8-device data axis
    wd = os.path.join(root, "bad_batch")
    try:
        train.train_and_evaluate(cfg, wd)
        out["batch_error"] = ""
    except ConfigError as e:
        out["batch_error"] = str(e)
    out["bad_batch_has_checkpoints"] = os.path.isdir(os.path.join(wd, "checkpoints"))


def main() -> None:
    root = sys.argv[1]
    out = {"device_count": jax.device_count()}
    for check in (one_step, no_retrace):
        check(out)
    for check in (full_run_with_resume, sharded_population, batch_error):
        check(out, root)
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
