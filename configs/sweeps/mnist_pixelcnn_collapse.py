"""The posterior-collapse study with an autoregressive decoder (configs/mnist_pixelcnn_vae.py:
784-300 MLP encoder, 16-d Gaussian latent, gated PixelCNN decoder, dynamically binarized MNIST).
How much information does the latent keep under each remedy?

- constant β = 1 (the plain ELBO);
- linear KL warm-up from 0 to 1 over the first 3 epochs (Bowman et al. 2016);
- free bits λ = 0.25, 0.5 and 1 nats per latent dimension (Kingma et al. 2016), β = 1;
- and for comparison the same encoder with an MLP decoder (the plain VAE, 16-300-784), β = 1.

Every point is its own run. Each run reports the test ELBO, the KL per dimension and active units
(collapse evaluator) and the importance-sampled log p(x) (eval.k samples on the first
eval.num_images test images), aggregated into results tables, ablation.png and kl_per_dim.png
(the sorted KL per dimension of every run, with its free-bits floor).

    python -m vae_jax.sweep --config configs/sweeps/mnist_pixelcnn_collapse.py \\
        --workdir runs/sweeps/mnist_pixelcnn_collapse --config.data.manual_dir=../shared/datasets

On a small CPU, a reduced budget (what the README reports): --config.data.train_split='train[:9600]'
--config.train.num_epochs=2 --config.objective.warmup_steps=200.
"""

import pathlib

from vae_jax.sweep import Spec, load_config_file

BASE = pathlib.Path(__file__).resolve().parents[1] / "mnist_pixelcnn_vae.py"


def get_config():
    c = load_config_file(BASE)
    c.train.num_epochs = 10
    c.train.figures = False  # ancestral sampling: 784 decoder passes per figure batch
    c.objective.warmup_steps = 2811  # 3 epochs of 937 steps (batch 64); the 'linear' schedule only
    c.eval.k = 50
    c.eval.num_images = 500
    c.eval.evaluators = ("test_elbo", "importance_sampling", "collapse")
    c.population.evaluators = ("importance_sampling", "collapse")
    return c


def get_sweep():
    ar = {"model.family": "pixelcnn_vae"}
    return Spec(  # runs in this order: the MLP decoder, then constant β with free bits 0, 1, 0.5, 0.25, warm-up
        grid=[{"model.family": "vae", "objective.schedule": "constant", "objective.free_bits": 0.0},
              *({**ar, "objective.schedule": "constant", "objective.free_bits": lam}
                for lam in (0.0, 1.0, 0.5, 0.25)),
              {**ar, "objective.schedule": "linear", "objective.free_bits": 0.0}],
        max_members=1,
    )
