"""Ablation on MNIST (mnist_mlp recipe, 20 epochs): likelihood × latent size × KL warm-up × 3 seeds.

- likelihood: Bernoulli, or Gaussian with fixed σ = 0.1 (zipped: each likelihood with its σ);
- latent size: 8 or 32;
- KL warm-up: none (constant β = 1) or linear from 0 to 1 over the first 5 epochs
  (2340 steps; Bowman et al. 2016).

Likelihood, latent size and schedule change the compiled program, so they make 2 × 2 × 2 = 8
runs; the 3 seeds of each are one population.

    python -m vae_jax.sweep --config configs/sweeps/mnist_ablation.py --workdir runs/sweeps/mnist_ablation \\
        --config.data.manual_dir=../shared/datasets
    # a job array of 4 processes (each takes runs i, i+4):
    python -m vae_jax.sweep --config configs/sweeps/mnist_ablation.py --workdir runs/sweeps/mnist_ablation \\
        --config.data.manual_dir=../shared/datasets --index=$SLURM_ARRAY_TASK_ID --count=4

Bernoulli nats (a probability mass) and Gaussian nats (a density) are not comparable, so compare
likelihoods on ``mse_per_pixel`` / ``bce_per_pixel`` (decoder mean at the posterior mean against
the input, from the reconstruction evaluator) and active units; ELBOs compare within a likelihood.
The sweep folder gets results tables with mean ± std over seeds and ablation.png.
"""

import pathlib

from vae_jax.sweep import Spec, axis, load_config_file, product, zip_

BASE = pathlib.Path(__file__).resolve().parents[1] / "mnist_mlp.py"


def get_config():
    c = load_config_file(BASE)
    c.objective.warmup_steps = 2340  # 5 epochs of 468 steps; used by the 'linear' schedule only
    c.population.evaluators = ("collapse", "reconstruction", "smoothness")
    return c


def get_sweep():
    return Spec(
        grid=product(
            zip_(axis("model.likelihood", ("bernoulli", "gaussian")), axis("model.sigma", (1.0, 0.1))),
            axis("model.latent_dim", (8, 32)),
            axis("objective.schedule", ("constant", "linear")),
        ),
        seeds=(0, 1, 2),
    )
