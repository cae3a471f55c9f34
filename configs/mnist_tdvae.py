"""A top-down hierarchical VAE (``vae_jax/models/tdvae.py``; Ladder VAE / IAF / NVAE / VDVAE
style): bottom-up ELU MLPs 784-200-200 to layer 1's features and 100-100 above them, a 200-200
top-down merge MLP whose state (width 200) is shared by prior and posterior, residual posterior
with zero-initialised heads, two stochastic layers of 32 (bottom first), decoder reading z1
together with the top-down state; dynamically binarized MNIST, Bernoulli, linear KL warm-up
over 2,340 steps (5 epochs), Adam 1e-3, batch 128. Its like-for-like flat baseline is
``mnist_elu_vae.py`` (same widths, activation, data, objective and optimizer; latent 64 = 32 + 32).

    python -m vae_jax.main --config configs/mnist_tdvae.py --workdir runs/mnist_tdvae \\
        --config.data.manual_dir=../shared/datasets
"""

from vae_jax.config import base_config


def get_config():
    c = base_config()
    c.data.name = "mnist"
    c.data.binarization = "dynamic"
    c.model.family = "tdvae"
    c.model.hidden = (200, 200)
    c.model.activation = "elu"
    c.model.likelihood = "bernoulli"
    c.model.tdvae.latents = (32, 32)
    c.model.tdvae.up_hidden = (100, 100)
    c.model.tdvae.top_down_hidden = (200, 200)
    c.model.tdvae.norm = "none"
    c.objective.schedule = "linear"
    c.objective.warmup_steps = 2340  # 5 epochs of 468 steps
    c.optim.learning_rate = 1e-3
    c.train.batch_size = 128
    c.train.num_epochs = 100
    return c
