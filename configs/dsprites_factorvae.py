"""dSprites FactorVAE (Kim & Mnih 2018): the recipe of ``dsprites_beta_vae.py`` with the loss
recon + KL + γ·TC (γ is ``objective.beta``, here 30, within Locatello et al.'s grid 10 … 100),
the TC estimated by a discriminator (6 × 1000 LeakyReLU units) between codes z ~ q(z) and their
dimension-wise permutations, trained in the same compiled step with its own Adam (1e-4, β1 0.5,
β2 0.9).

    python -m vae_jax.main --config configs/dsprites_factorvae.py --workdir runs/dsprites_factorvae
"""

import pathlib

from vae_jax.sweep import load_config_file

BASE = pathlib.Path(__file__).with_name("dsprites_beta_vae.py")


def get_config():
    c = load_config_file(BASE)
    c.objective.name = "factorvae"
    c.objective.beta = 30.0
    return c
