"""FactorVAE's γ on dSprites (Kim & Mnih 2018; the grid of Locatello et al. 2019):
γ ∈ {10, 20, 30, 40, 50, 100} × seeds {0, 1, 2} on configs/dsprites_factorvae.py (γ is
``objective.beta``), evaluated and aggregated as configs/sweeps/dsprites_beta.py (the reduced
budget flags there apply here too).

    python -m vae_jax.sweep --config configs/sweeps/dsprites_factorvae.py --workdir runs/sweeps/dsprites_factorvae
"""

import pathlib

from vae_jax.sweep import Spec, axis, load_config_file

BASE = pathlib.Path(__file__).resolve().parents[1] / "dsprites_factorvae.py"


def get_config():
    c = load_config_file(BASE)
    c.train.figures = False
    return c


def get_sweep():
    return Spec(grid=axis("objective.beta", (10.0, 20.0, 30.0, 40.0, 50.0, 100.0)), seeds=(0, 1, 2))
