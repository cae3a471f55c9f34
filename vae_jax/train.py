"""The training loop: one resumable loop for single runs and populations (a single run is a
population of one whose state has no member axis).

Workdir of a single run::

    <workdir>/config.json  hparams.json  checkpoints/  metrics.jsonl  tensorboard/  figures/  summary.json

A population keeps one checkpoint for all members and everything else per member, each member
folder shaped like a single run's workdir, so figures and aggregation treat it as one::

    <workdir>/config.json  population.json  checkpoints/  summary.json
    <workdir>/members/<name>/config.json  metrics.jsonl  tensorboard/  summary.json  eval.json  figures/

``members/<name>/config.json`` is the member as a single-run config: training it alone gives the
same parameters (bit for bit with strategy 'map'; to float rounding with 'vmap'). Re-running on a
workdir resumes from its latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import checkpoint, estimators, evaluate, experiment, figures, lock, sharding
from vae_jax.experiment import NonFiniteLossError  # noqa: F401  (train.NonFiniteLossError)
from vae_jax.data import stream
from vae_jax.config import Config, ConfigError, member_names
from vae_jax.experiment import Experiment, member
from vae_jax.metrics import MetricWriter

log = logging.getLogger(__name__)

MEMBERS_DIR = "members"


def check_finite(metrics: dict[str, np.ndarray], first_step: int, names: list[str]) -> None:
    """Per-step metrics [members, steps]; names the member (when there are several), the step
    and the metric of the first non-finite value."""
    for i, name in enumerate(names):
        for key in ("loss", "recon", "kl", "elbo"):
            bad = ~np.isfinite(metrics[key][i])
            if bad.any():
                j = int(np.argmax(bad))
                who = f"population member {i} ({name}): " if len(names) > 1 or name else ""
                raise NonFiniteLossError(
                    f"{who}non-finite {key}={metrics[key][i][j]} at step {first_step + j + 1}; the "
                    f"last good checkpoint is kept (lower optim.learning_rate or set "
                    f"optim.grad_clip_norm)")


def device_data(ds, mesh=None) -> tuple[jax.Array, jax.Array | None]:
    """The training set on the devices at its storage dtype (float32, or uint8 converted inside
    the step: ``data.prepare``), replicated over ``mesh``, each process contributing its slice
    (``sharding.global_array``)."""
    dtype = np.uint8 if ds.train_images.dtype == np.uint8 else np.float32
    if mesh is None:
        labels = None if ds.train_labels is None else jnp.asarray(ds.train_labels, jnp.int32)
        return jnp.asarray(ds.train_images, dtype), labels
    labels = None if ds.train_labels is None else sharding.global_array(
        np.asarray(ds.train_labels, np.int32), mesh)
    return sharding.global_array(np.asarray(ds.train_images, dtype), mesh), labels


def input_path(cfg: Config, ds, stacked: bool) -> str:
    """'device' or 'stream' (``config.data.input``; 'auto' by the training set's size against
    the device memory). Populations train from on-device data."""
    if stacked:
        if cfg.data.input == "stream":
            raise ConfigError("config.data.input='stream': a population trains from on-device "
                              "data; use 'device' or 'auto'")
        return "device"
    return stream.choose_input(cfg.data.input, ds, cfg.data.device_fraction)


def setup_devices(cfg: Config, num_members: int = 0):
    """Multi-host start-up (when launched under a cluster), the mesh, and the batch check: one
    ConfigError line before anything compiles. Returns (mesh, device description to log)."""
    sharding.initialize_distributed(cfg.mesh)
    mesh = sharding.make_mesh(cfg.mesh, num_members)
    per_device = sharding.check_batch(cfg.train.batch_size, mesh)
    info = dict(sharding.describe(mesh, cfg.train.batch_size, num_members),
                compute_dtype=cfg.model.compute_dtype, matmul_precision=cfg.train.matmul_precision,
                param_sharding=cfg.mesh.param_sharding)
    log.info("mesh %s over %d %s devices (%d processes): global batch %d, %d per device",
             dict(mesh.shape), mesh.devices.size, info["platform"], info["processes"],
             cfg.train.batch_size, per_device)
    return mesh, info


def epoch_shardings(mesh, state_sh, hp_sh, labels, member_axis: bool = False):
    """in/out shardings of a compiled epoch ``(state, hp, images, labels, epoch, data_key) ->
    (state, metrics)``."""
    rep = sharding.replicated(mesh)
    metrics_sh = sharding.member_sharding(mesh) if member_axis else rep
    ins = (state_sh, hp_sh, rep, None if labels is None else rep, rep, rep)
    return ins, (state_sh, metrics_sh)


def _write_config(cfg: Config, workdir: str) -> None:
    path = os.path.join(workdir, "config.json")
    new = cfg.to_dict()
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if json.loads(json.dumps(new)) != old:
            log.warning("config differs from the one stored in %s; continuing with the new one", path)
    evaluate.write_json(path, new)


def _layout(cfg: Config, workdir: str, members: list[Config], names: list[str], stacked: bool,
            has_checkpoint: bool, write: bool) -> list[str]:
    """Writes config.json (and for a population population.json and members/<name>/config.json)
    when ``write`` (process 0); returns the member folders. A workdir whose checkpoints belong to
    another population is refused in one line."""
    if not stacked:
        if write:
            _write_config(cfg, workdir)
        return [workdir]
    path = os.path.join(workdir, "population.json")
    plan = {"members": [{"name": n, "overrides": dict(o), "seed": m.seed}
                        for n, o, m in zip(names, cfg.population.members, members)],
            "data_order_seed": members[0].data.shuffle_seed}
    if has_checkpoint and os.path.exists(path):
        with open(path) as f:
            old = [m["name"] for m in json.load(f).get("members", [])]
        if old != names:
            raise checkpoint.CheckpointError(f"{workdir} holds a population with members {old}, "
                                             f"not {names}: use a new --workdir or the old members")
    dirs = [os.path.join(workdir, MEMBERS_DIR, name) for name in names]
    if write:
        _write_config(cfg, workdir)
        evaluate.write_json(path, plan)
        for d, m in zip(dirs, members):
            os.makedirs(d, exist_ok=True)
            evaluate.write_json(os.path.join(d, "config.json"), m.to_dict())
    return dirs


def restore_or_init(ckpt: checkpoint.Checkpointer, target: Any, steps_per_epoch: int,
                    init: Callable[[], Any], what: str = "run", mid_epoch: bool = False
                    ) -> tuple[Any, int]:
    """(state, first step to train): the latest checkpoint restored into ``target`` (abstract
    arrays with their shardings), or ``init()`` at step 0 when there is none. A checkpoint that
    does not end on an epoch boundary is refused in one line unless ``mid_epoch`` (the streamed
    path, which starts its input at any step)."""
    restored = ckpt.restore_latest(target)
    if restored is None:
        log.info("no checkpoint in %s: %s starts fresh at step 0", ckpt.directory, what)
        return init(), 0
    step, state = restored
    if step % steps_per_epoch and not mid_epoch:
        raise checkpoint.CheckpointError(
            f"checkpoint step {step} in {ckpt.directory} is not a whole number of "
            f"{steps_per_epoch}-step epochs: train.batch_size or the data split changed "
            f"(or it was saved mid-epoch by a streamed run: set config.data.input='stream')")
    epoch, pos = divmod(step, steps_per_epoch)
    log.info("resumed %s from step %d (epoch %d%s)", what, step, epoch,
             f", step {pos} of {steps_per_epoch}" if pos else "")
    return state, step


def train_and_evaluate(cfg: Config, workdir: str,
                       on_epoch_end: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Trains ``cfg`` (a single run, or every member of ``cfg.population`` in one compiled
    program) in ``workdir``, resuming from its latest checkpoint. Writes metrics, test ELBO,
    figures and ``summary.json`` (per member for a population, and last ``<workdir>/summary.json``
    with all members, whose presence marks the population finished). Runs on all devices of all
    processes (``config.mesh``); only process 0 writes logs, figures and JSON."""
    members, stacked = experiment.members_of(cfg)
    names = member_names(cfg) if stacked else [""]
    evaluate.check_names(cfg.eval.evaluators)  # a wrong name fails before anything loads
    if stacked:
        if cfg.population.evaluators:
            evaluate.check_names(cfg.population.evaluators)
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ConfigError(f"config.population.members: two members are both named {dup!r} "
                              f"(values equal to 12 significant digits); make them differ more")
    with sharding.matmul_precision(cfg.train.matmul_precision), lock.WorkdirLock(
            workdir, enabled=sharding.is_main_process()):
        return _train_and_evaluate(cfg, workdir, on_epoch_end, members, names, stacked)


