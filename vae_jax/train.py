"""Train state, the compiled epoch (a ``lax.scan`` over steps), and the resumable training loop.

Randomness: one base key per run (``jax.random.key(config.seed)``), stored in the state as raw
key data. Inside the compiled step the key is ``fold_in(base, step)``, split into named streams
(``"noise"`` for the reparameterization ε, ``"binarize"`` for dynamic binarization); shuffling uses
``fold_in(stream(key(data.shuffle_seed), "shuffle"), epoch)`` (shuffle_seed defaults to the seed;
members of a population share it). Nothing is split on the host, so a resumed run draws exactly
the numbers an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vae_jax import checkpoint, data, evaluate, models, objectives, sharding
from vae_jax.config import Config, ConfigError, OptimConfig
from vae_jax.metrics import MetricWriter
from vae_jax.rng import stream

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf; the message names the step and the metric."""


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any
    opt_state: Any
    rng: jax.Array  # raw key data of the run's base key (uint32), so Orbax can store it
    model_state: Any = flax.struct.field(default_factory=dict)  # non-gradient state (VQ EMA)


# Hyperparameters that enter the compiled step as float32 arrays rather than constants, so a
# population (vmap over members) can give each member its own value.
BATCHABLE = ("beta", "learning_rate", "free_bits", "warmup_steps", "cycle_steps", "capacity_max",
             "capacity_steps", "capacity_gamma")


