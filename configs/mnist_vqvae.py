"""VQ-VAE (van den Oord et al. 2017) on 8-bit MNIST: seed 004's conv encoder (32, 64, 128
channels, strides 2, 2, 1) and a Dense head to 16 code vectors of size 16 per image, a codebook
of 128 codes updated by exponential moving averages (decay 0.99), commitment β = 0.25, and the
mirrored conv decoder with a discretized logistic likelihood (Salimans et al. 2017) on pixels
scaled to [-1, 1], so reconstruction nats are a log-mass over the 256 levels. Logged: codebook
perplexity, fraction of codes used, dead codes per batch. ``elbo`` = −recon − 16·log 128 (the
uniform prior over codes of the paper).

    python -m vae_jax.main --config configs/mnist_vqvae.py --workdir runs/mnist_vqvae \\
        --config.data.manual_dir=../shared/datasets

Codebook trained by its loss instead of EMA: --config.model.vqvae.ema=False
"""

from vae_jax.config import base_config


def get_config():
    c = base_config()
    c.data.name = "mnist"
    c.data.scale = "symmetric"
    c.model.family = "vqvae"
    c.model.network = "conv"
    c.model.conv_channels = (32, 64, 128)
    c.model.conv_strides = (2, 2, 1)
    c.model.latent_dim = 16  # code vectors per image
    c.model.vqvae.num_codes = 128
    c.model.vqvae.code_dim = 16
    c.model.vqvae.commitment = 0.25
    c.model.vqvae.ema = True
    c.model.vqvae.decay = 0.99
    c.model.likelihood = "logistic"
    c.optim.learning_rate = 1e-3
    c.train.batch_size = 128
    c.train.num_epochs = 20
    return c
