"""β-VAE on MNIST with a linear KL warm-up (Bowman et al. 2016) and free bits (Kingma et al.
2016): β rises 0 → 4 over 10 epochs; every latent dimension keeps at least 0.1 nats.
Other schedules: --config.objective.schedule=cyclical (Fu et al. 2019) or capacity (Burgess et
al. 2018, with capacity_max, capacity_steps, capacity_gamma).

    python -m vae_jax.main --config configs/mnist_beta_warmup.py --workdir runs/mnist_b4_warmup \\
        --config.data.manual_dir=../shared/datasets
"""

from vae_jax.config import base_config


def get_config():
    c = base_config()
    c.data.name = "mnist"
    c.model.hidden = (400, 400)
    c.model.latent_dim = 20
    c.objective.beta = 4.0
    c.objective.schedule = "linear"
    c.objective.warmup_steps = 4680  # 10 epochs of 468 steps
    c.objective.free_bits = 0.1
    c.train.num_epochs = 30
    return c
