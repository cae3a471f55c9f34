"""Importance-sampling speed: the k-sample estimate of log p(x) over a whole test split, through
the same code path as ``--mode eval`` (the ``importance_sampling`` evaluator).

    python scripts/benchmark_is.py --config configs/mnist_mlp.py \\
        --config.data.manual_dir=../shared/datasets [--workdir runs/mnist_mlp] \\
        [--config.eval.k=5000] [--config.eval.chunk=10] [--config.eval.batch_size=1000] [--json out.json]

With ``--workdir`` the latest checkpoint there is restored (read only: nothing is written to the
workdir); without it the model is freshly initialised from ``config.seed``. The cost does not
depend on the weights: every image gets k decoder passes either way. Prints the wall time
(compilation included), decoder passes per second, the decoder's matmul throughput, and the CPU
seconds the process got (other work on the machine shows up as fewer cores used).

For the seed-000 MLP (decoder 20-400-400-784) one pass is 2·(20·400 + 400·400 + 400·784) ≈ 0.96
MFLOP of matmul plus one Bernoulli log-density over 784 pixels; 10,000 images × k = 5000 is
5·10⁷ passes ≈ 4.8·10¹³ FLOP, so the time is bounded below by the machine's matmul rate.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import resource
import sys
import tempfile
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from vae_jax import checkpoint, config, data, estimators, evaluate, experiment

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "", "Restore this run's latest checkpoint (read only).")
_JSON = flags.DEFINE_string("json", "", "Also write the summary here.")


def decoder_matmul_flops(params) -> int:
    """2 × the number of kernel weights of the decoder: the matmul FLOPs of one MLP decoder pass
    (convolutional decoders reuse weights, so this undercounts them)."""
    return 2 * sum(int(np.prod(a.shape)) for path, a in
                   jax.tree_util.tree_leaves_with_path(params["decoder"]) if "kernel" in str(path[-1]))


def main(argv) -> int:
    del argv
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        cfg = config.from_config_dict(_CONFIG.value)
        cfg = dataclasses.replace(
            cfg, eval=dataclasses.replace(cfg.eval, evaluators=("importance_sampling",)))
        if _WORKDIR.value:
            r = experiment.restore(cfg, _WORKDIR.value)
            exp, ds, step, params = r.experiments[0], r.dataset, r.step, r.params()
            source = f"checkpoint step {step} of {_WORKDIR.value}"
        else:
            ds = experiment.load_data(cfg)
            exp = experiment.Experiment.build(cfg, ds.image_shape)
            params, step = jax.jit(exp.init_state)().params, 0
            source = f"freshly initialised (seed {cfg.seed})"
    except (config.ConfigError, data.DataError, checkpoint.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    epochs = step // (len(ds.train_images) // cfg.train.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        load0, cpu0 = os.getloadavg()[0], resource.getrusage(resource.RUSAGE_SELF)
        t = time.perf_counter()
        out = evaluate.run(exp, ds, params, step, epochs, tmp)
        wall = time.perf_counter() - t
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    n, k = out["metadata"]["num_images"], cfg.eval.k
    passes = n * k
    flops = decoder_matmul_flops(params)
    summary = {
        "model": source, "config": out["metadata"]["model"], "dataset": ds.name,
        "split": ds.test_split, "num_images": n, "k": k, "chunk": cfg.eval.chunk,
        "batch_size": cfg.eval.batch_size, "wall_s": round(wall, 1),
        "decoder_passes_per_s": round(passes / wall), "decoder_matmul_mflop": flops / 1e6,
        "decoder_matmul_gflop_per_s": round(passes * flops / wall / 1e9, 1),
        "process_cpu_s": round(cpu, 1), "cores_used": round(cpu / wall, 2),
        "load_avg_1min_before_after": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "is_log_px": out["is_log_px"], "is_bits_per_dim": out["is_bits_per_dim"],
        "hardware": estimators.hardware(), "jax": jax.__version__,
    }
    print(f"k={k} importance sampling over {n} {ds.name} {ds.test_split} images "
          f"({source}): {wall:.1f} s, {passes / wall:,.0f} decoder passes/s, "
          f"{summary['decoder_matmul_gflop_per_s']} GFLOP/s of decoder matmul; "
          f"log p(x) ≈ {out['is_log_px']:.2f} nats")
    print(json.dumps(summary, indent=2))
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
