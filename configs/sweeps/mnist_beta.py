"""β sweep on MNIST: β ∈ {0.1, 0.5, 1, 2, 4, 8} × seeds {0, 1, 2} on the mnist_mlp recipe
(784-400-400-20 MLP, Bernoulli decoder, Adam 1e-3, batch 128, 20 epochs). β and the seed are
batchable, so all 18 models train as one population in one compiled program.

    python -m vae_jax.sweep --config configs/sweeps/mnist_beta.py --workdir runs/sweeps/mnist_beta \\
        --config.data.manual_dir=../shared/datasets
    python -m vae_jax.sweep --config configs/sweeps/mnist_beta.py --workdir runs/sweeps/mnist_beta --dry-run

After training, every member is evaluated on the test split: ELBO, importance-sampled log p(x)
(k = 500 per image; raise --config.eval.k for tighter numbers), active units, collapsed
dimensions and interpolation smoothness. The sweep folder gets results.{csv,md},
results_mean_std.{csv,md}, rate_distortion.png, elbo_vs_beta.png (ELBO and NLL),
active_units_vs_beta.png and the other plots of vae_jax.aggregate.
"""

import pathlib

from vae_jax.sweep import Spec, load_config_file, product

BASE = pathlib.Path(__file__).resolve().parents[1] / "mnist_mlp.py"


def get_config():
    c = load_config_file(BASE)
    c.population.evaluators = ("importance_sampling", "collapse", "smoothness")
    c.eval.k = 500
    c.eval.chunk = 50
    return c


def get_sweep():
    return Spec(grid=product({"objective.beta": (0.1, 0.5, 1.0, 2.0, 4.0, 8.0)}), seeds=(0, 1, 2))
