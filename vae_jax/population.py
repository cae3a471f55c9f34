"""Populations: many members (β values, learning rates, seeds, ...) trained in one compiled program.

A population is a config whose ``population.members`` lists overrides of batchable fields
(``config.POPULATION_FIELDS``). All members share the architecture, the data and the data order;
they differ in values that enter the compiled step as arrays (``train.hyperparams``) and in their
seed (initialisation and noise/binarization key stream). The epoch is ``train.Experiment.
train_epoch`` under ``jax.vmap`` over stacked states and hyperparameters, with the images, the
epoch and the data key unbatched: one shuffle and one gather per step for everyone, and the first
layer's matmul over the shared batch becomes one wide matmul over all members' weights
(``population.strategy='vmap'``, the accelerator layout). ``population.strategy='map'`` runs the
members' epochs one after another inside the same compiled call instead (``lax.map``): bit for
bit the single runs. On XLA:CPU the batched matmuls of 'vmap' run slower per FLOP than the
single run's plain ones and the scanned single run has no per-step overhead left to amortize, so
there 'map' is faster (measured 1.13-1.17x sequential for 'vmap', 0.97-1.03x for 'map' with 8
members of the 784-400-20 MLP on 2 cores; ``scripts/benchmark_population.py``); the default
'auto' takes 'map' on CPU and 'vmap' on accelerators. With the members split over the mesh's
'members' axis, 'map' runs each device's share one after another and the devices side by side
(``shard_map``); on a CPU split into two XLA devices that is about 0.9x sequential.

Workdir layout (one checkpoint for the whole population, everything else per member, each member
folder shaped like a single run's workdir, so figures and aggregation treat it as one)::

    <workdir>/config.json  population.json  checkpoints/  summary.json
    <workdir>/members/<name>/config.json  metrics.jsonl  tensorboard/  summary.json  eval.json  figures/

``members/<name>/config.json`` is the member as a single-run config: training it with
``train.train_and_evaluate`` gives the same parameters (bit for bit with 'map'; to float rounding
with 'vmap': see tests/test_population.py for the tolerance). Re-running on the workdir resumes from the latest checkpoint, as for a single run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import checkpoint, evaluate, sharding, train
from vae_jax.config import Config, ConfigError, member_configs
from vae_jax.metrics import MetricWriter


MEMBERS_DIR = "members"


# ----------------------------------------------------------------------------------------------
# Names


def format_value(v: Any) -> str:
    """A config value as it appears in folder names: 0.1, 1e-05, 400-400, True, gaussian."""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return format(v, ".12g")
    if isinstance(v, (tuple, list)):
        return "-".join(format_value(x) for x in v) or "none"
    return str(v)


def label(overrides: Mapping[str, Any], keys: Mapping[str, str] | None = None,
          empty: str = "default") -> str:
    """A deterministic, filesystem-safe name for a set of overrides: ``beta=0.5,seed=1``.

    Fields are named by their last component unless ``keys`` maps them to something else (the
    sweep passes full paths where last components collide); long names are cut and suffixed with
    a hash of the whole, so distinct overrides keep distinct names."""
    if not overrides:
        return empty
    keys = keys or {}
    parts = [f"{keys.get(k, k.rsplit('.', 1)[-1])}={format_value(v)}" for k, v in overrides.items()]
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", ",".join(parts))
    if len(name) > 120:
        digest = hashlib.sha1(json.dumps(sorted(overrides.items()), default=str).encode()).hexdigest()
        name = f"{name[:100]}-{digest[:10]}"
    return name


def member_names(cfg: Config) -> list[str]:
    """Folder names of the members, derived from their overrides (unique by validation)."""
    return [label(m) for m in cfg.population.members]


# ----------------------------------------------------------------------------------------------
# Pieces


def stack_hyperparams(members: list[Config]) -> dict[str, jax.Array]:
    """``train.hyperparams`` of every member stacked along a leading member axis."""
    per = [train.hyperparams(m) for m in members]
    return {k: jnp.stack([p[k] for p in per]) for k in train.BATCHABLE}


def seeds(members: list[Config]) -> jax.Array:
    return jnp.asarray([m.seed for m in members], jnp.int32)


def init_fn(exp: train.Experiment) -> Callable[[jax.Array], train.TrainState]:
    """Seeds [M] -> a TrainState whose every leaf has a leading member axis."""
    return jax.vmap(exp.init_state)


def resolve_strategy(strategy: str, data_shards: int = 1) -> str:
    """'auto' -> 'map' on CPU (see the module docstring), 'vmap' on accelerators and whenever a
    batch is split over devices (``data_shards`` > 1). 'map' runs each member on whole batches,
    so it needs ``data_shards`` = 1 (the members may be split over device rows)."""
    if strategy == "auto":
        return "map" if jax.default_backend() == "cpu" and data_shards == 1 else "vmap"
    if strategy == "map" and data_shards > 1:
        raise ConfigError(f"config.population.strategy='map': runs each member on whole batches, "
                          f"so it cannot split them over config.mesh.data={data_shards} devices; "
                          f"use 'vmap' or config.mesh.data=1")
    return strategy


def epoch_fn(exp: train.Experiment, strategy: str = "vmap", mesh: Any = None):
    """The population's epoch ``(states, hps, images, labels, epoch, data_key) -> (states,
    metrics)``, states, hps and metrics with a leading member axis; images, labels, epoch and data
    key are shared (one data order). Jit it with the states donated.

    'vmap': ``train_epoch`` vmapped over states and hyperparameters: members step in lockstep,
    each dense layer one batched matmul (the first layer, whose input batch is shared, one wide
    matmul over all members' weights). The summation order of those matmuls differs from a single
    run's, so members agree with their single runs to float rounding, which training amplifies.
    'map': ``lax.map`` over members of the same ``train_epoch``: the members' epochs run one
    after another inside the compiled call, compiled once, each bit for bit its single run. With
    ``mesh`` whose 'members' axis is > 1, ``shard_map`` gives each device row its slice of the
    members and the rows run side by side (still bit for bit; on one host's CPU, split into
    several XLA devices, the rows share the cores: see scripts/benchmark_population.py).
    """
    member_shards = 1 if mesh is None else mesh.shape["members"]
    data_shards = 1 if mesh is None else mesh.shape["data"]
    strategy = resolve_strategy(strategy, data_shards)
    if strategy == "vmap":
        return jax.vmap(exp.train_epoch, in_axes=(0, 0, None, None, None, None))
    if strategy != "map":
        raise ConfigError(f"config.population.strategy={strategy!r}: must be one of auto, vmap, map")
    whole = dataclasses.replace(exp, mesh=None)  # every device steps on whole batches

    def mapped(states, hps, images, labels, epoch, data_key):
        return jax.lax.map(lambda sh: whole.train_epoch(sh[0], sh[1], images, labels, epoch, data_key),
                           (states, hps))

    if member_shards == 1:
        return mapped
    row, shared = jax.sharding.PartitionSpec("members"), jax.sharding.PartitionSpec()
    # check_vma=False: the Bernoulli likelihood's custom VJP (likelihoods.py) returns a cotangent
    # for the shared images that varies over members, which the varying-axes check refuses
    return jax.shard_map(mapped, mesh=mesh, in_specs=(row, row, shared, shared, shared, shared),
                         out_specs=(row, row), check_vma=False)


def member(tree: Any, i: int) -> Any:
    """Member ``i``'s slice of a population pytree."""
    return jax.tree.map(lambda a: a[i], tree)


def _check_finite(metrics: dict[str, np.ndarray], first_step: int, names: list[str]) -> None:
    keys = [k for k in ("loss", "recon", "kl", "elbo") if k in metrics]
    if all(np.isfinite(metrics[k]).all() for k in keys):
        return
    for i, name in enumerate(names):
        try:
            train._check_finite({k: metrics[k][i] for k in keys}, first_step)
        except train.NonFiniteLossError as e:
            raise train.NonFiniteLossError(f"population member {i} ({name}): {e}") from None


def _drop_rows_after(path: str, step: int) -> None:
    """Removes metrics.jsonl rows newer than the checkpoint being resumed (written by a process
    killed before its next save), so a resumed population logs every epoch exactly once."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [ln for ln in f if ln.strip()]
    keep = [ln for ln in lines if json.loads(ln).get("step", 0) <= step]
    if len(keep) != len(lines):
        with open(path + ".tmp", "w") as f:
            f.writelines(keep)
        os.replace(path + ".tmp", path)


def _write_json(path: str, obj: Any) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=str)
    os.replace(path + ".tmp", path)


def _layout(cfg: Config, workdir: str, members: list[Config], names: list[str],
            has_checkpoint: bool, write: bool = True) -> list[str]:
    """Writes config.json / population.json / members/<name>/config.json (when ``write``: on
    process 0); returns member dirs. A workdir whose checkpoints belong to another population is
    refused in one line."""
    path = os.path.join(workdir, "population.json")
    plan = {"members": [{"name": n, "overrides": dict(o), "seed": m.seed}
                        for n, o, m in zip(names, cfg.population.members, members)],
            "data_order_seed": members[0].data.shuffle_seed}
    if has_checkpoint and os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if [m["name"] for m in old.get("members", [])] != names:
            raise checkpoint.CheckpointError(
                f"{workdir} holds a population with members {[m['name'] for m in old['members']]}, "
                f"not {names}: use a new --workdir or the old members")
    dirs = [os.path.join(workdir, MEMBERS_DIR, name) for name in names]
    if write:
        train._write_config(cfg, workdir)
        _write_json(path, plan)
        for d, m in zip(dirs, members):
            os.makedirs(d, exist_ok=True)
            _write_json(os.path.join(d, "config.json"), m.to_dict())
    return dirs


def _final_eval_config(m: Config, evaluators: tuple[str, ...]) -> Config:
    return dataclasses.replace(m, eval=dataclasses.replace(m.eval, evaluators=tuple(evaluators)))


# ----------------------------------------------------------------------------------------------
# The loop (the structure of train.train_and_evaluate, with a member axis)


def train_and_evaluate(cfg: Config, workdir: str,
                       on_epoch_end: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Trains every member of ``cfg.population`` in ``workdir`` in one compiled program, resuming
    from the latest checkpoint; writes per-member metrics, test ELBO, figures, ``eval.json`` and
    ``summary.json``, and ``<workdir>/summary.json`` with all members last (its presence marks
    the population finished). Returns that summary."""
    members = member_configs(cfg)
    if not members:
        raise ConfigError("config.population.members=(): empty; a single run goes through "
                          "vae_jax.train.train_and_evaluate")
    if cfg.population.evaluators:
        evaluate.check_names(cfg.population.evaluators)  # a wrong name fails before anything loads
    names = member_names(cfg)
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"config.population.members: two members are both named {dup!r} "
                          f"(values equal to 12 significant digits); make them differ more")
    with sharding.matmul_precision(cfg.train.matmul_precision):
        return _train_and_evaluate(cfg, workdir, on_epoch_end, members, names)


