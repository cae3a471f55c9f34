"""Seed 001's contrast in one figure: z ~ N(0, I) decoded by a plain autoencoder and by a VAE
with the same encoder trunk, decoder and likelihood, side by side (the same z for both), above
each model's reconstructions of the same test images. The AE reconstructs as well as the VAE but
its codes sit on islands that N(0, I) mostly misses, so its prior samples are garbage; the VAE's
KL term pulls its codes onto N(0, I), so its samples look like digits.

    python scripts/ae_vs_vae.py                      # embedded digits, ~1 minute on 2 CPU cores
    python scripts/ae_vs_vae.py --config configs/mnist_mlp.py --epochs 10 \\
        --manual_dir ../shared/datasets --workdir runs/ae_vs_vae_mnist
    python scripts/ae_vs_vae.py --ae_workdir runs/mnist_ae --vae_workdir runs/mnist_mlp

Trains into ``<workdir>/ae`` and ``<workdir>/vae`` (re-running resumes), unless both
``--ae_workdir`` and ``--vae_workdir`` name trained runs (their ``config.json`` is used). Writes
``<workdir>/ae_vs_vae.png`` and ``<workdir>/ae_vs_vae.json`` with two numbers per model:

- ``code_rms``: root-mean-square entry of the training images' codes (AE: f(x); VAE: posterior
  means), against N(0, I)'s 1: how far the codes sit from the scale the prior draws come from.
- ``sample_to_train_mse``: mean over the decoded prior samples of the per-pixel squared distance
  (in [0, 1]) to the nearest training image; lower means the samples look like training digits.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import config as config_lib
from vae_jax import checkpoint, data, estimators, experiment, plots, train


def load_config(path: str) -> config_lib.Config:
    spec = importlib.util.spec_from_file_location("ae_vs_vae_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return config_lib.from_config_dict(mod.get_config())


def _workdir_config(workdir: str, flag: str) -> config_lib.Config:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise config_lib.ConfigError(f"{flag}={workdir!r}: no config.json there; train it first")
    with open(path) as f:
        return config_lib.from_config_dict(json.load(f))


def _with(cfg: config_lib.Config, family: str, epochs: int, manual_dir: str) -> config_lib.Config:
    t = dict(figures=False, progress=False)
    if epochs:
        t.update(num_epochs=epochs, eval_every_epochs=epochs, checkpoint_every_epochs=epochs)
    d = dict(manual_dir=manual_dir) if manual_dir else {}
    new = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, family=family),
                              objective=dataclasses.replace(cfg.objective, beta=1.0),
                              train=dataclasses.replace(cfg.train, **t),
                              data=dataclasses.replace(cfg.data, **d))
    new.validate()
    return new


def _unit(exp, x) -> np.ndarray:
    """Images in the model's data space -> [0, 1] for display and pixel distances."""
    x = np.asarray(x, np.float64)
    return np.clip((x + 1.0) / 2.0 if exp.cfg.data.scale == "symmetric" else x, 0.0, 1.0)


