"""VQ-VAE on a spatial grid of codes (van den Oord et al. 2017) and its PixelCNN prior, on 8-bit
MNIST: the conv encoder (32, 64, 128 channels, strides 2, 2, 1) maps a 28×28 image to a 7×7 map,
a 1×1 conv to 16-d vectors, each quantized to the nearest of 64 codes (EMA codebook, commitment
β = 0.25); the mirrored conv decoder starts from the quantized map; discretized logistic
likelihood on pixels scaled to [-1, 1]. Stage 2 trains a gated PixelCNN prior (5 layers of 64
channels) over the 7×7 code grids and draws samples from it beside uniform-prior samples.

    python -m vae_jax.main --config configs/mnist_vqvae_spatial.py --workdir runs/mnist_vqvae_spatial \\
        --config.data.manual_dir=../shared/datasets                    # stage 1: the VQ-VAE
    python -m vae_jax.main --config configs/mnist_vqvae_spatial.py --workdir runs/mnist_vqvae_spatial \\
        --config.data.manual_dir=../shared/datasets --mode prior       # stage 2: the prior

The generic figures are off (the traversal figure would have one row per entry of the 7×7×16
code map); stage 2 writes the sample figures.
"""

import pathlib

from vae_jax.sweep import load_config_file

BASE = pathlib.Path(__file__).resolve().parent / "mnist_vqvae.py"


def get_config():
    c = load_config_file(BASE)  # 8-bit MNIST in [-1, 1], conv trunk, EMA codebook, logistic likelihood
    c.model.vqvae.spatial = True
    c.model.vqvae.num_codes = 64
    c.model.vqvae.prior_channels = 64
    c.model.vqvae.prior_layers = 5
    c.model.vqvae.prior_epochs = 10
    c.model.vqvae.prior_batch_size = 128
    c.train.num_epochs = 10
    c.train.figures = False
    c.eval.evaluators = ("test_elbo", "reconstruction")
    return c