def _train_and_evaluate(cfg, workdir, on_epoch_end, members, names) -> dict[str, Any]:
    main = sharding.is_main_process()
    os.makedirs(workdir, exist_ok=True)
    ds = train.load_data(cfg)
    steps_per_epoch = train._check_sizes(cfg, ds)
    mesh, devices = train.setup_devices(cfg, len(members))
    # fails before compiling
    strategy = resolve_strategy(cfg.population.strategy, mesh.shape["data"])
    exp = train.Experiment.build(members[0], ds.image_shape, mesh)  # structure shared by all
    exps = [exp] + [train.Experiment.build(m, ds.image_shape) for m in members[1:]]

    ckpt = checkpoint.Checkpointer(workdir, cfg.train.keep_checkpoints)
    dirs = _layout(cfg, workdir, members, names, ckpt.latest_step() is not None, write=main)
    msh = sharding.member_sharding(mesh)
    member_seeds = jax.device_put(seeds(members), msh)
    init = init_fn(exp)
    abstract = jax.eval_shape(init, member_seeds)
    state_sh = sharding.state_shardings(abstract, mesh, cfg.mesh, member_axis=True)
    state, start_epoch = train.restore_or_init(
        ckpt, sharding.with_shardings(abstract, state_sh), steps_per_epoch,
        lambda: jax.jit(init, in_shardings=msh, out_shardings=state_sh)(member_seeds),
        what="population")

    writers = [MetricWriter(d, enabled=main) for d in dirs]
    for d, w, m in zip(dirs, writers, members):
        if main:
            _drop_rows_after(w.path, start_epoch * steps_per_epoch)
        if start_epoch == 0:
            w.write_hparams(dict(m.to_dict(), devices=devices), d)
    images, labels = train._device_data(ds, mesh)
    by_seed: dict[int, evaluate.TestELBO] = {}  # members differ from one another only in
    for m, e in zip(members, exps):  # batchable values and the seed, and the test ELBO depends
        if m.seed not in by_seed:  # on the seed alone (its noise): one compiled evaluator per seed
            by_seed[m.seed] = evaluate.TestELBO(e, ds)
    evaluators = [by_seed[m.seed] for m in members]

    t0 = time.perf_counter()
    hp = jax.device_put(stack_hyperparams(members), msh)
    data_key = jax.device_put(exp.data_key(), sharding.replicated(mesh))
    ins, outs = train.epoch_shardings(mesh, state_sh, msh, labels, member_axis=True)
    run_epoch = jax.jit(epoch_fn(exp, strategy, mesh), in_shardings=ins,
                        out_shardings=outs, donate_argnums=0).lower(
        state, hp, images, labels, jnp.int32(0), data_key).compile()
    compile_s = time.perf_counter() - t0

    n_members = len(members)
    summaries: list[dict[str, Any]] = [{} for _ in members]
    bar = train._progress(cfg, start_epoch)
    try:
        for epoch in range(start_epoch, cfg.train.num_epochs):
            t = time.perf_counter()
            first_step = epoch * steps_per_epoch
            new_state, metrics = run_epoch(state, hp, images, labels, jnp.int32(epoch), data_key)
            metrics = sharding.to_host(metrics)  # one transfer for all members: leaves [M, steps, ...]
            seconds = time.perf_counter() - t
            _check_finite(metrics, first_step, names)
            state = new_state
            step = first_step + steps_per_epoch
            done = epoch + 1
            means = {k: np.mean(v, axis=1) for k, v in metrics.items() if k != "kl_per_dim"}
            if "beta" in metrics:  # the weighted KL term's share of the training loss (seed 004)
                means["kl_contribution"] = np.mean(metrics["loss"] - metrics["recon"], axis=1)
            member_rate = steps_per_epoch * cfg.train.batch_size / seconds
            for i in range(n_members):
                row = {k: float(v[i]) for k, v in means.items()}
                row.update(images_per_s=member_rate, population_images_per_s=member_rate * n_members,
                           epoch=done)
                if epoch == start_epoch:
                    row["compile_s"] = compile_s
                writers[i].write(step, "train", row)
                if "kl_per_dim" in metrics:
                    kl = np.mean(metrics["kl_per_dim"][i], axis=0)
                    writers[i].write(step, "train_kl_per_dim", {f"z{d}": v for d, v in enumerate(kl)})
            if done % cfg.train.eval_every_epochs == 0 or done == cfg.train.num_epochs:
                for i in range(n_members):
                    summaries[i] = evaluators[i](member(state.params, i), step, done)
                    writers[i].write(step, "test", summaries[i])
            if done % cfg.train.checkpoint_every_epochs == 0 or done == cfg.train.num_epochs:
                ckpt.save(step, state)
            bar(done, {"loss": float(np.mean(means["loss"])),
                       "images_per_s": member_rate * n_members},
                {"elbo": max(s["elbo"] for s in summaries)} if summaries[0] else {})
            if on_epoch_end is not None:
                on_epoch_end(done)
    finally:
        for w in writers:
            w.close()
        ckpt.close()

    step = int(sharding.to_host(state.step)[0])
    wall = round(time.perf_counter() - t0, 2)
    out: dict[str, Any] = {}
    # evaluation and files: process 0 alone, on host copies of the parameters (a collective
    # gather that every process joins) when there are several processes
    all_params = sharding.to_host(state.params) if jax.process_count() > 1 else state.params
    if not main:
        return {"step": step, "members": out}
    for i, (name, m, e, d) in enumerate(zip(names, members, exps, dirs)):
        params = member(all_params, i)
        if not summaries[i]:  # already finished earlier: evaluate the restored parameters
            summaries[i] = evaluators[i](params, step, cfg.train.num_epochs)
        if cfg.train.figures:
            evaluate.write_figures(e, params, ds, os.path.join(d, "figures"))
        if cfg.population.evaluators:
            fe = train.Experiment.build(_final_eval_config(m, cfg.population.evaluators), ds.image_shape)
            _write_json(os.path.join(d, "eval.json"),
                        evaluate.run(fe, ds, params, step, cfg.train.num_epochs, d))
        summary = dict(summaries[i], step=step, metadata=dict(
            evaluators[i].metadata(cfg.train.num_epochs), train_wall_s_this_process=wall,
            compile_s=round(compile_s, 2), devices=devices,
            population=dict(size=n_members, index=i, name=name,
                            overrides=dict(cfg.population.members[i]))))
        _write_json(os.path.join(d, "summary.json"), summary)
        out[name] = summary
    result = {"step": step, "members": out,
              "metadata": {"size": n_members, "strategy": strategy,
                           "compile_s": round(compile_s, 2),
                           "train_wall_s_this_process": wall,
                           "hardware": evaluate.hardware(), "devices": devices}}
    _write_json(os.path.join(workdir, "summary.json"), result)  # last: marks the population done
    return result


