"""The second training stage of a spatial VQ-VAE (van den Oord et al. 2017, section 4): a gated
PixelCNN prior p(c) = Π_ij p(c_ij | c_<ij) over the grid of codes c that the trained encoder
gives each image, so that samples decode codes drawn from the learned prior instead of the
uniform one the first stage trains under.

    python -m vae_jax.main --config CONFIG --workdir RUN --mode train   # stage 1: the VQ-VAE
    python -m vae_jax.main --config CONFIG --workdir RUN --mode prior   # stage 2: the prior

Stage 2 restores stage 1's latest checkpoint from ``RUN/checkpoints`` (stage 1 must have
finished: ``RUN/summary.json``), encodes the training and test splits once into code grids and
trains the prior on the training codes in ``RUN/prior/`` (its own Orbax checkpoints, one per
epoch, ``metrics.jsonl``, ``summary.json``, figures); re-running resumes from its latest
checkpoint. The prior is trained by its own small compiled loop (one ``lax.scan`` per epoch of
Adam steps on the mean negative log-likelihood per code) rather than through
``Experiment``/``Family``: it fits fixed integer codes, not images, and has no ELBO terms,
binarization or auxiliary networks; checkpoints, the data order (``data.epoch_order``), metric
files and the workdir lock are the shared ones. Settings: ``model.vqvae.prior_*``.

Reported (``prior/summary.json``): the prior's test-set bits per code, −log₂ p(c) / (h·w)
averaged over test images, beside log₂ K (the uniform prior); 64 codes drawn from the prior and
64 uniform ones, each scored in bits per code under the trained prior; figures of both decoded
(``samples_prior_vs_uniform.png``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vae_jax import checkpoint, data, estimators, evaluate, experiment, lock, pixelcnn, plots
from vae_jax.config import Config, ConfigError
from vae_jax.metrics import MetricWriter
from vae_jax.rng import stream

log = logging.getLogger(__name__)

PRIOR_DIR = "prior"
NUM_SAMPLES = 64  # codes drawn from each prior for the figure and the comparison


@flax.struct.dataclass
class PriorState:
    step: jax.Array  # int32: optimizer steps taken
    params: Any
    opt_state: Any


def build(cfg: Config) -> pixelcnn.GatedPixelCNN:
    v = cfg.model.vqvae
    return pixelcnn.GatedPixelCNN(v.prior_channels, v.prior_layers, v.prior_kernel,
                                  out_features=v.num_codes, num_classes=v.num_codes,
                                  conv_impl=cfg.model.conv_impl)


def optimizer(cfg: Config) -> optax.GradientTransformation:
    return optax.adam(cfg.model.vqvae.prior_learning_rate)


def init_state(cfg: Config, grid: tuple[int, int]) -> PriorState:
    """The prior's parameters (from ``fold_in``-named stream 'prior_init' of the run's seed) and
    optimizer state at step 0, for code grids of shape ``grid``."""
    p = build(cfg).init(stream(jax.random.key(cfg.seed), "prior_init"),
                        jnp.zeros((1, *grid), jnp.int32))["params"]
    return PriorState(jnp.zeros((), jnp.int32), p, optimizer(cfg).init(p))


def log_prob(net: pixelcnn.GatedPixelCNN, params, codes: jax.Array) -> jax.Array:
    """log p(c) in nats for code grids [B, h, w] -> [B]."""
    return pixelcnn.categorical_log_prob(net.apply({"params": params}, codes), codes)


def bits_per_code(net, params, codes: np.ndarray, batch_size: int = 500) -> float:
    """Mean over the grids [N, h, w] of −log₂ p(c) / (h·w)."""
    fn = jax.jit(lambda p, c: log_prob(net, p, c))
    total = sum(float(jnp.sum(fn(params, jnp.asarray(codes[i:i + batch_size]))))
                for i in range(0, len(codes), batch_size))
    return -total / (len(codes) * math.prod(codes.shape[1:]) * math.log(2.0))


def sample(net, params, key: jax.Array, n: int, grid: tuple[int, int]) -> jax.Array:
    """n code grids from the prior by ancestral sampling, [n, h, w] int32."""
    return pixelcnn.ancestral_sample(lambda c: net.apply({"params": params}, c), key,
                                     jnp.zeros((n, *grid), jnp.int32), pixelcnn.draw_categorical)


def encode_codes(exp, params, images: jax.Array, batch_size: int) -> np.ndarray:
    """The stage-1 encoder's code grids [N, h, w] for prepared images [N, H, W, C]."""
    model = exp.model
    fn = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode_indices))
    return np.concatenate([np.asarray(fn(params, images[i:i + batch_size]))
                           for i in range(0, len(images), batch_size)]).astype(np.int32)


def check(cfg: Config) -> None:
    if cfg.model.family != "vqvae" or not cfg.model.vqvae.spatial:
        raise ConfigError(f"config.model.family={cfg.model.family!r}: --mode prior trains a prior "
                          f"over a grid of codes; it needs family 'vqvae' with model.vqvae.spatial=True")
    if cfg.population.members:
        raise ConfigError("config.population.members: --mode prior trains the prior of a single run")


def train_prior(cfg: Config, workdir: str, on_epoch_end: Callable[[int], None] | None = None
                ) -> dict[str, Any]:
    """Stage 2 in ``workdir/prior`` (see the module docstring); returns its summary."""
    check(cfg)
    if not os.path.exists(os.path.join(workdir, "summary.json")):
        raise checkpoint.CheckpointError(f"stage 1 has not finished in {workdir} (no summary.json): "
                                         f"run --mode train there first")
    folder = os.path.join(workdir, PRIOR_DIR)
    os.makedirs(folder, exist_ok=True)
    with lock.WorkdirLock(folder):
        return _train_prior(cfg, workdir, folder, on_epoch_end)


