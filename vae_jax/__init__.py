"""vae_jax: variational autoencoders in JAX/Flax with ml-collections configs and Orbax checkpoints."""

__version__ = "0.1.0"
