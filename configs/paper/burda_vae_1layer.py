"""Burda, Grosse & Salakhutdinov (2015), Table 1, VAE with one stochastic layer, k = 1:
x -> 784-200-200 (tanh) -> z (50), mirrored decoder, Bernoulli likelihood, dynamically
binarized MNIST (60,000 training images). Their schedule exactly: Adam β1 0.9, β2 0.999,
ε 1e-4, batch 20, learning rate 1e-3 · 10^(−i/7) for 3^i passes, i = 0…7
(``optim.schedule='burda'``): 3,280 passes in all. ``--config.train.num_epochs=N`` stops after
the first N passes of that same schedule. Evaluation: importance sampling with k = 5000 on all
10,000 test images (and the test ELBO and active units).

    python -m vae_jax.main --config configs/paper/burda_vae_1layer.py \\
        --workdir runs/burda_vae_1layer --config.data.manual_dir=../shared/datasets
"""

from vae_jax.config import base_config


def get_config():
    c = base_config()
    c.data.name = "mnist"
    c.data.binarization = "dynamic"
    c.model.family = "vae"
    c.model.network = "mlp"
    c.model.hidden = (200, 200)
    c.model.latent_dim = 50
    c.model.activation = "tanh"
    c.model.likelihood = "bernoulli"
    c.objective.name = "elbo"
    c.objective.num_samples = 1
    c.optim.name = "adam"
    c.optim.learning_rate = 1e-3
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-4
    c.optim.schedule = "burda"
    c.train.batch_size = 20
    c.train.num_epochs = 3280  # the whole schedule: sum of 3^i, i = 0…7
    c.train.eval_every_epochs = 40  # test ELBO every 40 passes (and after the last)
    c.train.checkpoint_every_epochs = 10
    c.eval.k = 5000
    c.eval.num_images = 0  # all 10,000 test images
    c.eval.evaluators = ("test_elbo", "importance_sampling", "collapse")
    return c
