"""configs/sweeps/dsprites_beta.py at the budget a shared 2-core CPU allows in well under an
hour: β ∈ {1, 4, 16} × seeds {0, 1} for β-VAE and β-TCVAE; 4,800 training and 2,000 test images
of the generated grid; conv 16-16-32-32 + dense 128 (half the widths), batch 32, 15 epochs of
150 steps (2,250 steps); metrics on 1,200 + 800 test points, DCI by the random forest. Still
about 130 times short of the literature's 300,000 steps: expect low, noisy scores.

    python -m vae_jax.sweep --config configs/sweeps/dsprites_beta_cpu.py --workdir runs/sweeps/dsprites_beta_cpu
"""

import pathlib

from vae_jax.sweep import Spec, axis, load_config_file, product

BASE = pathlib.Path(__file__).with_name("dsprites_beta.py")


def get_config():
    c = load_config_file(BASE)
    c.data.num_train = 4800
    c.data.num_test = 2000
    c.data.storage = "float32"
    c.train.batch_size = 32
    c.train.num_epochs = 15
    c.train.eval_every_epochs = 15
    c.train.checkpoint_every_epochs = 5
    c.model.conv_channels = (16, 16, 32, 32)
    c.model.conv_dense = (128,)
    c.eval.factor_train = 1200
    c.eval.factor_test = 800
    c.eval.dci_model = "forest"
    return c


def get_sweep():
    return Spec(grid=product(axis("objective.name", ("elbo", "beta_tcvae")),
                             axis("objective.beta", (1.0, 4.0, 16.0))), seeds=(0, 1))
