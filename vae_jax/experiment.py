"""What a run computes: the train state, the batchable hyperparameters, the optimizer, the
experiment (model, objective, device-side preparation, the compiled step and epoch), the
population's epoch, and restoring a workdir's latest checkpoint.

Randomness: one base key per run (``jax.random.key(config.seed)``), stored in the state as raw
key data. Inside the compiled step the key is ``fold_in(base, step)``, split into named streams
(``"noise"`` for the reparameterization ε, ``"binarize"`` for dynamic binarization); shuffling uses
``fold_in(stream(key(data.shuffle_seed), "shuffle"), epoch)`` (shuffle_seed defaults to the seed;
members of a population share it). Nothing is split on the host, so a resumed run draws exactly
the numbers an uninterrupted one would.

A population (``config.population.members``) trains members that differ only in batchable
fields and the seed in one compiled program: their states are stacked along a leading member
axis and the epoch is :meth:`Experiment.train_epoch` under ``jax.vmap`` ('vmap': members step in
lockstep, each dense layer one batched matmul) or ``lax.map`` ('map': the members' epochs one
after another inside the compiled call, each bit for bit its single run; with the members split
over the mesh's 'members' axis, ``shard_map`` runs the device rows side by side).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax

from vae_jax import checkpoint, data, models, objectives, sharding
from vae_jax.config import Config, ConfigError, OptimConfig, batchable_paths, member_configs
from vae_jax.rng import stream


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf; the message names the step and the metric."""


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any
    opt_state: Any
    rng: jax.Array  # raw key data of the run's base key (uint32), so Orbax can store it
    model_state: Any = flax.struct.field(default_factory=dict)  # non-gradient state (VQ EMA)
    aux: Any = flax.struct.field(default_factory=dict)  # auxiliary networks: {name: params, opt_state}


def _get(cfg: Any, path: str) -> Any:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def hyperparams(cfg: Config) -> dict[str, jax.Array]:
    """Every batchable field of ``cfg`` (``config.batchable``) as a float32 scalar, keyed by the
    field's name: the values that enter the compiled step as arrays."""
    return {p.rsplit(".", 1)[-1]: jnp.asarray(_get(cfg, p), jnp.float32) for p in batchable_paths(cfg)}


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
    if cfg.skip_grad_norm > 0:
        opt = skip_large_gradients(opt, cfg.skip_grad_norm)
    return opt


class SkipState(NamedTuple):
    inner: Any  # the wrapped transformation's state, unchanged by a skipped step
    skipped: jax.Array  # int32: steps skipped so far


def gradient_skipped(grads: Any, threshold: float) -> jax.Array:
    """True when the global norm of ``grads`` exceeds ``threshold`` or is not finite."""
    return ~(optax.tree.norm(grads) <= threshold)


def skip_large_gradients(inner: optax.GradientTransformation,
                         threshold: float) -> optax.GradientTransformation:
    """``inner``, except that a step whose gradient has a global norm above ``threshold`` (or a
    non-finite one) gives zero updates and leaves ``inner``'s state as it was, as if the batch
    had not been seen (VDVAE's update skipping, Child 2021). Skips are counted in the state."""

    def init(params):
        return SkipState(inner.init(params), jnp.zeros((), jnp.int32))

    def update(grads, state, params=None):
        skip = gradient_skipped(grads, threshold)
        updates, new_inner = inner.update(grads, state.inner, params)
        updates = jax.tree.map(lambda u: jnp.where(skip, jnp.zeros_like(u), u), updates)
        kept = jax.tree.map(lambda new, old: jnp.where(skip, old, new), new_inner, state.inner)
        return updates, SkipState(kept, state.skipped + skip.astype(jnp.int32))

    return optax.GradientTransformation(init, update)


# Burda et al. (2015): stage i = 0…7 lasts 3^i passes at learning_rate · 10^(−i/7)
BURDA_STAGE_EPOCHS = tuple(3 ** i for i in range(8))


def learning_rate_factor(schedule: str, epoch: jax.Array) -> jax.Array:
    """The multiplier of ``optim.learning_rate`` in (0-based) training pass ``epoch``, defined
    for every epoch whatever ``train.num_epochs`` is (a shorter run follows the first passes of
    the full schedule): 'constant' 1; 'burda' 10^(−i/7) in stage i, stage i covering passes
    [Σ_{j<i} 3^j, Σ_{j≤i} 3^j), i = 0…7 (3,280 passes), then the last stage's rate."""
    if schedule == "constant":
        return jnp.ones((), jnp.float32)
    if schedule == "burda":
        ends = jnp.cumsum(jnp.asarray(BURDA_STAGE_EPOCHS, jnp.int32))  # 1, 4, 13, …, 3280
        stage = jnp.minimum(jnp.sum(jnp.asarray(epoch, jnp.int32) >= ends), len(BURDA_STAGE_EPOCHS) - 1)
        return jnp.power(jnp.float32(10.0), -stage.astype(jnp.float32) / 7.0)
    raise ValueError(f"unknown learning-rate schedule {schedule!r}")  # validated in config


