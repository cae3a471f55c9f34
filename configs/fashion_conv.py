"""Seed 004's recipe: Fashion-MNIST scaled to [-1, 1], 3-layer conv encoder (32, 64, 128
channels, strides 2, 2, 1) and mirrored transposed-conv decoder, latent 64, β = 1, Adam 1e-3,
batch 128, 60 epochs, a checkpoint every 10 epochs. Pixels in [-1, 1] are continuous, so the
decoder is a Gaussian with fixed σ = 0.1 (nats are a density, not comparable to Bernoulli ones).

    python -m vae_jax.main --config configs/fashion_conv.py --workdir runs/fashion_conv \\
        --config.data.manual_dir=../shared/datasets
"""

from vae_jax.config import base_config


def get_config():
    c = base_config()
    c.data.name = "fashion_mnist"
    c.data.scale = "symmetric"
    c.model.network = "conv"
    c.model.conv_channels = (32, 64, 128)
    c.model.conv_strides = (2, 2, 1)
    c.model.latent_dim = 64
    c.model.likelihood = "gaussian"
    c.model.sigma = 0.1
    c.objective.beta = 1.0
    c.optim.learning_rate = 1e-3
    c.train.batch_size = 128
    c.train.num_epochs = 60
    c.train.eval_every_epochs = 5
    c.train.checkpoint_every_epochs = 10
    return c
