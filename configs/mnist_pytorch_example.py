"""The PyTorch examples' VAE (github.com/pytorch/examples, vae/main.py), line for line:
784-400-20 encoder, 20-400-784 decoder, ReLU, sigmoid/BCE summed over pixels (Bernoulli on
logits here), KL in closed form, Adam 1e-3, batch 128, 10 epochs, MNIST grayscale in [0, 1],
PyTorch's nn.Linear initialisation. Test loss = BCE + KL per image with one posterior sample,
which is the negative of ``test/elbo`` here.

    python -m vae_jax.main --config configs/mnist_pytorch_example.py --workdir runs/pt_example \\
        --config.data.manual_dir=../shared/datasets
"""

from vae_jax.config import base_config


def get_config():
    c = base_config()
    c.data.name = "mnist"
    c.model.hidden = (400,)
    c.model.latent_dim = 20
    c.model.init = "torch"
    c.model.likelihood = "bernoulli"
    c.optim.learning_rate = 1e-3
    c.train.batch_size = 128
    c.train.num_epochs = 10
    return c