def _nearest_sq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance from each row of a to its nearest row of b."""
    d = (a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None]
    return np.maximum(d.min(1), 0.0)


def compare(cfg_ae: config_lib.Config, ae_dir: str, cfg_vae: config_lib.Config, vae_dir: str,
            out_png: str, num: int = 64, seed: int = 0) -> dict:
    """Restores both runs, draws ``num`` z ~ N(0, I) (the same for both), writes the figure and
    returns the numbers."""
    runs = {"AE": experiment.restore(cfg_ae, ae_dir), "VAE": experiment.restore(cfg_vae, vae_dir)}
    d = {name: r.experiments[0].cfg.model.latent_dim for name, r in runs.items()}
    if d["AE"] != d["VAE"]:
        raise config_lib.ConfigError(f"latent sizes differ (AE {d['AE']}, VAE {d['VAE']}): the "
                                     f"comparison needs the same z for both")
    z = np.asarray(jax.random.normal(jax.random.key(seed), (num, d["AE"])))
    out, panels = {}, {}
    for name, (exps, ds, step, state) in runs.items():
        exp, params = exps[0], state.params
        key = jax.random.key(exp.cfg.data.eval_binarization_seed)
        x_train = exp.prepare(jnp.asarray(ds.train_images, jnp.float32), key)
        x_test = estimators.test_images(exp, ds)[:16]
        enc = jax.jit(lambda p, x, exp=exp: exp.family.encode(exp.model, p, {"image": x})[0])
        dec = jax.jit(lambda p, z, exp=exp: estimators.decode_mean(exp, p, z))
        codes = np.concatenate([np.asarray(enc(params, x_train[i:i + 1000]))
                                for i in range(0, x_train.shape[0], 1000)]).astype(np.float64)
        samples = _unit(exp, dec(params, jnp.asarray(z, jnp.float32)))
        recon = _unit(exp, dec(params, enc(params, x_test)))
        train_unit = _unit(exp, x_train).reshape(len(codes), -1)
        mse = _nearest_sq(samples.reshape(num, -1), train_unit).mean() / train_unit.shape[1]
        out[name] = {"workdir": ae_dir if name == "AE" else vae_dir, "step": step,
                     "code_rms": float(np.sqrt((codes ** 2).mean())),
                     "sample_to_train_mse": float(mse)}
        panels[name] = (_unit(exp, x_test), recon, samples)

    import matplotlib.pyplot as plt

    side = int(np.sqrt(num))
    fig, axes = plt.subplots(2, 2, figsize=(10, 8.5), layout="constrained",
                             gridspec_kw={"height_ratios": [4, side]})
    for col, name in enumerate(("AE", "VAE")):
        inputs, recon, samples = panels[name]
        pairs = np.concatenate([inputs[:8], recon[:8], inputs[8:16], recon[8:16]])
        o = out[name]
        for ax, img, title in (
                (axes[0, col], plots.tile(pairs, 4, 8), f"{name}: test inputs / reconstructions"),
                (axes[1, col], plots.tile(samples[: side * side], side, side),
                 f"{name}: decoded z ~ N(0, I) (same z both sides)\n"
                 f"training codes' rms {o['code_rms']:.2f} (N(0, I): 1); "
                 f"MSE to nearest training image {o['sample_to_train_mse']:.3f}")):
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=9)
    m = cfg_vae.model
    net = f"mlp {m.hidden}" if m.network == "mlp" else f"conv {m.conv_channels}"
    fig.suptitle(f"{cfg_vae.data.name}, {net}, latent {d['AE']}, {m.likelihood}; "
                 f"AE step {out['AE']['step']}, VAE step {out['VAE']['step']}", fontsize=10)
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/quickstart.py", help="the VAE's config; the AE "
                   "uses the same networks with model.family='ae'")
    p.add_argument("--workdir", default="runs/ae_vs_vae")
    p.add_argument("--epochs", type=int, default=100, help="override train.num_epochs (0 = keep)")
    p.add_argument("--manual_dir", default="", help="raw dataset files (offline TFDS prepare)")
    p.add_argument("--ae_workdir", default="", help="a trained AE run (with --vae_workdir)")
    p.add_argument("--vae_workdir", default="", help="a trained VAE run (with --ae_workdir)")
    a = p.parse_args(argv)
    try:
        if bool(a.ae_workdir) != bool(a.vae_workdir):
            raise config_lib.ConfigError("--ae_workdir and --vae_workdir go together")
        if a.ae_workdir:
            ae_dir, vae_dir = a.ae_workdir, a.vae_workdir
            cfg_ae = _workdir_config(ae_dir, "--ae_workdir")
            cfg_vae = _workdir_config(vae_dir, "--vae_workdir")
            if cfg_ae.model.family not in ("ae", "dae"):
                raise config_lib.ConfigError(f"--ae_workdir={ae_dir!r}: family "
                                             f"{cfg_ae.model.family!r}, expected 'ae' or 'dae'")
        else:
            if a.epochs < 0:
                raise config_lib.ConfigError(f"--epochs={a.epochs}: must be >= 0")
            base = load_config(a.config)
            cfg_ae = _with(base, "ae", a.epochs, a.manual_dir)
            cfg_vae = _with(base, "vae", a.epochs, a.manual_dir)
            ae_dir, vae_dir = os.path.join(a.workdir, "ae"), os.path.join(a.workdir, "vae")
            for cfg, wd in ((cfg_ae, ae_dir), (cfg_vae, vae_dir)):
                s = train.train_and_evaluate(cfg, wd)
                print(f"{cfg.model.family}: test elbo {s['elbo']:.2f} (recon {s['recon']:.2f}, "
                      f"kl {s['kl']:.2f}) after {s['step']} steps", flush=True)
        out = compare(cfg_ae, ae_dir, cfg_vae, vae_dir, os.path.join(a.workdir, "ae_vs_vae.png"))
    except (config_lib.ConfigError, data.DataError, checkpoint.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out["figure"] = os.path.join(a.workdir, "ae_vs_vae.png")
    os.makedirs(a.workdir, exist_ok=True)
    with open(os.path.join(a.workdir, "ae_vs_vae.json"), "w") as f:
        json.dump(out, f, indent=2)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
