"""Which parts of the top-down design carry its gain: ``mnist_tdvae.py`` (50 epochs) with one
part changed per run, and with more stochastic layers.

- ``model.activation='tanh'``: Burda et al.'s activation instead of ELU;
- ``model.tdvae.top_down_hidden=(100, 100)``: a narrower top-down path (state width 100);
- ``model.tdvae.posterior='direct'``: q as an ordinary Dense of [state, features], no residual
  on the prior;
- ``model.tdvae.decoder_input='z1'``: the decoder reads z1 alone (the upper layer reaches x only
  through p(z1 | z2));
- ``model.tdvae.latents=(32, 32, 32)``: three layers; ``(16, 16, 16, 16)``: four layers with the
  same 64 latent dimensions as the two-layer model.

The unchanged model is ``configs/mnist_tdvae.py`` itself (run it with ``--config.train.num_epochs=50``
for the reference row). Every run ends with importance sampling (k = 1000, all 10,000 test
images) and active units per layer.

    python -m vae_jax.sweep --config configs/sweeps/mnist_tdvae_ablation.py \\
        --workdir runs/sweeps/mnist_tdvae_ablation --config.data.manual_dir=../shared/datasets
"""

import pathlib

from vae_jax.sweep import Spec, load_config_file

BASE = pathlib.Path(__file__).resolve().parents[1] / "mnist_tdvae.py"


def get_config():
    c = load_config_file(BASE)
    c.train.num_epochs = 50
    c.train.eval_every_epochs = 10
    c.eval.k = 1000  # a fifth of k = 5000's cost; --config.eval.k=5000 for Burda et al.'s estimator
    c.eval.num_images = 0
    c.population.evaluators = ("importance_sampling", "collapse")
    return c


def get_sweep():
    return Spec(grid=[
        {"model.activation": "tanh"},
        {"model.tdvae.top_down_hidden": (100, 100)},
        {"model.tdvae.posterior": "direct"},
        {"model.tdvae.decoder_input": "z1"},
        {"model.tdvae.latents": (32, 32, 32)},
        {"model.tdvae.latents": (16, 16, 16, 16)},
    ])
