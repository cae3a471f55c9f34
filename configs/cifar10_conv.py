"""CIFAR-10 conv VAE with the discretized logistic likelihood (Salimans et al. 2017, PixelCNN++;
Kingma et al. 2016, IAF), reporting bits/dim: pixels scaled to [-1, 1], a 3-layer conv encoder
(64, 128, 256 channels, strides 2) and mirrored transposed-conv decoder, latent 128, β = 1, Adam
1e-3, batch 128, 100 epochs. The 50,000 training images stay on the device as uint8 (150 MiB
instead of 600 MiB as float32); ``test_elbo`` reports ``bits_per_dim`` on the 10,000 test images.

    python -m vae_jax.main --config configs/cifar10_conv.py --workdir runs/cifar10_conv

Offline, put ``cifar-10-python.tar.gz`` in a folder and add
``--config.data.manual_dir=<folder>``. On a machine without the data, the tests run this recipe
shrunk on the embedded digits.
"""

from vae_jax.config import base_config


def get_config():
    c = base_config()
    c.data.name = "cifar10"
    c.data.scale = "symmetric"
    c.data.storage = "uint8"
    c.model.network = "conv"
    c.model.conv_channels = (64, 128, 256)
    c.model.conv_strides = (2, 2, 2)
    c.model.latent_dim = 128
    c.model.likelihood = "logistic"
    c.objective.beta = 1.0
    c.optim.learning_rate = 1e-3
    c.train.batch_size = 128
    c.train.num_epochs = 100
    c.train.eval_every_epochs = 10
    c.train.checkpoint_every_epochs = 10
    return c