def hyperparams(cfg: Config) -> dict[str, jax.Array]:
    """The batchable hyperparameters of ``cfg`` as float32 scalars."""
    o = cfg.objective
    values = dict(beta=o.beta, learning_rate=cfg.optim.learning_rate, free_bits=o.free_bits,
                  warmup_steps=o.warmup_steps, cycle_steps=o.cycle_steps,
                  capacity_max=o.capacity_max, capacity_steps=o.capacity_steps,
                  capacity_gamma=o.capacity_gamma)
    return {k: jnp.asarray(values[k], jnp.float32) for k in BATCHABLE}


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """The update direction; the step multiplies it by −learning_rate from ``hyperparams`` (as
    optax's own adam/adamw/sgd do last), so the learning rate can differ across a population."""
    if cfg.name == "adam":
        opt = optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    elif cfg.name == "adamw":
        opt = optax.chain(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
                          optax.add_decayed_weights(cfg.weight_decay))
    else:
        opt = optax.trace(decay=cfg.b1) if cfg.b1 else optax.identity()
    if cfg.grad_clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), opt)
    return opt


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything built from a config and a dataset's shape: model, objective, optimizer."""

    cfg: Config
    family: models.Family
    model: Any
    tx: optax.GradientTransformation
    image_shape: tuple[int, int, int]
    mesh: Any = None  # a jax.sharding.Mesh: the epoch splits each batch over its 'data' axis

    @classmethod
    def build(cls, cfg: Config, image_shape: tuple[int, int, int], mesh: Any = None) -> "Experiment":
        family = models.get(cfg.model.family)
        if cfg.model.network == "conv":
            down = 2 ** sum(1 for s in cfg.model.conv_strides if s == 2)
            if image_shape[0] % down or image_shape[1] % down:
                raise ConfigError(
                    f"config.model.conv_strides={cfg.model.conv_strides!r}: downsample by {down}, "
                    f"which does not divide the {image_shape[0]}x{image_shape[1]} images of "
                    f"{cfg.data.name}")
        return cls(cfg, family, family.build(cfg, image_shape), make_optimizer(cfg.optim),
                   tuple(image_shape), mesh)

    def init_state(self, seed: jax.Array | int | None = None) -> TrainState:
        base = jax.random.key(self.cfg.seed if seed is None else seed)
        dummy = {"image": jnp.zeros((1, *self.image_shape), jnp.float32),
                 "label": jnp.zeros((1,), jnp.int32)}
        params = self.family.init(self.model, {"params": stream(base, "init"),
                                               "noise": stream(base, "init_noise")}, dummy)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=self.tx.init(params), rng=jax.random.key_data(base),
                          model_state=self.family.init_state(self.model, params))

    def prepare(self, x: jax.Array, key: jax.Array) -> jax.Array:
        """Device-side preprocessing of a batch of [0, 1] images: binarize, then scale."""
        if self.cfg.data.binarization == "dynamic":
            x = data.binarize(x, key)
        return data.scale(x, self.cfg.data.scale)

    def terms(self, params, batch: dict[str, jax.Array], key: jax.Array,
              num_samples: int | None = None) -> dict[str, jax.Array]:
        """Per-example objective terms of a prepared batch under ``params``."""
        n = self.cfg.objective.num_samples if num_samples is None else num_samples
        if self.cfg.model.compute_dtype == "float32":
            return self.family.terms(self.model, params, batch, key, n)
        # mixed precision: bf16 parameters and inputs in the forward/backward pass (the cast's
        # gradient returns float32 to the float32 parameters); terms back in float32
        low = sharding.compute_dtype(self.cfg.model.compute_dtype)
        terms = self.family.terms(self.model, sharding.cast_floating(params, low),
                                  sharding.cast_floating(batch, low), key, n)
        return sharding.cast_floating(terms, jnp.float32)

    def loss_fn(self, params, batch: dict[str, jax.Array], key: jax.Array, step: jax.Array,
                hp: dict[str, jax.Array]):
        terms = self.terms(params, batch, key)
        loss, logged = objectives.training_loss(terms, step, hp, self.cfg.objective)
        return loss, (terms, logged)

    def train_step(self, state: TrainState, batch: dict[str, jax.Array],
                   hp: dict[str, jax.Array]) -> tuple[TrainState, dict]:
        """One optimizer step on a batch of [0, 1] images (``batch['image']``)."""
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        batch = dict(batch, image=self.prepare(batch["image"], stream(key, "binarize")))
        (loss, (terms, logged)), grads = jax.value_and_grad(self.loss_fn, has_aux=True)(
            state.params, batch, stream(key, "noise"), state.step, hp)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        updates = jax.tree.map(lambda u: -hp["learning_rate"] * u, updates)
        params = optax.apply_updates(state.params, updates)
        params, model_state = self.family.post_update(self.model, params, state.model_state, terms)
        # per-example terms -> batch means; kl_per_dim stays a vector; "log_w" and "_private"
        # entries (e.g. VQ codebook statistics for post_update) are not metrics
        metrics = {"loss": loss, **logged}
        for k, v in terms.items():
            if k != "log_w" and not k.startswith("_"):
                metrics[k] = jnp.mean(v, axis=0) if k == "kl_per_dim" else jnp.mean(v)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                             model_state=model_state), metrics

    def data_key(self) -> jax.Array:
        """Raw key data of the data-order stream (``data.shuffle_seed``, default ``seed``)."""
        seed = self.cfg.data.shuffle_seed if self.cfg.data.shuffle_seed >= 0 else self.cfg.seed
        return jax.random.key_data(stream(jax.random.key(seed), "shuffle"))

    def train_epoch(self, state: TrainState, hp: dict[str, jax.Array], images: jax.Array,
                    labels: jax.Array | None, epoch: jax.Array,
                    data_key: jax.Array) -> tuple[TrainState, dict]:
        """All steps of one epoch as a single ``lax.scan``: shuffle on device with
        ``fold_in(data_key, epoch)``, gather each batch, step. Returns per-step metrics (arrays
        with a leading [steps] axis)."""
        n = images.shape[0]
        bs = self.cfg.train.batch_size
        steps = n // bs
        perm = jax.random.permutation(jax.random.fold_in(jax.random.wrap_key_data(data_key), epoch), n)
        idx = perm[: steps * bs].reshape(steps, bs)

        def body(st, i):
            batch = {"image": images[i]}
            if labels is not None:
                batch["label"] = labels[i]
            return self.train_step(st, sharding.constrain_batch(batch, self.mesh), hp)

        return jax.lax.scan(body, state, idx)


def _check_finite(metrics: dict[str, np.ndarray], first_step: int) -> None:
    for name in ("loss", "recon", "kl", "elbo"):
        bad = ~np.isfinite(metrics[name])
        if bad.any():
            i = int(np.argmax(bad))
            raise NonFiniteLossError(
                f"non-finite {name}={metrics[name][i]} at step {first_step + i + 1}; the last good "
                f"checkpoint is kept (lower optim.learning_rate or set optim.grad_clip_norm)")


