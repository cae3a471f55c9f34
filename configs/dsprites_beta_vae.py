"""dSprites β-VAE (Higgins et al. 2017) with the network and budget of Locatello et al. 2019:
the 64×64 binary images of the dSprites factor grid rendered offline
(``data.name='dsprites_generated'``, vae_jax.data.sprites; the 15,000-image test split is the
pool of the disentanglement metrics, the other 722,280 grid images train), conv encoder
32-32-64-64 (4×4, stride 2) + dense 256 to a 10-D Gaussian code, mirrored decoder (dense 256,
dense 4×4×64, transposed convs 64-32-32-1, 4×4 stride 2) with Bernoulli pixels, β = 4, Adam 1e-4, batch 64, 27 epochs (≈ 305,000 steps; the study trained
300,000). Evaluated by the disentanglement metrics (MIG, DCI, SAP, FactorVAE and β-VAE scores,
disentanglement_lib's defaults) and latent traversals sorted by KL.

    python -m vae_jax.main --config configs/dsprites_beta_vae.py --workdir runs/dsprites_beta_vae

A short CPU run: ``--config.data.num_train=20000 --config.data.num_test=5000
--config.train.num_epochs=2 --config.eval.dci_model=forest``. The released dSprites file by TFDS
instead: ``--config.data.name=dsprites --config.data.test_split=train[:15000]
--config.data.train_split=train[15000:]`` (TFDS has one split) when its files are present.
"""

from vae_jax.config import base_config


def get_config():
    c = base_config()
    c.data.name = "dsprites_generated"
    c.data.num_test = 15000
    c.data.storage = "uint8"  # 722,280 images: 3 GB as uint8 (12 GB as float32)
    c.model.network = "conv"
    c.model.conv_channels = (32, 32, 64, 64)
    c.model.conv_strides = (2, 2, 2, 2)
    c.model.conv_dense = (256,)
    c.model.conv_head = "transpose"
    c.model.latent_dim = 10
    c.model.likelihood = "bernoulli"
    c.objective.beta = 4.0
    c.optim.learning_rate = 1e-4
    c.train.batch_size = 64
    c.train.num_epochs = 27
    c.train.eval_every_epochs = 9
    c.train.checkpoint_every_epochs = 3
    c.eval.batch_size = 500
    c.eval.evaluators = ("test_elbo", "collapse", "mig", "dci", "sap", "factor_vae_score",
                         "beta_vae_score", "figures")
    c.population.evaluators = ("collapse", "mig", "dci", "sap", "factor_vae_score", "beta_vae_score")
    return c