def _train_and_evaluate(cfg, workdir, on_epoch_end, members, names, stacked) -> dict[str, Any]:
    main = sharding.is_main_process()
    os.makedirs(workdir, exist_ok=True)
    ds = experiment.load_data(cfg)
    steps_per_epoch = experiment.steps_per_epoch(cfg, ds)
    mesh, devices = setup_devices(cfg, len(members) if stacked else 0)
    # fails before compiling
    strategy = experiment.resolve_strategy(cfg.population.strategy, mesh.shape["data"]) if stacked else None
    n_train = len(ds.train_images)
    exp = Experiment.build(members[0], ds.image_shape, mesh, n_train)  # structure shared by all members
    exps = [exp] + [Experiment.build(m, ds.image_shape, num_train=n_train) for m in members[1:]]

    ckpt = checkpoint.Checkpointer(workdir, cfg.train.keep_checkpoints)
    if main:
        for path in ckpt.remove_partial():  # the temporary folder of a save that was cut short
            log.warning("removed %s, the remains of an interrupted save", path)
    has_checkpoint = ckpt.latest_step() is not None
    dirs = _layout(cfg, workdir, members, names, stacked, has_checkpoint, write=False)
    rep = sharding.replicated(mesh)
    abstract = experiment.abstract_state(exp, members, stacked)
    state_sh = sharding.state_shardings(abstract, mesh, cfg.mesh, member_axis=stacked)
    if stacked:
        hp_sh = sharding.member_sharding(mesh)
        member_seeds = jax.device_put(experiment.seeds(members), hp_sh)
        init = lambda: jax.jit(experiment.init_fn(exp), in_shardings=hp_sh,  # noqa: E731
                               out_shardings=state_sh)(member_seeds)
        hp = jax.device_put(experiment.stack_hyperparams(members), hp_sh)
        run_epoch = experiment.epoch_fn(exp, strategy, mesh)
    else:
        hp_sh = rep
        init = lambda: jax.jit(exp.init_state, out_shardings=state_sh)()  # noqa: E731
        hp = jax.device_put(experiment.hyperparams(cfg), rep)
        run_epoch = exp.train_epoch
    path = input_path(cfg, ds, stacked)
    state, start_step = restore_or_init(ckpt, sharding.with_shardings(abstract, state_sh),
                                        steps_per_epoch, init, "population" if stacked else "run",
                                        mid_epoch=path == "stream")
    start_epoch = start_step // steps_per_epoch
    _layout(cfg, workdir, members, names, stacked, has_checkpoint, write=main)  # once it restored

    # rows and events after the checkpoint (from a process killed before its next save) go, so
    # every epoch is logged exactly once however often the run was interrupted
    writers = [MetricWriter(d, enabled=main, resume_step=start_step) for d in dirs]
    for d, w, m in zip(dirs, writers, members):
        if start_step == 0:
            w.write_hparams(dict(m.to_dict(), devices=devices, input=path), d)
    by_seed: dict[int, estimators.TestELBO] = {}  # members differ from one another only in
    for m, e in zip(members, exps):  # batchable values and the seed, and the test ELBO depends
        if m.seed not in by_seed:  # on the seed alone (its noise): one compiled evaluator per seed
            by_seed[m.seed] = estimators.TestELBO(e, ds)
    evaluators = [by_seed[m.seed] for m in members]
    params_of = (lambda p, i: member(p, i)) if stacked else (lambda p, i: p)

    t0 = time.perf_counter()
    if path == "device":
        epoch_fn = _device_epochs(exp, run_epoch, mesh, state_sh, hp_sh, ds, state, hp, stacked)
        source = None
    else:
        source = stream.HostStream(ds, mesh, cfg.train.batch_size, exp.data_key(), start_step,
                                   cfg.train.num_epochs * steps_per_epoch, cfg.data.stream_chunk,
                                   cfg.data.stream_prefetch)
        try:
            epoch_fn = _streamed_epochs(cfg, exp, mesh, state_sh, source, ckpt, state, hp, steps_per_epoch)
        except BaseException:
            source.close()
            raise
    compile_s = time.perf_counter() - t0

    n_members = len(members)
    summaries: list[dict[str, Any]] = [{} for _ in members]
    bar = _progress(cfg, start_epoch)
    try:
        for epoch in range(start_epoch, cfg.train.num_epochs):
            t = time.perf_counter()
            first_step = max(epoch * steps_per_epoch, start_step)
            new_state, metrics = epoch_fn(state, hp, epoch)
            metrics = sharding.to_host(metrics)  # one transfer for all members: [M, steps, ...]
            if not stacked:
                metrics = jax.tree.map(lambda a: a[None], metrics)
            seconds = time.perf_counter() - t
            check_finite(metrics, first_step, names)
            state = new_state
            step = (epoch + 1) * steps_per_epoch
            done = epoch + 1
            means = {k: np.mean(v, axis=1) for k, v in metrics.items() if k != "kl_per_dim"}
            if stacked and "beta" in metrics:  # the weighted KL term's share of the training loss
                means["kl_contribution"] = np.mean(metrics["loss"] - metrics["recon"], axis=1)
            rate = (step - first_step) * cfg.train.batch_size / seconds
            for i in range(n_members):
                row = {k: float(v[i]) for k, v in means.items()}
                row["images_per_s"] = rate
                if stacked:
                    row["population_images_per_s"] = rate * n_members
                row["epoch"] = done
                if epoch == start_epoch:
                    row["compile_s"] = compile_s
                writers[i].write(step, "train", row)
                if "kl_per_dim" in metrics:
                    kl = np.mean(metrics["kl_per_dim"][i], axis=0)
                    writers[i].write(step, "train_kl_per_dim", {f"z{d}": v for d, v in enumerate(kl)})
            if done % cfg.train.eval_every_epochs == 0 or done == cfg.train.num_epochs:
                for i in range(n_members):
                    summaries[i] = evaluators[i](params_of(state.params, i), step, done)
                    writers[i].write(step, "test", summaries[i])
            if done % cfg.train.checkpoint_every_epochs == 0 or done == cfg.train.num_epochs:
                ckpt.save(step, state)
            bar(done, {"loss": float(np.mean(means["loss"])), "images_per_s": rate * n_members},
                {"elbo": max(s["elbo"] for s in summaries)} if summaries[0] else {})
            if on_epoch_end is not None:
                on_epoch_end(done)
    finally:
        if source is not None:
            source.close()
        for w in writers:
            w.close()
        ckpt.close()

    step = int(sharding.to_host(state.step).reshape(-1)[0])
    wall = round(time.perf_counter() - t0, 2)
    # evaluation and files: process 0 alone, on host copies of the parameters (a collective
    # gather that every process joins) when there are several processes
    all_params = sharding.to_host(state.params) if jax.process_count() > 1 else state.params
    if not main:
        return {"step": step}
    out: dict[str, Any] = {}
    for i, (name, m, e, d) in enumerate(zip(names, members, exps, dirs)):
        params = params_of(all_params, i)
        if not summaries[i]:  # already finished earlier: evaluate the restored parameters
            summaries[i] = evaluators[i](params, step, cfg.train.num_epochs)
        if cfg.train.figures:
            figures.write_figures(e, params, ds, os.path.join(d, "figures"))
        meta = dict(evaluators[i].metadata(cfg.train.num_epochs), train_wall_s_this_process=wall,
                    compile_s=round(compile_s, 2), devices=devices)
        if stacked:
            if cfg.population.evaluators:
                fe = Experiment.build(dataclasses.replace(m, eval=dataclasses.replace(
                    m.eval, evaluators=tuple(cfg.population.evaluators))), ds.image_shape)
                evaluate.write_json(os.path.join(d, "eval.json"),
                                    evaluate.run(fe, ds, params, step, cfg.train.num_epochs, d))
            meta["population"] = dict(size=n_members, index=i, name=name,
                                      overrides=dict(cfg.population.members[i]))
        out[name] = dict(summaries[i], step=step, metadata=meta)
        evaluate.write_json(os.path.join(d, "summary.json"), out[name])
    if not stacked:
        return out[""]
    result = {"step": step, "members": out,
              "metadata": {"size": n_members, "strategy": strategy, "compile_s": round(compile_s, 2),
                           "train_wall_s_this_process": wall, "hardware": estimators.hardware(),
                           "devices": devices}}
    evaluate.write_json(os.path.join(workdir, "summary.json"), result)  # last: marks it done
    return result


