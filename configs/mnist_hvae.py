"""Burda et al. (2015)'s two-stochastic-layer MNIST model with their inference path q(z1|x) q(z2|z1):
x -> 200-200 (tanh) -> z1 (100) -> 100-100 (tanh) -> z2 (50), mirrored top-down; dynamically
binarized MNIST, Bernoulli decoder. Add --config.objective.name=iwae --config.objective.num_samples=5
for the IWAE (k = 5) column of their table.

    python -m vae_jax.main --config configs/mnist_hvae.py --workdir runs/mnist_hvae \\
        --config.data.manual_dir=../shared/datasets
"""

from vae_jax.config import base_config


def get_config():
    c = base_config()
    c.data.name = "mnist"
    c.data.binarization = "dynamic"
    c.model.family = "hvae"
    c.model.hidden = (200, 200)
    c.model.hvae.latents = (100, 50)
    c.model.hvae.upper_hidden = (100, 100)
    c.model.hvae.inference = "bottom_up"  # Burda et al.; "ladder" for Sønderby et al.
    c.model.activation = "tanh"
    c.model.likelihood = "bernoulli"
    c.optim.learning_rate = 1e-3
    c.train.batch_size = 128
    c.train.num_epochs = 20
    return c
