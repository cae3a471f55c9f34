"""The embedded offline default: scikit-learn's 8×8 handwritten digits (inside the scikit-learn
wheel, no download), an MLP VAE with a Bernoulli decoder; under 2 minutes on 2 CPU cores.

    python -m vae_jax.main --config configs/quickstart.py --workdir runs/quickstart
"""

from vae_jax.config import base_config


def get_config():
    c = base_config()
    c.data.name = "digits"
    c.model.network = "mlp"
    c.model.hidden = (256, 256)
    c.model.latent_dim = 8
    c.model.likelihood = "bernoulli"
    c.train.batch_size = 64
    c.train.num_epochs = 300
    c.train.eval_every_epochs = 25
    c.train.checkpoint_every_epochs = 50
    c.eval.batch_size = 297
    return c