def _device_data(ds: data.Dataset, mesh=None) -> tuple[jax.Array, jax.Array | None]:
    """The training set on the devices (replicated over ``mesh``, each process contributing its
    slice: ``sharding.global_array``)."""
    if mesh is None:
        labels = None if ds.train_labels is None else jnp.asarray(ds.train_labels, jnp.int32)
        return jnp.asarray(ds.train_images, jnp.float32), labels
    labels = None if ds.train_labels is None else sharding.global_array(
        np.asarray(ds.train_labels, np.int32), mesh)
    return sharding.global_array(np.asarray(ds.train_images, np.float32), mesh), labels


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


def load_data(cfg: Config) -> data.Dataset:
    return data.load(cfg.data.name, train_split=cfg.data.train_split or None,
                     test_split=cfg.data.test_split or None, data_dir=cfg.data.data_dir or None,
                     manual_dir=cfg.data.manual_dir or None)


def _check_sizes(cfg: Config, ds: data.Dataset) -> int:
    n = len(ds.train_images)
    if cfg.train.batch_size > n:
        raise ConfigError(f"config.train.batch_size={cfg.train.batch_size}: larger than the "
                          f"{n} training images of {ds.name} ({ds.train_split})")
    return n // cfg.train.batch_size


def _write_config(cfg: Config, workdir: str) -> None:
    path = os.path.join(workdir, "config.json")
    new = cfg.to_dict()
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if json.loads(json.dumps(new)) != old:
            log.warning("config differs from the one stored in %s; continuing with the new one", path)
    with open(path, "w") as f:
        json.dump(new, f, indent=2, sort_keys=True)


