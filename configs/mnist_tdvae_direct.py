"""The best top-down configuration measured here: ``mnist_tdvae.py`` with the posterior as an
ordinary Dense of [top-down state, bottom-up features] (``model.tdvae.posterior='direct'``)
instead of a zero-initialised residual on the prior. On this MLP model of dynamically binarized
MNIST it reaches a better importance-sampled log-likelihood and keeps active units in both
stochastic layers, where the residual posterior's top layer keeps one (README, "The top-down
family against the flat ones"). Data, objective, optimizer and widths as ``mnist_tdvae.py``.

    python -m vae_jax.main --config configs/mnist_tdvae_direct.py \\
        --workdir runs/mnist_tdvae_direct --config.data.manual_dir=../shared/datasets
"""

import pathlib

from vae_jax.sweep import load_config_file

BASE = pathlib.Path(__file__).with_name("mnist_tdvae.py")


def get_config():
    c = load_config_file(BASE)
    c.model.tdvae.posterior = "direct"
    return c