def _dummy(image_shape) -> dict[str, jax.Array]:
    return {"image": jnp.zeros((1, *image_shape), jnp.float32), "label": jnp.zeros((1,), jnp.int32)}


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything built from a config and a dataset's shape: model, objective, optimizer."""

    cfg: Config
    family: models.Family
    model: Any
    tx: optax.GradientTransformation
    image_shape: tuple[int, int, int]
    mesh: Any = None  # a jax.sharding.Mesh: the epoch splits each batch over its 'data' axis
    auxiliaries: tuple[tuple[str, models.Auxiliary], ...] = ()
    num_train: int = 0  # training images (0 = unknown): the dataset size N of the objective

    @classmethod
    def build(cls, cfg: Config, image_shape: tuple[int, int, int], mesh: Any = None,
              num_train: int = 0) -> "Experiment":
        """``num_train``: the training split's size, which objectives that estimate the
        aggregate posterior (β-TCVAE) need; evaluation may leave it 0."""
        family = models.get(cfg.model.family)
        if cfg.objective.name == "beta_tcvae" and num_train and (
                cfg.objective.tc_estimator == "mss" and num_train < cfg.train.batch_size):
            raise ConfigError(f"config.objective.tc_estimator='mss': needs at least "
                              f"train.batch_size={cfg.train.batch_size} training images, got {num_train}")
        if cfg.model.network == "conv":
            down = 2 ** sum(1 for s in cfg.model.conv_strides if s == 2)
            if image_shape[0] % down or image_shape[1] % down:
                raise ConfigError(
                    f"config.model.conv_strides={cfg.model.conv_strides!r}: downsample by {down}, "
                    f"which does not divide the {image_shape[0]}x{image_shape[1]} images of "
                    f"{cfg.data.name}")
        return cls(cfg, family, family.build(cfg, image_shape), make_optimizer(cfg.optim),
                   tuple(image_shape), mesh, tuple(family.auxiliaries(cfg).items()), num_train)

    def init_state(self, seed: jax.Array | int | None = None) -> TrainState:
        base = jax.random.key(self.cfg.seed if seed is None else seed)
        dummy = _dummy(self.image_shape)
        params = self.family.init(self.model, {"params": stream(base, "init"),
                                               "noise": stream(base, "init_noise")}, dummy)
        aux = {}
        for name, a in self.auxiliaries:
            p = a.init(stream(base, f"init_{name}"), dummy)
            aux[name] = {"params": p, "opt_state": a.optimizer.init(p)}
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=self.tx.init(params), rng=jax.random.key_data(base),
                          model_state=self.family.init_state(self.model, params), aux=aux)

    def prepare(self, x: jax.Array, key: jax.Array) -> jax.Array:
        """Device-side preprocessing of a batch of [0, 1] images: binarize, then scale."""
        return data.prepare(x, key, self.cfg.data)

    def terms(self, params, batch: dict[str, jax.Array], key: jax.Array,
              num_samples: int | None = None, aux: Any = None) -> dict[str, jax.Array]:
        """Per-example objective terms of a prepared batch under ``params``."""
        n = self.cfg.objective.num_samples if num_samples is None else num_samples
        if self.cfg.model.compute_dtype == "float32":
            return self.family.terms(self.model, params, batch, key, n, aux)
        # mixed precision: bf16 parameters and inputs in the forward/backward pass (the cast's
        # gradient returns float32 to the float32 parameters); terms back in float32
        low = sharding.compute_dtype(self.cfg.model.compute_dtype)
        terms = self.family.terms(self.model, sharding.cast_floating(params, low),
                                  sharding.cast_floating(batch, low), key, n, aux)
        return sharding.cast_floating(terms, jnp.float32)

    def loss_fn(self, params, batch: dict[str, jax.Array], key: jax.Array, step: jax.Array,
                hp: dict[str, jax.Array], aux: Any = None):
        terms = self.terms(params, batch, key, aux=aux)
        if self.num_train:
            hp = dict(hp, dataset_size=jnp.float32(self.num_train))
        loss, logged = objectives.training_loss(terms, step, hp, self.cfg.objective)
        return loss, (terms, logged)

    def train_step(self, state: TrainState, batch: dict[str, jax.Array],
                   hp: dict[str, jax.Array], steps_per_epoch: int | None = None
                   ) -> tuple[TrainState, dict]:
        """One optimizer step on a batch of [0, 1] images (``batch['image']``), then one step of
        every auxiliary network on its own loss (given the model's terms of this step).
        ``steps_per_epoch`` (static; :meth:`train_epoch` passes it) places the step in its
        training pass for a learning-rate schedule other than 'constant'."""
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        batch = dict(batch, image=self.prepare(batch["image"], stream(key, "binarize")))
        aux_params = {n: a["params"] for n, a in state.aux.items()} or None
        (loss, (terms, logged)), grads = jax.value_and_grad(self.loss_fn, has_aux=True)(
            state.params, batch, stream(key, "noise"), state.step, hp,
            jax.lax.stop_gradient(aux_params))
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        metrics = {"loss": loss, **logged}
        lr = hp["learning_rate"]
        if self.cfg.optim.schedule != "constant":
            if steps_per_epoch is None:
                raise ValueError(f"config.optim.schedule={self.cfg.optim.schedule!r}: train_step "
                                 f"needs steps_per_epoch")
            lr = lr * learning_rate_factor(self.cfg.optim.schedule, state.step // steps_per_epoch)
            metrics["learning_rate"] = lr
        if self.cfg.optim.skip_grad_norm > 0:
            metrics["grad_norm"] = optax.tree.norm(grads)
            metrics["grad_skipped"] = gradient_skipped(grads, self.cfg.optim.skip_grad_norm
                                                       ).astype(jnp.float32)
        updates = jax.tree.map(lambda u: -lr * u, updates)
        params = optax.apply_updates(state.params, updates)
        params, model_state = self.family.post_update(self.model, params, state.model_state, terms)
        aux = {}
        for name, a in self.auxiliaries:
            p = state.aux[name]["params"]
            a_loss, g = jax.value_and_grad(a.loss)(p, batch, jax.lax.stop_gradient(terms),
                                                   stream(key, f"aux_{name}"))
            upd, a_opt = a.optimizer.update(g, state.aux[name]["opt_state"], p)
            aux[name] = {"params": optax.apply_updates(p, upd), "opt_state": a_opt}
            metrics[f"{name}_loss"] = a_loss
        # per-example terms -> batch means; kl_per_dim stays a vector; "log_w" and "_private"
        # entries (e.g. VQ codebook statistics for post_update) are not metrics
        for k, v in terms.items():
            if k != "log_w" and not k.startswith("_"):
                metrics[k] = jnp.mean(v, axis=0) if k == "kl_per_dim" else jnp.mean(v)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                             model_state=model_state, aux=aux), metrics

    def data_key(self) -> jax.Array:
        """Raw key data of the data-order stream (``data.shuffle_seed``, default ``seed``)."""
        seed = self.cfg.data.shuffle_seed if self.cfg.data.shuffle_seed >= 0 else self.cfg.seed
        return jax.random.key_data(stream(jax.random.key(seed), "shuffle"))

    def train_epoch(self, state: TrainState, hp: dict[str, jax.Array], images: jax.Array,
                    labels: jax.Array | None, epoch: jax.Array,
                    data_key: jax.Array) -> tuple[TrainState, dict]:
        """All steps of one epoch as a single ``lax.scan``: shuffle on device with
        ``data.epoch_order`` (``fold_in(data_key, epoch)``), gather each batch, step. Returns
        per-step metrics (arrays with a leading [steps] axis)."""
        idx = data.epoch_order(data_key, epoch, images.shape[0], self.cfg.train.batch_size)
        steps = idx.shape[0]

        def body(st, i):
            batch = {"image": images[i]}
            if labels is not None:
                batch["label"] = labels[i]
            return self._scan_step(st, batch, hp, steps)

        return jax.lax.scan(body, state, idx)

    def train_steps(self, state: TrainState, hp: dict[str, jax.Array], batches: dict[str, jax.Array],
                    steps_per_epoch: int) -> tuple[TrainState, dict]:
        """The streamed counterpart of :meth:`train_epoch`: a ``lax.scan`` of the same step over
        host-fed batches ([K, batch, ...] arrays, in the order ``data.epoch_order`` gives), so a
        streamed run computes what the on-device one does."""
        return jax.lax.scan(lambda st, b: self._scan_step(st, b, hp, steps_per_epoch), state, batches)

    def _scan_step(self, state, batch, hp, steps_per_epoch):
        return self.train_step(state, sharding.constrain_batch(batch, self.mesh), hp, steps_per_epoch)