def restore_or_init(ckpt: checkpoint.Checkpointer, target: Any, steps_per_epoch: int,
                    init: Callable[[], Any], what: str = "run") -> tuple[Any, int]:
    """(state, first epoch to train): the latest checkpoint restored into ``target`` (abstract
    arrays with their shardings), or ``init()`` at epoch 0 when there is none. A checkpoint that
    does not end on an epoch boundary is refused in one line."""
    restored = ckpt.restore_latest(target)
    if restored is None:
        return init(), 0
    step, state = restored
    if step % steps_per_epoch:
        raise checkpoint.CheckpointError(
            f"checkpoint step {step} in {ckpt.directory} is not a whole number of "
            f"{steps_per_epoch}-step epochs: train.batch_size or the data split changed")
    log.info("resumed %s from step %d (epoch %d)", what, step, step // steps_per_epoch)
    return state, step // steps_per_epoch


def train_and_evaluate(cfg: Config, workdir: str,
                       on_epoch_end: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Trains ``cfg`` in ``workdir``, resuming from its latest checkpoint; returns the final
    summary (also written to ``<workdir>/summary.json``). Runs on all devices of all processes
    (``config.mesh``); only process 0 writes logs, figures and JSON."""
    with sharding.matmul_precision(cfg.train.matmul_precision):
        return _train_and_evaluate(cfg, workdir, on_epoch_end)


def _train_and_evaluate(cfg: Config, workdir: str,
                        on_epoch_end: Callable[[int], None] | None) -> dict[str, Any]:
    main = sharding.is_main_process()
    os.makedirs(workdir, exist_ok=True)
    ds = load_data(cfg)
    steps_per_epoch = _check_sizes(cfg, ds)
    mesh, devices = setup_devices(cfg)
    exp = Experiment.build(cfg, ds.image_shape, mesh)
    if main:
        _write_config(cfg, workdir)

    ckpt = checkpoint.Checkpointer(workdir, cfg.train.keep_checkpoints)
    abstract = jax.eval_shape(exp.init_state)
    state_sh = sharding.state_shardings(abstract, mesh, cfg.mesh)
    state, start_epoch = restore_or_init(
        ckpt, sharding.with_shardings(abstract, state_sh), steps_per_epoch,
        lambda: jax.jit(exp.init_state, out_shardings=state_sh)())

    writer = MetricWriter(workdir, enabled=main)
    if start_epoch == 0:
        writer.write_hparams(dict(cfg.to_dict(), devices=devices), workdir)
    images, labels = _device_data(ds, mesh)
    evaluator = evaluate.TestELBO(exp, ds)

    t0 = time.perf_counter()
    rep = sharding.replicated(mesh)
    hp = jax.device_put(hyperparams(cfg), rep)
    data_key = jax.device_put(exp.data_key(), rep)
    ins, outs = epoch_shardings(mesh, state_sh, rep, labels)
    epoch_fn = jax.jit(exp.train_epoch, in_shardings=ins, out_shardings=outs,
                       donate_argnums=0).lower(state, hp, images, labels, jnp.int32(0),
                                               data_key).compile()
    compile_s = time.perf_counter() - t0

    summary: dict[str, Any] = {}
    bar = _progress(cfg, start_epoch)
    try:
        for epoch in range(start_epoch, cfg.train.num_epochs):
            t = time.perf_counter()
            first_step = epoch * steps_per_epoch
            new_state, metrics = epoch_fn(state, hp, images, labels, jnp.int32(epoch), data_key)
            metrics = sharding.to_host(metrics)
            seconds = time.perf_counter() - t
            _check_finite(metrics, first_step)
            state = new_state
            step = first_step + steps_per_epoch
            done = epoch + 1
            train = {k: float(np.mean(v)) for k, v in metrics.items() if k != "kl_per_dim"}
            train["images_per_s"] = steps_per_epoch * cfg.train.batch_size / seconds
            train["epoch"] = done
            if epoch == start_epoch:
                train["compile_s"] = compile_s
            writer.write(step, "train", train)
            writer.write(step, "train_kl_per_dim",
                         {f"z{d}": v for d, v in enumerate(np.mean(metrics["kl_per_dim"], 0))})
            if done % cfg.train.eval_every_epochs == 0 or done == cfg.train.num_epochs:
                summary = evaluator(state.params, step, done)
                writer.write(step, "test", summary)
            if done % cfg.train.checkpoint_every_epochs == 0 or done == cfg.train.num_epochs:
                ckpt.save(step, state)
            bar(done, train, summary)
            if on_epoch_end is not None:
                on_epoch_end(done)
    finally:
        writer.close()
        ckpt.close()

    if not summary:  # already finished earlier: evaluate the restored parameters
        summary = evaluator(state.params, int(state.step), cfg.train.num_epochs)
    if cfg.train.figures:  # process 0 alone; on host copies when the params span processes
        params = sharding.to_host(state.params) if jax.process_count() > 1 else state.params
        if main:
            evaluate.write_figures(exp, params, ds, os.path.join(workdir, "figures"))
    summary = dict(summary, step=int(state.step),
                   metadata=dict(evaluator.metadata(cfg.train.num_epochs),
                                 train_wall_s_this_process=round(time.perf_counter() - t0, 2),
                                 compile_s=round(compile_s, 2), devices=devices))
    if main:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary


def evaluate_workdir(cfg: Config, workdir: str) -> dict[str, Any]:
    """Restores the latest checkpoint of ``workdir``, runs the evaluators named in
    ``cfg.eval.evaluators`` and writes ``eval.json`` and ``figures/``."""
    evaluate.check_names(cfg.eval.evaluators)  # a wrong name fails before anything loads
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        raise checkpoint.CheckpointError(f"no checkpoints in {workdir}: train there first")
    ds = load_data(cfg)
    exp = Experiment.build(cfg, ds.image_shape)
    ckpt = checkpoint.Checkpointer(workdir, cfg.train.keep_checkpoints)
    restored = ckpt.restore_latest(jax.eval_shape(exp.init_state))
    ckpt.close()
    if restored is None:
        raise checkpoint.CheckpointError(f"no checkpoints in {ckpt_dir}: train there first")
    step, state = restored
    out = evaluate.run(exp, ds, state.params, step, step // _check_sizes(cfg, ds), workdir)
    with open(os.path.join(workdir, "eval.json"), "w") as f:
        json.dump(out, f, indent=2)
    return out


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
