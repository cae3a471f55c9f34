"""Training-speed benchmark: compile time, s/epoch, images/s and peak memory of the compiled
epoch (one lax.scan over all steps) for a config.

    python scripts/benchmark.py --config configs/mnist_pytorch_example.py \\
        --manual_dir ../shared/datasets --epochs 5 [--json out.json]

With ``--synthetic`` it uses random images of the dataset's shape (no files needed).
Prints one line per epoch and a JSON summary; the first epoch after compilation is included in
the median only if ``--epochs`` is 1. The epoch runs as training does: over a ('members',
'data') mesh of all devices (``vae_jax.sharding``), the batch split over 'data'. The summary
also gives the achieved FLOP/s (XLA's count of one step's FLOPs x steps / s per epoch) against
the device's measured matmul peak (a timed ``--peak_size`` square float32 matmul).

Beside each compiled epoch it times the same training step jitted alone, called once per batch
from Python with the state donated, over the same batches (``step_alone_ms`` against
``epoch_ms_per_step``; the two alternate). ``--torch PYTHON`` also times the config's conv VAE
in PyTorch eager (``scripts/torch_reference.py``, run by that interpreter, e.g. a separate
virtual environment with torch) in the same run; ``--conv_impl`` overrides
``model.conv_impl``::

    python scripts/benchmark.py --config configs/fashion_conv.py --synthetic --num_train 1280 \
        --epochs 3 --torch ../torchvenv/bin/python

Scaling over devices, each count in its own process (on CPU with that many fake devices,
``XLA_FLAGS=--xla_force_host_platform_device_count=N``, which must be set before JAX starts: the
fake devices share the host's cores, so this checks the sharded program, not a speed-up; on a
GPU/TPU host the first N real devices)::

    python scripts/benchmark.py --synthetic --devices 1,2,4,8 --epochs 2 --json scaling.json

The population speed-up against sequential runs is measured by
``scripts/benchmark_population.py`` (e.g. ``--synthetic --epochs 3``).

The input paths side by side on one model (``--inputs``): the training set on the device as
float32, on the device as uint8 (converted inside the step), and streamed from the host
(``vae_jax.data.stream``, uint8 batches). Their epochs alternate, so a machine whose speed drifts
affects each alike; each streamed epoch starts a fresh stream (its start-up is counted, and nothing
is prefetched while the other paths run)::

    python scripts/benchmark.py --config configs/mnist_pytorch_example.py \
        --manual_dir ../shared/datasets --inputs device_f32,device_u8,stream --epochs 4
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import resource
import subprocess
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags  # noqa: F401  (keeps absl flag parsing consistent)

from vae_jax import config as config_lib
from vae_jax import data, estimators, experiment, sharding, train
from vae_jax.data import stream


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


def matmul_peak(size: int, repeats: int = 5) -> float:
    """FLOP/s of one device on a ``size`` x ``size`` float32 matmul (best of ``repeats``)."""
    dev = jax.devices()[0]
    a = jax.device_put(jnp.asarray(np.random.default_rng(0).random((size, size), np.float32)), dev)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2.0 * size ** 3 / best


def step_flops(exp: experiment.Experiment, state, batch, hp, steps_per_epoch: int) -> float:
    """XLA's FLOP count of one training step on one device (the global work of a step)."""
    step = functools.partial(exp.train_step, steps_per_epoch=steps_per_epoch)
    cost = jax.jit(step).lower(state, batch, hp).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def scaling(a, argv: list[str]) -> int:
    """One child process per device count; prints a table and writes the JSON list."""
    counts = [int(c) for c in a.devices.split(",") if c.strip()]
    if not counts or min(counts) < 1:
        print(f"error: --devices={a.devices!r}: a comma-separated list of counts >= 1", file=sys.stderr)
        return 2
    cpu = jax.default_backend() == "cpu"
    rest, skip = [], False
    for x in argv:  # the same arguments, minus --devices and --json
        if skip:
            skip = False
            continue
        if x in ("--devices", "--json"):
            skip = True
            continue
        if x.startswith(("--devices=", "--json=")):
            continue
        rest.append(x)
    results = []
    for n in counts:
        env = dict(os.environ)
        if cpu:
            flags = [f for f in env.get("XLA_FLAGS", "").split()
                     if not f.startswith("--xla_force_host_platform_device_count")]
            env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={n}"])
            env["JAX_PLATFORMS"] = "cpu"
        r = subprocess.run([sys.executable, os.path.abspath(__file__), *rest, "--mesh_data", str(n)],
                           env=env, capture_output=True, text=True)
        if r.returncode:
            print(r.stderr[-3000:], file=sys.stderr)
            return r.returncode
        results.append(json.loads(r.stdout[r.stdout.index("{"):]))
    base = results[0]["images_per_s"]
    print(f"{'devices':>7} {'per-dev batch':>13} {'compile s':>9} {'s/epoch':>8} {'img/s':>10} "
          f"{'speed-up':>8} {'GFLOP/s':>8} {'% of peak':>9}")
    for r in results:
        r["speedup_vs_first"] = round(r["images_per_s"] / base, 3)
        print(f"{r['devices']:>7} {r['per_device_batch_size']:>13} {r['compile_s']:>9.2f} "
              f"{r['s_per_epoch_median']:>8.3f} {r['images_per_s']:>10,.0f} "
              f"{r['speedup_vs_first']:>8.2f} {r['achieved_flops'] / 1e9:>8.2f} "
              f"{100 * r['fraction_of_peak']:>8.1f}%")
    out = {"mode": "device_scaling", "fake_cpu_devices": cpu, "results": results}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/mnist_pytorch_example.py")
    p.add_argument("--manual_dir", default="", help="raw dataset files (offline TFDS prepare)")
    p.add_argument("--data_dir", default="", help="TFDS data_dir")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch_size", type=int, default=0, help="override train.batch_size")
    p.add_argument("--synthetic", action="store_true", help="random images of the dataset's shape")
    p.add_argument("--json", default="", help="also write the summary here")
    p.add_argument("--devices", default="", help="scaling mode: device counts, e.g. 1,2,4,8")
    p.add_argument("--mesh_data", type=int, default=0, help="devices on the data axis (0: all)")
    p.add_argument("--inputs", default="", help="compare input paths: any of device_f32,device_u8,stream")
    p.add_argument("--num_train", type=int, default=0, help="synthetic training images (0: the dataset's)")
    p.add_argument("--conv_impl", default="", help="override model.conv_impl")
    p.add_argument("--torch", default="", help="a Python with torch: time the conv VAE in PyTorch eager too")
    p.add_argument("--peak_size", type=int, default=0,
                   help="matrix size of the peak-FLOP/s matmul (0: 2048 on CPU, 8192 otherwise)")
    a = p.parse_args(argv)
    if a.devices:
        return scaling(a, list(sys.argv[1:] if argv is None else argv))
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
        if a.mesh_data:
            cfg = dataclasses.replace(cfg, mesh=dataclasses.replace(cfg.mesh, data=a.mesh_data))
        if a.conv_impl:
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, conv_impl=a.conv_impl))
            cfg.model.validate()
        if a.epochs < 1:
            raise config_lib.ConfigError(f"--epochs={a.epochs}: must be >= 1")
        if a.synthetic:
            shapes = {"digits": (1500, 8, 8, 1), "cifar10": (50000, 32, 32, 3),
                      "dsprites_generated": (4800, 64, 64, 1)}
            n, *hw = shapes.get(cfg.data.name, (60000, 28, 28, 1))
            n = a.num_train or n
            rng = np.random.default_rng(0)
            imgs = rng.random((n, *hw), dtype=np.float32)
            labels = rng.integers(0, 10, n).astype(np.int32)
            ds = data.Dataset(cfg.data.name + "(synthetic)", imgs, labels, imgs[:1000], labels[:1000],
                              10, False, "synthetic", "synthetic")
        else:
            ds = experiment.load_data(cfg)
        mesh, devices = train.setup_devices(cfg)
    except (config_lib.ConfigError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    if a.inputs:
        return compare_inputs(a, cfg, ds, mesh)
    exp = experiment.Experiment.build(cfg, ds.image_shape, mesh)
    steps = len(ds.train_images) // cfg.train.batch_size
    images, labels = train.device_data(ds, mesh)
    abstract = jax.eval_shape(exp.init_state)
    state_sh = sharding.state_shardings(abstract, mesh, cfg.mesh)
    state = jax.jit(exp.init_state, out_shardings=state_sh)()
    rep = sharding.replicated(mesh)
    hp = jax.device_put(experiment.hyperparams(cfg), rep)
    flops = step_flops(experiment.Experiment.build(cfg, ds.image_shape), jax.eval_shape(exp.init_state),
                       {"image": jax.ShapeDtypeStruct((cfg.train.batch_size, *ds.image_shape),
                                                      jnp.float32),
                        "label": jax.ShapeDtypeStruct((cfg.train.batch_size,), jnp.int32)},
                       experiment.hyperparams(cfg), steps) * steps
    t = time.perf_counter()
    ins, outs = train.epoch_shardings(mesh, state_sh, rep, labels)
    with sharding.matmul_precision(cfg.train.matmul_precision):
        fn = jax.jit(exp.train_epoch, in_shardings=ins, out_shardings=outs, donate_argnums=0).lower(
            state, hp, images, labels, jnp.int32(0), exp.data_key()).compile()
    compile_s = time.perf_counter() - t
    step_fn = jax.jit(functools.partial(exp.train_step, steps_per_epoch=steps), donate_argnums=0)
    step_state = jax.jit(exp.init_state, out_shardings=state_sh)()
    times, step_times = [], []
    for e in range(a.epochs):
        t = time.perf_counter()
        state, m = fn(state, hp, images, labels, jnp.int32(e), exp.data_key())
        loss = float(np.mean(jax.device_get(m["loss"])))
        times.append(time.perf_counter() - t)
        # the same step jitted alone, once per batch of the same epoch order, from Python
        idx = data.epoch_order(exp.data_key(), jnp.int32(e), images.shape[0], cfg.train.batch_size)
        batches = [{"image": images[i]} | ({} if labels is None else {"label": labels[i]}) for i in idx]
        jax.block_until_ready(batches)
        t = time.perf_counter()
        for b in batches:
            step_state, sm = step_fn(step_state, b, hp)
        jax.block_until_ready(sm)
        step_times.append(time.perf_counter() - t)
        print(f"epoch {e + 1}: {times[-1]:.3f} s  {steps * cfg.train.batch_size / times[-1]:,.0f} img/s"
              f"  loss {loss:.2f}  | step alone {1000 * step_times[-1] / steps:.1f} ms/step"
              f"  epoch {1000 * times[-1] / steps:.1f} ms/step", flush=True)
    s_epoch = statistics.median(times[1:] if len(times) > 1 else times)
    s_alone = statistics.median(step_times[1:] if len(step_times) > 1 else step_times)
    torch_ms = torch_step_ms(a.torch, cfg, ds.image_shape, steps) if a.torch else None
    peak = matmul_peak(a.peak_size or (2048 if jax.default_backend() == "cpu" else 8192))
    n_dev = devices["devices"]
    out = {
        "config": a.config,
        "dataset": ds.name,
        "batch_size": cfg.train.batch_size,
        "steps_per_epoch": steps,
        "compile_s": round(compile_s, 3),
        "s_per_epoch_median": round(s_epoch, 4),
        "images_per_s": round(steps * cfg.train.batch_size / s_epoch, 1),
        "epochs_timed": a.epochs,
        "conv_impl": cfg.model.conv_impl,
        "epoch_ms_per_step": round(1000 * s_epoch / steps, 2),
        "step_alone_ms": round(1000 * s_alone / steps, 2),
        "epoch_over_step_alone": round(s_epoch / s_alone, 3),
        **({} if torch_ms is None else {
            "torch_eager_ms_per_step": round(torch_ms, 2),
            "speed_vs_torch_eager": round(torch_ms / (1000 * s_epoch / steps), 3)}),
        "devices": n_dev,
        "mesh": devices["mesh"],
        "per_device_batch_size": devices["per_device_batch_size"],
        "compute_dtype": cfg.model.compute_dtype,
        "matmul_precision": cfg.train.matmul_precision,
        "flops_per_epoch": flops,
        "achieved_flops": round(flops / s_epoch, 1),
        "matmul_peak_flops_per_device": round(peak, 1),
        # fake CPU devices share the host's cores: their peak is not n times one device's
        "fraction_of_peak": round(flops / s_epoch / (peak * (1 if devices["platform"] == "cpu" else n_dev)), 4),
        "hardware": estimators.hardware(),
        "jax": jax.__version__,
        **{k: round(v, 1) for k, v in peak_memory_mb().items()},
    }
    _emit(out, a.json)
    return 0


INPUTS = ("device_f32", "device_u8", "stream")


def torch_spec(cfg: config_lib.Config, image_shape, steps: int) -> dict:
    """What ``scripts/torch_reference.py`` builds: the config's conv layer shapes."""
    from vae_jax import likelihoods

    m = cfg.model
    per = likelihoods.from_config(m).params_per_channel
    return {"image_shape": list(image_shape), "channels": list(m.conv_channels),
            "strides": list(m.conv_strides), "dense": list(m.conv_dense), "head": m.conv_head,
            "latent": m.latent_dim, "out_channels": per * image_shape[2], "likelihood": m.likelihood,
            "sigma": m.sigma, "batch_size": cfg.train.batch_size, "steps": min(steps, 20),
            "learning_rate": cfg.optim.learning_rate, "threads": os.cpu_count()}


def torch_step_ms(python: str, cfg: config_lib.Config, image_shape, steps: int) -> float | None:
    """Median ms per training step of the same conv VAE in PyTorch eager (None, with a line on
    stderr, when the config is not a conv VAE or the interpreter cannot run it)."""
    if cfg.model.network != "conv" or cfg.model.family != "vae":
        print("--torch: the PyTorch reference mirrors the conv VAE family only", file=sys.stderr)
        return None
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_reference.py")
    r = subprocess.run([python, script], input=json.dumps(torch_spec(cfg, image_shape, steps)),
                       capture_output=True, text=True)
    if r.returncode:
        print(f"--torch {python}: failed: {r.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    out = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"PyTorch {out['torch']} eager ({out['threads']} threads): "
          f"{statistics.median(out['ms_per_step']):.1f} ms/step", flush=True)
    return statistics.median(out["ms_per_step"])


def _emit(out: dict, path: str) -> None:
    """Prints the summary as JSON and writes it to ``path`` too when one is given."""
    print(json.dumps(out, indent=2))
    if path:
        with open(path, "w") as f:
            json.dump(out, f, indent=2)


def _device_runner(exp, cfg, ds, mesh, state, hp):
    images, labels = train.device_data(ds, mesh)
    rep = sharding.replicated(mesh)
    state_sh = jax.tree.map(lambda x: x.sharding, state)
    ins, outs = train.epoch_shardings(mesh, state_sh, rep, labels)
    fn = jax.jit(exp.train_epoch, in_shardings=ins, out_shardings=outs, donate_argnums=0).lower(
        state, hp, images, labels, jnp.int32(0), exp.data_key()).compile()
    key = jax.device_put(exp.data_key(), rep)

    def run(st, e):
        st, m = fn(st, hp, images, labels, jnp.int32(e), key)
        return st, float(np.mean(jax.device_get(m["loss"])))
    return run, images.nbytes


def _stream_runner(exp, cfg, ds, mesh, state, hp):
    spe = len(ds.train_images) // cfg.train.batch_size
    state_sh = jax.tree.map(lambda x: x.sharding, state)
    rep = sharding.replicated(mesh)
    fn = jax.jit(lambda st, h, b: exp.train_steps(st, h, b, spe), donate_argnums=0,
                 in_shardings=(state_sh, rep, stream.chunk_sharding(mesh)), out_shardings=(state_sh, rep))

    def run(st, e):
        src = stream.HostStream(ds, mesh, cfg.train.batch_size, exp.data_key(), e * spe, (e + 1) * spe,
                                cfg.data.stream_chunk, cfg.data.stream_prefetch)
        losses = []
        try:
            for chunk in src:
                st, m = fn(st, hp, chunk.batches)
                losses.append(m["loss"])
        finally:
            src.close()
        return st, float(np.mean(jax.device_get(jnp.concatenate(losses))))
    per_image = int(np.prod(ds.image_shape)) * ds.train_images.itemsize
    # chunks on the device at once: the queue, the one in use, and the one being put
    return run, (cfg.data.stream_prefetch + 2) * cfg.data.stream_chunk * cfg.train.batch_size * per_image


def compare_inputs(a, cfg, ds, mesh) -> int:
    """images/s and the device bytes of the training images of each input path (labels, int32 on
    every path, not counted), epochs alternating."""
    names = [n.strip() for n in a.inputs.split(",") if n.strip()]
    if not names or set(names) - set(INPUTS):
        print(f"error: --inputs={a.inputs!r}: a comma-separated list of {', '.join(INPUTS)}", file=sys.stderr)
        return 2
    if ds.storage == "uint8":
        u8 = ds
    elif ds.name.endswith("(synthetic)"):
        u8 = dataclasses.replace(ds, train_images=np.round(ds.train_images * 255).astype(np.uint8))
    else:
        u8 = experiment.load_data(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, storage="uint8")))
    if u8.storage != "uint8":
        print(f"error: --inputs compares uint8 storage: {ds.name} is not 8-bit", file=sys.stderr)
        return 2
    f32 = dataclasses.replace(u8, train_images=data.unit_float32(u8.train_images))
    exp = experiment.Experiment.build(cfg, ds.image_shape, mesh)
    abstract = jax.eval_shape(exp.init_state)
    state_sh = sharding.state_shardings(abstract, mesh, cfg.mesh)
    hp = jax.device_put(experiment.hyperparams(cfg), sharding.replicated(mesh))
    steps = len(u8.train_images) // cfg.train.batch_size
    runners, states, times, nbytes, losses = {}, {}, {n: [] for n in names}, {}, {n: [] for n in names}
    with sharding.matmul_precision(cfg.train.matmul_precision):
        for n in names:
            states[n] = jax.jit(exp.init_state, out_shardings=state_sh)()
            make = _stream_runner if n == "stream" else _device_runner
            runners[n], nbytes[n] = make(exp, cfg, f32 if n == "device_f32" else u8, mesh, states[n], hp)
        for e in range(a.epochs + 1):  # epoch 0 warms up each path
            for n in names:
                t = time.perf_counter()
                states[n], loss = runners[n](states[n], e)
                dt = time.perf_counter() - t
                losses[n].append(loss)
                if e:
                    times[n].append(dt)
                print(f"epoch {e} {n:>10}: {dt:.3f} s  {steps * cfg.train.batch_size / dt:,.0f} img/s"
                      f"  loss {loss:.4f}", flush=True)
    ref = names[0]
    rows = {}
    for n in names:
        s_epoch = statistics.median(times[n])
        rows[n] = {"s_per_epoch_median": round(s_epoch, 4),
                   "images_per_s": round(steps * cfg.train.batch_size / s_epoch, 1),
                   "images_device_mb": round(nbytes[n] / 2**20, 2),
                   "final_loss": losses[n][-1]}
    for n in names:
        rows[n]["speed_vs_" + ref] = round(rows[n]["images_per_s"] / rows[ref]["images_per_s"], 3)
        rows[n]["memory_vs_" + ref] = round(nbytes[n] / nbytes[ref], 4)
    same = len({tuple(losses[n]) for n in names}) == 1
    host = {n: jax.tree.leaves(jax.device_get(states[n])) for n in names}
    same_state = all(all(np.array_equal(x, y) for x, y in zip(host[n], host[ref])) for n in names)
    out = {"config": a.config, "dataset": u8.name, "batch_size": cfg.train.batch_size,
           "steps_per_epoch": steps, "epochs_timed": a.epochs, "stream_chunk": cfg.data.stream_chunk,
           "same_losses_on_every_path": same, "same_final_state_on_every_path": same_state,
           "inputs": rows, "hardware": estimators.hardware(),
           "jax": jax.__version__}
    print(f"{'input':>10} {'s/epoch':>8} {'img/s':>10} {'speed':>6} {'image MiB':>9} {'memory':>7}")
    for n, r in rows.items():
        print(f"{n:>10} {r['s_per_epoch_median']:>8.3f} {r['images_per_s']:>10,.0f} "
              f"{r['speed_vs_' + ref]:>6.2f} {r['images_device_mb']:>9.2f} {r['memory_vs_' + ref]:>7.3f}")
    _emit(out, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
