"""Seed 001's deterministic baseline: a plain autoencoder on seed 000's networks (MNIST, MLP
784-400-400-20 encoder and mirrored decoder, ReLU, Bernoulli decoder, Adam 1e-3, batch 128,
20 epochs, grayscale in [0, 1]). The code is z = f(x) with no noise and no KL; the logged
``elbo`` is the reconstruction log-likelihood log p(x | f(x)), not a bound on log p(x).
``scripts/ae_vs_vae.py`` decodes z ~ N(0, I) through this decoder and a VAE's side by side.

    python -m vae_jax.main --config configs/mnist_ae.py --workdir runs/mnist_ae \\
        --config.data.manual_dir=../shared/datasets
"""

from vae_jax.config import base_config


def get_config():
    c = base_config()
    c.data.name = "mnist"
    c.model.family = "ae"
    c.model.network = "mlp"
    c.model.hidden = (400, 400)
    c.model.latent_dim = 20
    c.model.activation = "relu"
    c.model.likelihood = "bernoulli"
    c.optim.learning_rate = 1e-3
    c.train.batch_size = 128
    c.train.num_epochs = 20
    return c
