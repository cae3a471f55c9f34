"""A VAE with a gated PixelCNN decoder (van den Oord et al. 2016) conditioned on z, on
dynamically binarized MNIST: 784-300 MLP encoder (ReLU), 16-dimensional diagonal-Gaussian
posterior, decoder of 4 gated layers with 16 channels (3×3 vertical, 1×3 horizontal kernels),
Bernoulli per pixel. Sized for a CPU; the collapse study (configs/sweeps/mnist_pixelcnn_collapse.py)
trains it with a constant β, KL warm-up and free bits.

    python -m vae_jax.main --config configs/mnist_pixelcnn_vae.py --workdir runs/mnist_pixelcnn_vae \\
        --config.data.manual_dir=../shared/datasets

Larger decoder: --config.model.pixelcnn_vae.layers=8 --config.model.pixelcnn_vae.channels=64.
Figures decode by ancestral sampling (784 decoder passes per batch of images) and the
reconstruction evaluator decodes every test image, hence the short evaluator list.
"""

from vae_jax.config import base_config


def get_config():
    c = base_config()
    c.data.name = "mnist"
    c.data.binarization = "dynamic"
    c.model.family = "pixelcnn_vae"
    c.model.network = "mlp"
    c.model.hidden = (300,)
    c.model.latent_dim = 16
    c.model.likelihood = "bernoulli"
    c.model.pixelcnn_vae.channels = 16
    c.model.pixelcnn_vae.layers = 4
    c.model.pixelcnn_vae.kernel = 3
    c.optim.learning_rate = 1e-3
    c.train.batch_size = 64
    c.train.num_epochs = 10
    c.eval.batch_size = 100  # IS: eval.chunk decoder passes of 100 images at a time
    c.eval.k = 100
    c.eval.evaluators = ("test_elbo", "importance_sampling", "collapse", "figures")
    return c