def load_data(cfg: Config) -> data.Dataset:
    d = cfg.data
    return data.load(d.name, train_split=d.train_split or None, test_split=d.test_split or None,
                     data_dir=d.data_dir or None, manual_dir=d.manual_dir or None,
                     path=d.path or None, image_size=d.image_size, crop=d.crop,
                     channels=d.channels, storage=d.storage, test_fraction=d.test_fraction,
                     num_train=d.num_train, num_test=d.num_test)


def steps_per_epoch(cfg: Config, ds: data.Dataset) -> int:
    n = len(ds.train_images)
    if cfg.train.batch_size > n:
        raise ConfigError(f"config.train.batch_size={cfg.train.batch_size}: larger than the "
                          f"{n} training images of {ds.name} ({ds.train_split})")
    return n // cfg.train.batch_size


# ----------------------------------------------------------------------------------------------
# Populations


def stack_hyperparams(members: list[Config]) -> dict[str, jax.Array]:
    """``hyperparams`` of every member stacked along a leading member axis."""
    return jax.tree.map(lambda *a: jnp.stack(a), *[hyperparams(m) for m in members])


def seeds(members: list[Config]) -> jax.Array:
    return jnp.asarray([m.seed for m in members], jnp.int32)


def init_fn(exp: Experiment) -> Callable[[jax.Array], TrainState]:
    """Seeds [M] -> a TrainState whose every leaf has a leading member axis."""
    return jax.vmap(exp.init_state)