def _device_epochs(exp, run_epoch, mesh, state_sh, hp_sh, ds, state, hp, stacked):
    """The on-device path: ``(state, hp, epoch) -> (state, per-step metrics)``, one compiled
    call per epoch over the training set held on the devices."""
    rep = sharding.replicated(mesh)
    images, labels = device_data(ds, mesh)
    data_key = jax.device_put(exp.data_key(), rep)
    ins, outs = epoch_shardings(mesh, state_sh, hp_sh, labels, member_axis=stacked)
    fn = jax.jit(run_epoch, in_shardings=ins, out_shardings=outs, donate_argnums=0).lower(
        state, hp, images, labels, jnp.int32(0), data_key).compile()
    return lambda st, h, epoch: fn(st, h, images, labels, jnp.int32(epoch), data_key)


def _streamed_epochs(cfg, exp, mesh, state_sh, source, ckpt, state, hp, steps_per_epoch):
    """The streamed path: ``(state, hp, epoch) -> (state, per-step metrics)`` over the epoch's
    remaining chunks from ``source`` (a ``stream.HostStream``), each one compiled call of
    ``Experiment.train_steps``; with ``data.stream_checkpoint_steps``, a checkpoint whenever a
    chunk crosses a multiple of it inside the epoch (the epoch's end is saved by the loop)."""
    rep = sharding.replicated(mesh)
    batch_sh = stream.chunk_sharding(mesh)
    step_fn = jax.jit(functools.partial(exp.train_steps, steps_per_epoch=steps_per_epoch),
                      in_shardings=(state_sh, rep, batch_sh), out_shardings=(state_sh, rep),
                      donate_argnums=0)
    k = min(cfg.data.stream_chunk, steps_per_epoch)
    spec = {"image": jax.ShapeDtypeStruct((k, cfg.train.batch_size, *exp.image_shape),
                                          source.images.dtype, sharding=batch_sh)}
    if source.labels is not None:
        spec["label"] = jax.ShapeDtypeStruct((k, cfg.train.batch_size), jnp.int32, sharding=batch_sh)
    compiled = {k: step_fn.lower(state, hp, spec).compile()}
    chunks = iter(source)
    every = cfg.data.stream_checkpoint_steps

    def run(st, h, epoch):
        end = (epoch + 1) * steps_per_epoch
        parts = []
        for chunk in chunks:
            fn = compiled.get(chunk.num_steps) or step_fn
            st, m = fn(st, h, chunk.batches)
            parts.append(m)
            step = chunk.first_step + chunk.num_steps
            if every and step < end and step // every > chunk.first_step // every:
                m_host = jax.tree.map(lambda a: a[None], sharding.to_host(m))
                check_finite(m_host, chunk.first_step, [""])
                ckpt.save(step, st)
            if step == end:
                break
        return st, jax.tree.map(lambda *a: jnp.concatenate(a), *parts)

    return run


def _progress(cfg: Config, start_epoch: int) -> Callable[[int, dict, dict], None]:
    """A tqdm bar over epochs showing the loss, images/s and the latest test ELBO."""
    if not cfg.train.progress:
        return lambda *a: None
    from tqdm import tqdm

    bar = tqdm(total=cfg.train.num_epochs, initial=start_epoch, unit="epoch", dynamic_ncols=True,
               mininterval=0.5)

    def update(done: int, train: dict, test: dict) -> None:
        post = {"loss": f"{train['loss']:.2f}", "img/s": f"{train['images_per_s']:,.0f}"}
        if test:
            post["test_elbo"] = f"{test['elbo']:.2f}"
        bar.set_postfix(post, refresh=False)
        bar.update(1)
        if done == cfg.train.num_epochs:
            bar.close()

    return update
