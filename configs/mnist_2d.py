"""A 2-D latent for the manifold figure (seed 003, Kingma & Welling 2013 fig. 4): MNIST, MLP
784-400-400-2, Bernoulli decoder. Writes figures/manifold.png (decoded 20×20 grid over
[-3, 3]²) and figures/latent_scatter.png (test posterior means coloured by digit).

    python -m vae_jax.main --config configs/mnist_2d.py --workdir runs/mnist_2d \\
        --config.data.manual_dir=../shared/datasets
"""

from vae_jax.config import base_config


def get_config():
    c = base_config()
    c.data.name = "mnist"
    c.model.hidden = (400, 400)
    c.model.latent_dim = 2
    c.model.likelihood = "bernoulli"
    c.train.batch_size = 128
    c.train.num_epochs = 20
    return c