def restore(cfg: Config, workdir: str) -> tuple[list[train.Experiment], Any, int, train.TrainState]:
    """(member experiments, dataset, step, population state with a leading member axis) of
    ``workdir``'s latest checkpoint; ``member(state.params, i)`` is member i's parameters."""
    members = member_configs(cfg)
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise checkpoint.CheckpointError(f"no checkpoints in {workdir}: train there first")
    ds = train.load_data(cfg)
    exps = [train.Experiment.build(m, ds.image_shape) for m in members]
    ckpt = checkpoint.Checkpointer(workdir, cfg.train.keep_checkpoints)
    restored = ckpt.restore_latest(jax.eval_shape(init_fn(exps[0]), seeds(members)))
    ckpt.close()
    if restored is None:
        raise checkpoint.CheckpointError(f"no checkpoints in {workdir}: train there first")
    return exps, ds, restored[0], restored[1]


def evaluate_workdir(cfg: Config, workdir: str) -> dict[str, Any]:
    """``--mode eval`` for a population: ``cfg.eval.evaluators`` on every member of the latest
    checkpoint, each into ``members/<name>/eval.json`` (and its figures folder)."""
    evaluate.check_names(cfg.eval.evaluators)
    exps, ds, step, state = restore(cfg, workdir)
    params = state.params
    epochs = step // train._check_sizes(cfg, ds)
    out = {}
    for i, (name, e) in enumerate(zip(member_names(cfg), exps)):
        d = os.path.join(workdir, MEMBERS_DIR, name)
        os.makedirs(d, exist_ok=True)
        res = evaluate.run(e, ds, member(params, i), step, epochs, d)
        _write_json(os.path.join(d, "eval.json"), res)
        out[name] = res
    return {"step": step, "members": out}
