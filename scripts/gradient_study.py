"""Gradient-estimator study (seeds 000, 002, 003): at a checkpoint, the variance of the ELBO
gradient with respect to the encoder parameters under the reparameterization estimator and under
the score-function (REINFORCE) estimator, without and with a leave-one-out baseline, for several
numbers of samples L per image.

    python scripts/gradient_study.py --config configs/quickstart.py --workdir runs/quickstart \\
        [--samples 1,4,16,64] [--replicates 200] [--batch 100] [--out DIR]

The gradient is that of the batch-mean ELBO of the first ``--batch`` test images (as the model
sees them) with respect to every parameter except the decoder's, the KL in closed form in every
estimator, so all three estimate the same vector and differ only in how they handle
∇_φ E_q[log p(x|z)]:

- reparameterization: ∇_φ (1/L) Σ_l log p(x | μ + σ ⊙ ε_l);
- score_function:     (1/L) Σ_l log p(x | z_l) ∇_φ log q(z_l | x), z_l ~ q held fixed;
- score_function_loo: the same with log p(x | z_l) − b_l, b_l the mean of the other L − 1
  samples' log p(x | z) for that image (for L = 1: the mean over the other images of the batch);
  b_l does not depend on z_l, so the estimator stays unbiased.

Each estimator is drawn ``--replicates`` times with independent keys; the reported variance is
the trace of the covariance (the sum over encoder parameters of the per-coordinate variance).
Writes ``gradient_variance.csv``, ``gradient_variance.md`` and ``gradient_variance_ratio.png``
(log scale) into ``--out`` (default ``<workdir>/gradient_study``) and prints the ratios.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import sys
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax.flatten_util import ravel_pytree
from ml_collections import config_flags

from vae_jax import checkpoint, config, data, estimators, experiment, likelihoods, objectives, plots
from vae_jax.rng import stream

ESTIMATORS = ("reparameterization", "score_function", "score_function_loo")


def gradient_fn(exp, estimator: str, num_samples: int):
    """(encoder params, decoder params, images, key) -> one draw of the flattened gradient of the
    batch-mean ELBO with respect to the encoder params under ``estimator``."""
    model, lik, L = exp.model, likelihoods.from_config(exp.cfg.model), num_samples

    def surrogate(enc, dec, x, key):
        params = dict(enc, decoder=dec)
        mu, logvar = model.apply({"params": params}, x, method=model.encode)
        eps = jax.random.normal(key, (L, *mu.shape), mu.dtype)
        z = mu + jnp.exp(0.5 * logvar) * eps
        kl = jnp.sum(objectives.gaussian_kl(mu, logvar), -1)

        def log_px(z):
            out = model.apply({"params": params}, z.reshape(-1, z.shape[-1]), method=model.decode)
            return lik.log_prob(out.reshape(L, *x.shape[:-1], -1), x)  # [L, B]

        if estimator == "reparameterization":
            return jnp.mean(jnp.mean(log_px(z), 0) - kl)
        z = jax.lax.stop_gradient(z)
        f = jax.lax.stop_gradient(log_px(z))
        log_q = -0.5 * jnp.sum(jnp.square(z - mu) * jnp.exp(-logvar) + logvar + math.log(2 * math.pi), -1)
        if estimator == "score_function_loo":
            if L > 1:
                f = f - (jnp.sum(f, 0, keepdims=True) - f) / (L - 1)
            else:
                f = f - (jnp.sum(f, 1, keepdims=True) - f) / (f.shape[1] - 1)
        return jnp.mean(jnp.mean(f * log_q, 0) - kl)

    grad = jax.grad(surrogate)
    return lambda enc, dec, x, key: ravel_pytree(grad(enc, dec, x, key))[0]


def study(exp, params, x: jax.Array, sample_counts: Sequence[int], replicates: int,
          key: jax.Array) -> list[dict[str, Any]]:
    """One row per (L, estimator): trace of the gradient covariance over ``replicates`` draws,
    the squared norm of the mean gradient, and the variance ratio to reparameterization."""
    if x.shape[0] < 2:
        raise ValueError("the study needs a batch of at least 2 images")
    enc = {k: v for k, v in params.items() if k != "decoder"}
    dec = params["decoder"]
    rows = []
    for L in sample_counts:
        var_rep = None
        for i, name in enumerate(ESTIMATORS):
            g = gradient_fn(exp, name, L)

            @jax.jit
            def moments(enc, dec, x, k):
                draws = jax.lax.map(lambda kk: g(enc, dec, x, kk), jax.random.split(k, replicates))
                return jnp.sum(jnp.var(draws, 0, ddof=1)), jnp.sum(jnp.square(jnp.mean(draws, 0)))

            t = time.perf_counter()
            var, sq = (float(v) for v in moments(enc, dec, x, jax.random.fold_in(key, 1000 * L + i)))
            var_rep = var if name == "reparameterization" else var_rep
            rows.append({"samples": L, "estimator": name, "total_variance": var,
                         "mean_grad_sq_norm": sq, "ratio_to_reparameterization": var / var_rep,
                         "seconds": round(time.perf_counter() - t, 2)})
    return rows


def write(rows: list[dict[str, Any]], folder: str, header: str) -> list[str]:
    """CSV, Markdown table and the log-scale plot of the variance ratio against L."""
    os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(folder, n) for n in
             ("gradient_variance.csv", "gradient_variance.md", "gradient_variance_ratio.png")]
    with open(paths[0], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = [header, "", "| L | estimator | total variance | ‖mean gradient‖² | ratio to reparam. |",
             "|---:|---|---:|---:|---:|"]
    lines += [f"| {r['samples']} | {r['estimator']} | {r['total_variance']:.4g} | "
              f"{r['mean_grad_sq_norm']:.4g} | {r['ratio_to_reparameterization']:.4g} |" for r in rows]
    with open(paths[1], "w") as f:
        f.write("\n".join(lines) + "\n")
    curve = {name: ([r["samples"] for r in rows if r["estimator"] == name],
                    [r["ratio_to_reparameterization"] for r in rows if r["estimator"] == name])
             for name in ESTIMATORS[1:]}
    plots.line_panels({"Var[score function] / Var[reparameterization]": curve}, paths[2],
                      xlabel="samples per image L", log_x=True, log_y=True)
    return paths


def _define_flags() -> None:
    """The command line's flags, defined only when this file runs as a script, so that importing
    it (the tests do) leaves absl's global flags to the package's own entry points."""
    global _CONFIG, _WORKDIR, _SAMPLES, _REPLICATES, _BATCH, _OUT
    _CONFIG = config_flags.DEFINE_config_file("config", None, "The workdir's config file.",
                                              lock_config=True)
    _WORKDIR = flags.DEFINE_string("workdir", None, "Run folder with checkpoints.")
    _SAMPLES = flags.DEFINE_list("samples", ["1", "4", "16", "64"], "Sample counts L.")
    _REPLICATES = flags.DEFINE_integer("replicates", 200, "Independent gradient draws per estimator.")
    _BATCH = flags.DEFINE_integer("batch", 100, "Test images in the batch.")
    _OUT = flags.DEFINE_string("out", "", "Output folder (default <workdir>/gradient_study).")


def main(argv) -> int:
    del argv
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every restore at INFO
    try:
        cfg = config.from_config_dict(_CONFIG.value)
        if not _WORKDIR.value:
            raise config.ConfigError("--workdir is required")
        counts = [int(s) for s in _SAMPLES.value]
        if any(c < 1 for c in counts) or _REPLICATES.value < 2 or _BATCH.value < 2:
            raise config.ConfigError("--samples must be >= 1, --replicates and --batch >= 2")
        r = experiment.restore(cfg, _WORKDIR.value)
        exp, ds, step, params = r.experiments[0], r.dataset, r.step, r.params()
    except (config.ConfigError, data.DataError, checkpoint.CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    x = estimators.test_images(exp, ds)[: _BATCH.value]
    t = time.perf_counter()
    key = stream(jax.random.key(cfg.seed), "gradient_study")
    rows = study(exp, params, x, counts, _REPLICATES.value, key)
    m = estimators.common_metadata(exp, ds, step // (len(ds.train_images) // cfg.train.batch_size))
    header = (f"# Gradient variance at step {step} ({m['epochs']} epochs) of "
              f"{os.path.abspath(_WORKDIR.value)}\n\n"
              f"{m['dataset']} ({m['split']}, {m['binarization']}), batch of {x.shape[0]} images, "
              f"{_REPLICATES.value} draws per estimator, gradient of the batch-mean ELBO w.r.t. "
              f"the encoder ({m['model']}); {m['hardware']}; {time.perf_counter() - t:.1f} s.")
    paths = write(rows, _OUT.value or os.path.join(_WORKDIR.value, "gradient_study"), header)
    for r in rows:
        if r["estimator"] != "reparameterization":
            print(f"L={r['samples']:>4}  Var[{r['estimator']}] / Var[reparameterization] = "
                  f"{r['ratio_to_reparameterization']:.4g}")
    print("wrote", *paths, sep="\n  ")
    return 0


if __name__ == "__main__":
    _define_flags()
    app.run(lambda argv: sys.exit(main(argv)))
