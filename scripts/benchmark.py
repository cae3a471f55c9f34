"""Training-speed benchmark: compile time, s/epoch, images/s and peak memory of the compiled
epoch (one lax.scan over all steps) for a config.

    python scripts/benchmark.py --config configs/mnist_pytorch_example.py \\
        --manual_dir ../shared/datasets --epochs 5 [--json out.json]

With ``--synthetic`` it uses random images of the dataset's shape (no files needed).
Prints one line per epoch and a JSON summary; the first epoch after compilation is included in
the median only if ``--epochs`` is 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags  # noqa: F401  (keeps absl flag parsing consistent)

from vae_jax import config as config_lib
from vae_jax import data, evaluate, train


def load_config(path: str) -> config_lib.Config:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return config_lib.from_config_dict(mod.get_config())


def peak_memory_mb() -> dict[str, float]:
    out = {"host_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        out["device_peak_mb"] = stats["peak_bytes_in_use"] / 2**20
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/mnist_pytorch_example.py")
    p.add_argument("--manual_dir", default="", help="raw dataset files (offline TFDS prepare)")
    p.add_argument("--data_dir", default="", help="TFDS data_dir")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch_size", type=int, default=0, help="override train.batch_size")
    p.add_argument("--synthetic", action="store_true", help="random images of the dataset's shape")
    p.add_argument("--json", default="", help="also write the summary here")
    a = p.parse_args(argv)
    try:
        cfg = load_config(a.config)
        over = {}
        if a.manual_dir:
            over["manual_dir"] = a.manual_dir
        if a.data_dir:
            over["data_dir"] = a.data_dir
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **over))
        if a.batch_size:
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=a.batch_size))
        if a.epochs < 1:
            raise config_lib.ConfigError(f"--epochs={a.epochs}: must be >= 1")
        if a.synthetic:
            shapes = {"digits": (1500, 8, 8, 1)}
            n, *hw = shapes.get(cfg.data.name, (60000, 28, 28, 1))
            rng = np.random.default_rng(0)
            imgs = rng.random((n, *hw), dtype=np.float32)
            labels = rng.integers(0, 10, n).astype(np.int32)
            ds = data.Dataset(cfg.data.name + "(synthetic)", imgs, labels, imgs[:1000], labels[:1000],
                              10, False, "synthetic", "synthetic")
        else:
            ds = train.load_data(cfg)
    except (config_lib.ConfigError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    exp = train.Experiment.build(cfg, ds.image_shape)
    steps = len(ds.train_images) // cfg.train.batch_size
    images = jnp.asarray(ds.train_images)
    labels = None if ds.train_labels is None else jnp.asarray(ds.train_labels)
    state = jax.jit(exp.init_state)()
    t = time.perf_counter()
    hp = train.hyperparams(cfg)
    fn = jax.jit(exp.train_epoch, donate_argnums=0).lower(state, hp, images, labels, jnp.int32(0),
                                                           exp.data_key()).compile()
    compile_s = time.perf_counter() - t
    times = []
    for e in range(a.epochs):
        t = time.perf_counter()
        state, m = fn(state, hp, images, labels, jnp.int32(e), exp.data_key())
        loss = float(np.mean(jax.device_get(m["loss"])))
        times.append(time.perf_counter() - t)
        print(f"epoch {e + 1}: {times[-1]:.3f} s  {steps * cfg.train.batch_size / times[-1]:,.0f} img/s"
              f"  loss {loss:.2f}", flush=True)
    s_epoch = statistics.median(times[1:] if len(times) > 1 else times)
    out = {
        "config": a.config,
        "dataset": ds.name,
        "batch_size": cfg.train.batch_size,
        "steps_per_epoch": steps,
        "compile_s": round(compile_s, 3),
        "s_per_epoch_median": round(s_epoch, 4),
        "images_per_s": round(steps * cfg.train.batch_size / s_epoch, 1),
        "epochs_timed": a.epochs,
        "hardware": evaluate.hardware(),
        "jax": jax.__version__,
        **{k: round(v, 1) for k, v in peak_memory_mb().items()},
    }
    print(json.dumps(out, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
