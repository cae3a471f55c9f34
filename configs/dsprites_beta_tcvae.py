"""dSprites β-TCVAE (Chen et al. 2018): the recipe of ``dsprites_beta_vae.py`` with the loss
recon + KL + (β − 1)·TC, the total correlation estimated by minibatch-stratified sampling over
the batch of 64 with N = the training split's size (``objective.tc_estimator='mws'`` for
minibatch-weighted sampling), β = 6.

    python -m vae_jax.main --config configs/dsprites_beta_tcvae.py --workdir runs/dsprites_beta_tcvae
"""

import pathlib

from vae_jax.sweep import load_config_file

BASE = pathlib.Path(__file__).with_name("dsprites_beta_vae.py")


def get_config():
    c = load_config_file(BASE)
    c.objective.name = "beta_tcvae"
    c.objective.tc_estimator = "mss"
    c.objective.beta = 6.0
    return c
