"""CelebA 64×64 conv β-VAE (Higgins et al. 2017): the 178×218 aligned faces center-cropped to
148×148 and resized to 64×64 (antialiased bilinear), scaled to [-1, 1], a 3-layer conv encoder
(64, 128, 256 channels, strides 2) and mirrored decoder as ``cifar10_conv.py``, latent 32, Gaussian decoder with σ = 0.1,
β = 4, Adam 5e-4, batch 128, 30 epochs. The 162,770 training images take 2.0 GB as uint8; with
``data.input='auto'`` they stay on a device that holds four times that, and stream from the host
otherwise (the same data order either way).

    python -m vae_jax.main --config configs/celeba_beta.py --workdir runs/celeba_beta

TFDS downloads CelebA from Google Drive; offline, put its files in a folder and add
``--config.data.manual_dir=<folder>``. Capacity annealing instead of a fixed β (Burgess et al.
2018): ``--config.objective.schedule=capacity --config.objective.capacity_max=50``. On a machine
without the data, the tests run this recipe shrunk on the embedded digits.
"""

import pathlib

from vae_jax.sweep import load_config_file

BASE = pathlib.Path(__file__).with_name("cifar10_conv.py")  # the conv network, [-1, 1], uint8


def get_config():
    c = load_config_file(BASE)
    c.data.name = "celeb_a"
    c.data.test_split = "test"
    c.data.crop = 148
    c.data.image_size = 64
    c.model.latent_dim = 32
    c.model.likelihood = "gaussian"
    c.model.sigma = 0.1
    c.objective.beta = 4.0
    c.optim.learning_rate = 5e-4
    c.train.num_epochs = 30
    c.train.eval_every_epochs = 5
    c.train.checkpoint_every_epochs = 5
    return c