def resolve_strategy(strategy: str, data_shards: int = 1) -> str:
    """'auto' -> 'map' on CPU (XLA:CPU's batched matmuls are slower per FLOP than plain ones,
    and a scanned single run has no per-step overhead left to amortize), 'vmap' on accelerators
    and whenever a batch is split over devices (``data_shards`` > 1). 'map' runs each member on
    whole batches, so it needs ``data_shards`` = 1 (the members may be split over device rows)."""
    if strategy == "auto":
        return "map" if jax.default_backend() == "cpu" and data_shards == 1 else "vmap"
    if strategy == "map" and data_shards > 1:
        raise ConfigError(f"config.population.strategy='map': runs each member on whole batches, "
                          f"so it cannot split them over config.mesh.data={data_shards} devices; "
                          f"use 'vmap' or config.mesh.data=1")
    return strategy


def epoch_fn(exp: Experiment, strategy: str = "vmap", mesh: Any = None):
    """The population's epoch ``(states, hps, images, labels, epoch, data_key) -> (states,
    metrics)``, states, hps and metrics with a leading member axis; images, labels, epoch and data
    key are shared (one data order). Jit it with the states donated.

    'vmap' batches the members' matmuls, whose summation order differs from a single run's, so
    members agree with their single runs to float rounding, which training amplifies. 'map' is
    bit for bit the single runs."""
    member_shards = 1 if mesh is None else mesh.shape["members"]
    data_shards = 1 if mesh is None else mesh.shape["data"]
    strategy = resolve_strategy(strategy, data_shards)
    if strategy == "vmap":
        return jax.vmap(exp.train_epoch, in_axes=(0, 0, None, None, None, None))
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


# ----------------------------------------------------------------------------------------------
# Restoring a workdir


def members_of(cfg: Config) -> tuple[list[Config], bool]:
    """(the member configs, whether the state has a member axis): a single run is a population
    of one whose state has none."""
    members = member_configs(cfg)
    return (members, True) if members else ([cfg], False)


def abstract_state(exp: Experiment, members: list[Config], stacked: bool) -> Any:
    """Shapes and dtypes of the run's state (with a member axis when ``stacked``)."""
    return jax.eval_shape(init_fn(exp), seeds(members)) if stacked else jax.eval_shape(exp.init_state)


class Restored(NamedTuple):
    experiments: list[Experiment]  # one per member
    dataset: data.Dataset
    step: int
    state: TrainState  # with a leading member axis for populations

    def params(self, i: int = 0) -> Any:
        """Member ``i``'s parameters (a population's state has a step per member)."""
        return member(self.state.params, i) if self.state.step.ndim else self.state.params


def restore(cfg: Config, workdir: str, ds: data.Dataset | None = None) -> Restored:
    """The latest checkpoint of ``workdir`` (a single run or a population) with its experiments
    and dataset; ``CheckpointError`` in one line when there is none."""
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise checkpoint.CheckpointError(f"no checkpoints in {workdir}: train there first")
    ds = load_data(cfg) if ds is None else ds
    members, stacked = members_of(cfg)
    exps = [Experiment.build(m, ds.image_shape) for m in members]
    ckpt = checkpoint.Checkpointer(workdir, cfg.train.keep_checkpoints)
    try:
        restored = ckpt.restore_latest(abstract_state(exps[0], members, stacked))
    finally:
        ckpt.close()
    if restored is None:
        raise checkpoint.CheckpointError(f"no checkpoints in {workdir}: train there first")
    return Restored(exps, ds, restored[0], restored[1])
