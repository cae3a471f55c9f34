"""The flat ELU VAE of ``mnist_elu_vae.py`` with a learned mixture of K = 500 diagonal Gaussians as
its prior (means, log-variances and mixture weights trained with the model; the "MoG prior"
Tomczak & Welling 2018 compare against, with as many components as the VampPrior of
``mnist_vampprior.py`` has pseudo-inputs). Everything else is ``mnist_elu_vae.py``'s. The KL is a
Monte Carlo estimate.

    python -m vae_jax.main --config configs/mnist_mog_prior.py --workdir runs/mnist_mog_prior \\
        --config.data.manual_dir=../shared/datasets
"""

import pathlib

from vae_jax.sweep import load_config_file

BASE = pathlib.Path(__file__).with_name("mnist_elu_vae.py")


def get_config():
    c = load_config_file(BASE)
    c.model.prior = "mog"
    c.model.prior_components = 500
    return c
