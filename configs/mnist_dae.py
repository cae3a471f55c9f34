"""Denoising autoencoder (Vincent et al. 2008) on the networks of configs/mnist_ae.py: the
encoder sees x + 0.3·ε, ε ~ N(0, I), drawn afresh every step, and the decoder is scored on the
clean x (Bernoulli). The logged ``elbo`` is log p(x | f(x̃)) averaged over the noise, train and
test alike, not a bound on log p(x).

    python -m vae_jax.main --config configs/mnist_dae.py --workdir runs/mnist_dae \\
        --config.data.manual_dir=../shared/datasets
"""

from vae_jax.config import base_config


def get_config():
    c = base_config()
    c.data.name = "mnist"
    c.model.family = "dae"
    c.model.dae.noise = 0.3
    c.model.network = "mlp"
    c.model.hidden = (400, 400)
    c.model.latent_dim = 20
    c.model.activation = "relu"
    c.model.likelihood = "bernoulli"
    c.optim.learning_rate = 1e-3
    c.train.batch_size = 128
    c.train.num_epochs = 20
    return c