def _train_prior(cfg, workdir, folder, on_epoch_end):
    v = cfg.model.vqvae
    r = experiment.restore(cfg, workdir)
    exp, vq_params, ds = r.experiments[0], r.params(0), r.dataset
    base = jax.random.key(cfg.seed)
    train_x = exp.prepare(jnp.asarray(ds.train_images, jnp.float32), stream(base, "prior_codes"))
    train_codes = encode_codes(exp, vq_params, train_x, cfg.eval.batch_size)
    test_codes = encode_codes(exp, vq_params, estimators.test_images(exp, ds), cfg.eval.batch_size)
    grid = tuple(train_codes.shape[1:])
    n, per = len(train_codes), math.prod(grid)
    if v.prior_batch_size > n:
        raise ConfigError(f"config.model.vqvae.prior_batch_size={v.prior_batch_size}: larger than the "
                          f"{n} training images")
    steps_per_epoch = n // v.prior_batch_size

    net, tx = build(cfg), optimizer(cfg)
    init = lambda: init_state(cfg, grid)  # noqa: E731

    ckpt = checkpoint.Checkpointer(folder, cfg.train.keep_checkpoints)
    for path in ckpt.remove_partial():
        log.warning("removed %s, the remains of an interrupted save", path)
    restored = ckpt.restore_latest(jax.eval_shape(init))
    state, start = (init(), 0) if restored is None else (restored[1], restored[0])
    if start % steps_per_epoch:
        raise checkpoint.CheckpointError(f"prior checkpoint step {start} in {ckpt.directory} is not a "
                                         f"whole number of {steps_per_epoch}-step epochs: "
                                         f"model.vqvae.prior_batch_size or the data split changed")
    if start:
        log.info("resumed the prior from step %d (epoch %d)", start, start // steps_per_epoch)
    evaluate.write_json(os.path.join(folder, "config.json"), cfg.to_dict())
    data_key = jax.random.key_data(stream(base, "prior_shuffle"))

    def loss_fn(params, codes):
        return -jnp.mean(log_prob(net, params, codes)) / per  # nats per code

    @jax.jit
    def run_epoch(st: PriorState, codes: jax.Array, epoch: jax.Array):
        idx = data.epoch_order(data_key, epoch, codes.shape[0], v.prior_batch_size)

        def body(s, i):
            loss, g = jax.value_and_grad(loss_fn)(s.params, codes[i])
            upd, opt = tx.update(g, s.opt_state, s.params)
            return PriorState(s.step + 1, optax.apply_updates(s.params, upd), opt), loss

        return jax.lax.scan(body, st, idx)

    writer = MetricWriter(folder, resume_step=start)
    codes_dev = jnp.asarray(train_codes)
    t0 = time.perf_counter()
    try:
        for epoch in range(start // steps_per_epoch, v.prior_epochs):
            state, losses = run_epoch(state, codes_dev, jnp.int32(epoch))
            step = int(state.step)
            nats = float(jnp.mean(losses))
            if not math.isfinite(nats):
                raise experiment.NonFiniteLossError(f"prior: non-finite loss {nats} in epoch {epoch + 1}; the "
                                         f"last good checkpoint is kept")
            writer.write(step, "train", {"bits_per_code": nats / math.log(2.0)})
            writer.write(step, "test", {"bits_per_code": bits_per_code(net, state.params, test_codes)})
            ckpt.save(step, state)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1)
    finally:
        writer.close()
        ckpt.close()
    wall = time.perf_counter() - t0

    params = state.params
    key = stream(base, "prior_samples")
    learned = np.asarray(jax.jit(lambda p, k: sample(net, p, k, NUM_SAMPLES, grid))(params, key))
    uniform = np.asarray(jax.random.randint(stream(base, "uniform_samples"), (NUM_SAMPLES, *grid),
                                            0, v.num_codes), np.int32)
    decode = jax.jit(lambda p, c: data.to_unit(estimators.decode_mean(exp, p, c), cfg.data.scale))
    fig = plots.image_grids([(np.asarray(decode(vq_params, jnp.asarray(learned))), "PixelCNN prior"),
                             (np.asarray(decode(vq_params, jnp.asarray(uniform))), "uniform prior")],
                            8, 8, os.path.join(folder, "figures", "samples_prior_vs_uniform.png"),
                            "VQ-VAE samples: codes from each prior, decoded")
    summary = {
        "step": int(state.step),
        "test_bits_per_code": bits_per_code(net, params, test_codes),
        "uniform_bits_per_code": math.log2(v.num_codes),
        "train_bits_per_code": bits_per_code(net, params, train_codes),
        "prior_samples_bits_per_code": bits_per_code(net, params, learned),
        "uniform_samples_bits_per_code": bits_per_code(net, params, uniform),
        "test_codes_used": int(len(np.unique(test_codes))),
        "figures": [os.path.basename(fig)],
        "metadata": dict(estimators.common_metadata(exp, ds, r.step // experiment.steps_per_epoch(cfg, ds)),
                         stage1_step=r.step, grid=list(grid), num_codes=v.num_codes,
                         prior=f"gated PixelCNN {v.prior_layers} layers x {v.prior_channels} channels, "
                               f"kernel {v.prior_kernel}", prior_epochs=v.prior_epochs,
                         prior_batch_size=v.prior_batch_size, prior_learning_rate=v.prior_learning_rate,
                         num_train_codes=n, num_samples=NUM_SAMPLES, prior_train_wall_s_this_process=round(wall, 2),
                         estimator="bits per code = -log2 p(c) / (h*w), exact under the autoregressive prior, "
                                   "averaged over images"),
    }
    evaluate.write_json(os.path.join(folder, "summary.json"), summary)
    return summary
