"""Seed 000's model on MNIST: 784-400-400-20 MLP encoder and mirrored decoder, ReLU, Bernoulli
decoder (BCE), diagonal-Gaussian posterior, Adam 1e-3, batch 128, 20 epochs, grayscale in [0, 1].

    python -m vae_jax.main --config configs/mnist_mlp.py --workdir runs/mnist_mlp \\
        --config.data.manual_dir=../shared/datasets   # offline; omit to let TFDS download

Dynamically binarized variant (the Burda et al. 2015 protocol):
    --config.data.binarization=dynamic
"""

from vae_jax.config import base_config


def get_config():
    c = base_config()
    c.data.name = "mnist"
    c.model.network = "mlp"
    c.model.hidden = (400, 400)
    c.model.latent_dim = 20
    c.model.activation = "relu"
    c.model.likelihood = "bernoulli"
    c.optim.learning_rate = 1e-3
    c.train.batch_size = 128
    c.train.num_epochs = 20
    return c
