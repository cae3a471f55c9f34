"""The disentanglement β study on dSprites (after Locatello et al. 2019): β-VAE and β-TCVAE,
β ∈ {1, 2, 4, 6, 8, 16} × seeds {0, 1, 2}, on the recipe of configs/dsprites_beta_vae.py
(the dSprites grid rendered offline, conv 32-32-64-64 + dense 256, latent 10, Bernoulli
decoder, Adam 1e-4, batch 64, 27 epochs ≈ 305,000 steps: the literature's budget). Each
objective is one run whose 18 members (β × seed) train in one compiled program; after training
every member is evaluated by MIG, DCI, SAP, the FactorVAE and β-VAE scores on the 15,000
test images (disentanglement_lib's defaults) and by the collapse statistics.

    python -m vae_jax.sweep --config configs/sweeps/dsprites_beta.py --workdir runs/sweeps/dsprites_beta

The sweep folder gets results.{csv,md}, results_mean_std.{csv,md} (mean ± std over seeds) and
disentanglement_vs_beta.png (each metric against β, one curve per objective; for β-TCVAE β
weights the total correlation). FactorVAE's γ: configs/sweeps/dsprites_factorvae.py.

A reduced budget (the grid stays): ``--config.data.num_train=4800 --config.data.num_test=2000
--config.train.num_epochs=1 --config.train.batch_size=32 --config.model.conv_channels=16,16,32,32
--config.model.conv_dense=128 --config.eval.factor_train=1200 --config.eval.factor_test=800
--config.eval.dci_model=forest``; configs/sweeps/dsprites_beta_cpu.py is that budget with the
smaller grid that ran on a 2-core CPU.
"""

import pathlib

from vae_jax.sweep import Spec, axis, load_config_file, product

BASE = pathlib.Path(__file__).resolve().parents[1] / "dsprites_beta_vae.py"
BETAS = (1.0, 2.0, 4.0, 6.0, 8.0, 16.0)


def get_config():
    c = load_config_file(BASE)
    c.train.figures = False  # traversals: --mode eval on a member with evaluator 'figures'
    return c


def get_sweep():
    return Spec(grid=product(axis("objective.name", ("elbo", "beta_tcvae")),
                             axis("objective.beta", BETAS)), seeds=(0, 1, 2))
