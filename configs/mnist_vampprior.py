"""The flat ELU VAE of ``mnist_elu_vae.py`` with the VampPrior (Tomczak & Welling 2018): p(z) is
the mixture of the posteriors q(z|u_k) of K = 500 learned pseudo-inputs (their number; initialised
N(0.05, 0.01²) per pixel and clipped to [0, 1], as in their code). Everything else (ELU MLP
784-200-200, latent 64, dynamically binarized MNIST, linear KL warm-up over 2,340 steps, Adam 1e-3,
batch 128) is that config's, so the two differ only in the prior. The KL is a Monte Carlo estimate.

    python -m vae_jax.main --config configs/mnist_vampprior.py --workdir runs/mnist_vampprior \\
        --config.data.manual_dir=../shared/datasets
"""

import pathlib

from vae_jax.sweep import load_config_file

BASE = pathlib.Path(__file__).with_name("mnist_elu_vae.py")


def get_config():
    c = load_config_file(BASE)
    c.model.prior = "vamp"
    c.model.prior_components = 500
    return c
