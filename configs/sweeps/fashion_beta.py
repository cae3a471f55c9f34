"""Seed 004's researcher track: does KL scaling change class overlap? β ∈ {0.1, 0.5, 1.0, 2.0}
× seeds {0, 1, 2} on Fashion-MNIST with the conv recipe of configs/fashion_conv.py (inputs in
[-1, 1], 3-layer conv encoder/decoder, latent 64, Gaussian decoder σ = 0.1, Adam 1e-3, batch 128,
60 epochs, a checkpoint every 10). One population of 12 members in one compiled program.

    python -m vae_jax.sweep --config configs/sweeps/fashion_beta.py --workdir runs/sweeps/fashion_beta \\
        --config.data.manual_dir=../shared/datasets

Logged per member: the KL contribution to the training loss (``kl_contribution`` = loss − recon
= β·KL in every train row of members/<name>/metrics.jsonl; ``beta_kl`` = β × test KL in the
tables) and, after training, the interpolation smoothness of seed 004 (mean squared difference
between successive decoded images on 10-point posterior-mean paths between test pairs,
``interpolation_smoothness``; ``interpolation_jump_ratio`` normalises it by a linear
cross-fade), plus active units and collapsed dimensions, and the class overlap in latent space
(``class_overlap``: linear-probe and 5-NN test accuracy on the test posterior means, split
half/half, and their silhouette score by class; lower = classes overlap more). Plots:
rate_distortion.png, kl_contribution_vs_beta.png, interpolation_smoothness_vs_beta.png,
elbo_vs_beta.png, class_overlap_vs_beta.png. The decoder
is a density on [-1, 1], so its nats are not comparable with Bernoulli nats on MNIST.

On 2 CPU cores this is many hours; for a quick look add --config.train.num_epochs=5.
"""

import pathlib

from vae_jax.sweep import Spec, load_config_file, product

BASE = pathlib.Path(__file__).resolve().parents[1] / "fashion_conv.py"


def get_config():
    c = load_config_file(BASE)
    c.population.evaluators = ("collapse", "smoothness", "class_overlap")
    c.eval.interpolation_steps = 10
    return c


def get_sweep():
    return Spec(grid=product({"objective.beta": (0.1, 0.5, 1.0, 2.0)}), seeds=(0, 1, 2))
