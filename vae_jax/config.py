"""Typed, frozen experiment configuration, validated at the boundary.

Config files (``configs/*.py``) return an ``ml_collections.ConfigDict``; :func:`from_config_dict`
turns it into the frozen dataclasses below and checks every field before anything is traced or
compiled. A wrong field raises :class:`ConfigError` with one line naming the field, the value and
what is allowed.

Model families and objectives register themselves here (:data:`FAMILIES`, :data:`OBJECTIVES`) from
their own modules; a family's config section (``config.model.<family>``), its validation and the
list of family names come from that registry. Fields marked :func:`batchable` enter the compiled
step as arrays (``experiment.hyperparams``), so a population can give each member its own value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import typing
from typing import Any, Mapping

import ml_collections

NETWORKS = ("mlp", "conv")
ACTIVATIONS = ("relu", "tanh", "elu", "gelu", "swish", "leaky_relu")
INITS = ("lecun", "torch")
LIKELIHOODS = ("bernoulli", "gaussian", "gaussian_learned", "laplace", "logistic")
PRIORS = ("normal", "mog", "vamp")  # vae_jax.priors; a family lists those it supports (Family.priors)
SCHEDULES = ("constant", "linear", "cyclical", "capacity")
LABELLED = ("digits", "mnist", "fashion_mnist", "dsprites_generated")  # datasets with class labels
DATASETS = ("digits", "mnist", "fashion_mnist", "binarized_mnist", "folder", "array",
            "dsprites_generated")  # and any TFDS name
GENERATED = ("dsprites_generated",)  # rendered by vae_jax.data; num_train / num_test size them
CONV_HEADS = ("conv", "transpose")
CONV_IMPLS = ("auto", "xla", "canonical", "subpixel")  # vae_jax.conv
TC_OBJECTIVES = ("beta_tcvae", "factorvae")  # need a single Gaussian latent layer ('vae')
TC_ESTIMATORS = ("mws", "mss")  # beta_tcvae: minibatch-weighted / minibatch-stratified sampling
DCI_MODELS = ("gbt", "forest")  # importance model of the DCI evaluator
_DATASET_NAME = re.compile(r"[a-z][a-z0-9_]*(/[A-Za-z0-9_.-]+)?(:[0-9*]+(\.[0-9*]+){0,2})?")
CHANNELS = ("keep", "grayscale", "rgb")  # data.images.CHANNELS
STORAGES = ("float32", "uint8")  # data.core.STORAGES
INPUTS = ("auto", "device", "stream")
BINARIZATIONS = ("none", "dynamic")
SCALES = ("unit", "symmetric")
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "burda")  # see experiment.learning_rate_factor
COMPUTE_DTYPES = ("float32", "bfloat16")
MATMUL_PRECISIONS = ("default", "high", "highest")
PARAM_SHARDINGS = ("replicated", "fsdp")
DISTRIBUTED = ("auto", "on", "off")


class ConfigError(ValueError):
    """A configuration value is wrong; the message is one line: field, value, what is allowed."""


def _fail(field: str, value: Any, allowed: str) -> typing.NoReturn:
    raise ConfigError(f"config.{field}={value!r}: {allowed}")


class Registry(dict):
    """Name -> implementation, filled by the implementing modules with :meth:`register`."""

    def __init__(self, field: str):
        super().__init__()
        self.field = field  # the config field that picks an entry, for error messages

    def register(self, name: str, item: Any) -> Any:
        if name in self:
            raise ValueError(f"{self.field} {name!r} is registered twice")
        self[name] = item
        return item

    def check(self, name: Any) -> Any:
        if name not in self:
            _fail(self.field, name, f"must be one of {', '.join(self)}")
        return self[name]


# family name -> a vae_jax.models.base.Family: ``section`` (its config dataclass or None),
# ``conditional`` (needs labels), ``has_kl``, ``validate(cfg)``
FAMILIES = Registry("model.family")
OBJECTIVES = Registry("objective.name")  # name -> loss function (vae_jax.objectives)


def batchable(default: Any) -> Any:
    """A config field that enters the compiled step as a float32 array (``experiment.hyperparams``,
    keyed by the field's name), so population members may each set it."""
    return dataclasses.field(default=default, metadata={"batchable": True})


@dataclasses.dataclass(frozen=True)
class DataConfig:
    # 'digits', 'folder' / 'array' (own files at data.path), or any TFDS image dataset by name
    # ('mnist', 'fashion_mnist', 'binarized_mnist', 'cifar10', 'svhn_cropped', 'celeb_a', ...)
    name: str = "digits"
    train_split: str = ""  # '' = the dataset's default ('train'); TFDS split syntax is accepted
    test_split: str = ""  # '' = the dataset's default ('test')
    data_dir: str = ""  # TFDS data_dir; '' = TFDS default (~/tensorflow_datasets)
    manual_dir: str = ""  # folder with the raw files (or a root holding <name>/ folders)
    path: str = ""  # 'folder': a folder of PNG/JPEG images (class sub-folders optional); 'array': .npz/.npy
    test_fraction: float = 0.1  # 'folder'/'array' without an explicit test split: share held out
    image_size: int = 0  # resize to image_size x image_size (0 = keep)
    crop: int = 0  # central crop x crop square before resizing (0 = none; a non-square image is cut to its central square when resized)
    channels: str = "keep"  # 'keep', 'grayscale' or 'rgb'
    storage: str = "float32"  # 'uint8' keeps 8-bit training images as uint8 (a quarter of the memory)
    input: str = "auto"  # 'device': the training set on the devices; 'stream': fed from the host; 'auto': device when it fits
    device_fraction: float = 0.25  # 'auto' keeps data on the device when it takes at most this share of its memory
    stream_chunk: int = 32  # streamed path: steps per compiled call (a lax.scan over host-fed batches)
    stream_prefetch: int = 2  # streamed path: chunks prepared ahead on the devices
    stream_checkpoint_steps: int = 0  # streamed path: also checkpoint every this many steps (0 = epoch ends only)
    binarization: str = "none"  # 'dynamic' = a fresh Bernoulli draw each time an image is used
    eval_binarization_seed: int = 0  # fixes the test set's binarization under 'dynamic'
    shuffle_seed: int = -1  # seed of the data order; -1 = config.seed (a population shares one order)
    scale: str = "unit"  # 'unit' keeps [0, 1]; 'symmetric' maps to [-1, 1]
    # generated datasets ('dsprites_generated'): training images drawn without replacement from
    # the factor grid (0 = every grid point outside the test split) and test images (0 = the
    # dataset's default, 15,000); both from one fixed permutation, so splits never overlap
    num_train: int = 0
    num_test: int = 0

    def validate(self) -> None:
        if not _DATASET_NAME.fullmatch(self.name):
            _fail("data.name", self.name, f"must be one of {', '.join(DATASETS)} or a TFDS "
                  f"dataset name such as 'cifar10' or 'celeb_a:2.1.0'")
        if self.name in ("folder", "array") and not self.path:
            _fail("data.path", self.path, f"data.name={self.name!r} needs the path of the "
                  f"{'image folder' if self.name == 'folder' else '.npz/.npy file'}")
        if not 0.0 < self.test_fraction < 1.0:
            _fail("data.test_fraction", self.test_fraction, "must be in (0, 1)")
        _min_int("data.image_size", self.image_size, 0)
        _min_int("data.crop", self.crop, 0)
        _choice("data.channels", self.channels, CHANNELS)
        _choice("data.storage", self.storage, STORAGES)
        _choice("data.input", self.input, INPUTS)
        if not 0.0 < self.device_fraction <= 1.0:
            _fail("data.device_fraction", self.device_fraction, "must be in (0, 1]")
        _min_int("data.stream_chunk", self.stream_chunk, 1)
        _min_int("data.stream_prefetch", self.stream_prefetch, 1)
        _min_int("data.stream_checkpoint_steps", self.stream_checkpoint_steps, 0)
        _min_int("data.shuffle_seed", self.shuffle_seed, -1)
        _choice("data.binarization", self.binarization, BINARIZATIONS)
        _choice("data.scale", self.scale, SCALES)
        if self.binarization == "dynamic" and self.name == "binarized_mnist":
            _fail("data.binarization", self.binarization,
                  "binarized_mnist is already statically binarized; use 'none'")
        if self.binarization == "dynamic" and self.scale != "unit":
            _fail("data.scale", self.scale, "dynamic binarization needs scale 'unit'")
        _min_int("data.num_train", self.num_train, 0)
        _min_int("data.num_test", self.num_test, 0)
        if (self.num_train or self.num_test) and self.name not in GENERATED:
            _fail("data.num_train" if self.num_train else "data.num_test",
                  self.num_train or self.num_test, f"sizes a generated dataset "
                  f"({', '.join(GENERATED)}) only; other datasets take split syntax ('train[:1000]')")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    family: str = "vae"  # see FAMILIES
    network: str = "mlp"
    hidden: tuple[int, ...] = (400,)  # MLP hidden widths (encoder; the decoder mirrors them)
    conv_channels: tuple[int, ...] = (32, 64, 128)  # conv encoder channels; decoder mirrors
    conv_strides: tuple[int, ...] = (2, 2, 1)
    # conv network: Dense widths between the conv trunk and the posterior (the decoder mirrors
    # them before its first map); () = none. (256,) with channels (32, 32, 64, 64) and strides
    # 2 is the 64×64 network of Burgess et al. 2018 / Locatello et al. 2019
    conv_dense: tuple[int, ...] = ()
    # conv decoder output: 'conv' = a 3×3 conv after the last transposed conv; 'transpose' = the
    # last transposed conv gives the likelihood parameters (Burgess et al. 2018)
    conv_head: str = "conv"
    # how convolutions are computed (vae_jax.conv): 'auto' picks by platform ('subpixel' on CPU,
    # 'xla' on GPU/TPU); 'xla', 'canonical' and 'subpixel' share parameters, so a checkpoint
    # moves between them
    conv_impl: str = "auto"
    latent_dim: int = 20  # vae/cvae/ae/dae: size of z; vqvae: number of code vectors per image
    activation: str = "relu"
    init: str = "lecun"  # 'torch' reproduces PyTorch nn.Linear / nn.Conv2d initialisation
    likelihood: str = "bernoulli"
    sigma: float = 1.0  # fixed scale of the 'gaussian' (std) and 'laplace' (b) likelihoods
    min_log_sigma: float = -7.0  # soft floor on learned log-scales ('gaussian_learned', 'logistic')
    # dtype of the training forward/backward pass: 'bfloat16' casts parameters and inputs to
    # bf16 inside the loss (parameters, gradients and optimizer state stay float32; the
    # evaluators run in float32)
    compute_dtype: str = "float32"
    # p(z) for the families that offer a choice (Family.priors; vae_jax.priors): 'normal' N(0, I)
    # with the closed-form KL; 'mog' a learned mixture of prior_components diagonal Gaussians;
    # 'vamp' the VampPrior, the mixture of the posteriors of prior_components learned
    # pseudo-inputs (Tomczak & Welling 2018). The learned priors' KL is a Monte Carlo estimate
    prior: str = "normal"
    prior_components: int = 500  # K (Tomczak & Welling use 500 pseudo-inputs)
    # 'vamp': pseudo-inputs start as N(mean, std²) per pixel in the model's input units (their
    # MNIST values), and are clipped to the data range on every use (their hardtanh)
    pseudo_init_mean: float = 0.05
    pseudo_init_std: float = 0.01
    # every registered family's own section, as (family, section) pairs: cfg.model.<family>
    sections: tuple[tuple[str, Any], ...] = dataclasses.field(default_factory=lambda: tuple(
        (n, f.section()) for n, f in FAMILIES.items() if f.section is not None))

    def __getattr__(self, name: str) -> Any:
        for n, section in self.__dict__.get("sections", ()):
            if n == name:
                return section
        raise AttributeError(f"ModelConfig has no field or family section {name!r}")

    def validate(self) -> None:
        FAMILIES.check(self.family)
        _choice("model.compute_dtype", self.compute_dtype, COMPUTE_DTYPES)
        _choice("model.network", self.network, NETWORKS)
        _choice("model.activation", self.activation, ACTIVATIONS)
        _choice("model.init", self.init, INITS)
        _choice("model.likelihood", self.likelihood, LIKELIHOODS)
        _choice("model.prior", self.prior, PRIORS)
        _min_int("model.prior_components", self.prior_components, 1)
        for f in ("pseudo_init_mean", "pseudo_init_std"):
            v = getattr(self, f)
            if not (math.isfinite(v) and (f == "pseudo_init_mean" or v >= 0)):
                _fail(f"model.{f}", v, "must be a finite number" + (" >= 0" if f.endswith("std") else ""))
        _positive_ints("model.hidden", self.hidden, allow_empty=True)
        _positive_ints("model.conv_channels", self.conv_channels)
        _positive_ints("model.conv_strides", self.conv_strides)
        _positive_ints("model.conv_dense", self.conv_dense, allow_empty=True)
        _choice("model.conv_head", self.conv_head, CONV_HEADS)
        _choice("model.conv_impl", self.conv_impl, CONV_IMPLS)
        if len(self.conv_strides) != len(self.conv_channels):
            _fail("model.conv_strides", self.conv_strides,
                  f"needs one stride per conv layer ({len(self.conv_channels)})")
        if any(s not in (1, 2) for s in self.conv_strides):
            _fail("model.conv_strides", self.conv_strides, "strides must be 1 or 2")
        _min_int("model.latent_dim", self.latent_dim, 1)
        if not self.sigma > 0 or not math.isfinite(self.sigma):
            _fail("model.sigma", self.sigma, "must be a finite number > 0")
        for name, section in self.sections:
            section.validate()


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """The training objective; the batchable fields can differ across a population's members."""

    # 'elbo'; 'iwae': the k-sample importance-weighted bound (k = num_samples); 'beta_tcvae':
    # recon + KL + (β − 1)·TC (Chen et al. 2018); 'factorvae': recon + KL + β·TC with TC from a
    # discriminator (Kim & Mnih 2018; their γ is β here)
    name: str = "elbo"
    # weight of the KL term in the training loss (the logged ELBO is unweighted); for
    # 'beta_tcvae' and 'factorvae' the weight of the total-correlation term instead
    beta: float = batchable(1.0)
    num_samples: int = 1  # L Monte Carlo samples of z per datapoint (k for 'iwae')
    schedule: str = "constant"  # the KL weight over steps, see SCHEDULES
    warmup_steps: int = batchable(10000)  # 'linear': β rises from 0 to beta over this many steps
    cycle_steps: int = batchable(10000)  # 'cyclical': length of one cycle (Fu et al. 2019)
    cycle_ratio: float = 0.5  # 'cyclical': fraction of a cycle spent rising; the rest at beta
    free_bits: float = batchable(0.0)  # λ: KL floor in nats per dimension (or group); 0 = off
    free_bits_group: int = 1  # dimensions per free-bits group (1 = per dimension)
    capacity_max: float = batchable(25.0)  # 'capacity': C rises linearly from 0 to this (nats)
    capacity_steps: int = batchable(100000)  # 'capacity': steps over which C rises
    capacity_gamma: float = batchable(1000.0)  # 'capacity': γ in γ·|KL − C| (Burgess et al. 2018)
    tc_estimator: str = "mss"  # 'beta_tcvae': 'mws' or 'mss' estimate of log q(z) (Chen et al. 2018)
    # 'factorvae': the discriminator's hidden widths (LeakyReLU 0.2) and its Adam learning rate
    # (β1 0.5, β2 0.9), Kim & Mnih 2018
    discriminator_hidden: tuple[int, ...] = (1000,) * 6
    discriminator_lr: float = 1e-4

    def validate(self) -> None:
        OBJECTIVES.check(self.name)
        _choice("objective.schedule", self.schedule, SCHEDULES)
        if not (self.beta >= 0 and math.isfinite(self.beta)):
            _fail("objective.beta", self.beta, "must be a finite number >= 0")
        _min_int("objective.num_samples", self.num_samples, 1)
        for f in ("warmup_steps", "cycle_steps", "capacity_steps", "free_bits_group"):
            _min_int(f"objective.{f}", getattr(self, f), 1)
        if not 0 < self.cycle_ratio <= 1:
            _fail("objective.cycle_ratio", self.cycle_ratio, "must be in (0, 1]")
        for f in ("free_bits", "capacity_max", "capacity_gamma"):
            v = getattr(self, f)
            if not (v >= 0 and math.isfinite(v)):
                _fail(f"objective.{f}", v, "must be a finite number >= 0")
        _choice("objective.tc_estimator", self.tc_estimator, TC_ESTIMATORS)
        _positive_ints("objective.discriminator_hidden", self.discriminator_hidden)
        if not (self.discriminator_lr > 0 and math.isfinite(self.discriminator_lr)):
            _fail("objective.discriminator_lr", self.discriminator_lr, "must be a finite number > 0")
        if self.name in TC_OBJECTIVES and (self.schedule != "constant" or self.free_bits):
            _fail("objective.schedule", self.schedule, f"objective {self.name!r} weights the "
                  f"total correlation by beta: use schedule 'constant' and free_bits 0")
        if self.name == "iwae" and (self.schedule != "constant" or self.beta != 1.0 or self.free_bits):
            _fail("objective.name", self.name, "the IWAE bound takes no KL weighting: use "
                  "schedule 'constant', beta 1 and free_bits 0")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    name: str = "adam"
    learning_rate: float = batchable(1e-3)
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0  # 0 = no clipping
    # skip the whole optimizer step (parameters and optimizer state unchanged) when the gradient's
    # global norm exceeds this, or is not finite (VDVAE, Child 2021); 0 = off. Logged as
    # grad_skipped (fraction of an epoch's steps) and grad_norm when on
    skip_grad_norm: float = 0.0
    # learning rate over training passes (experiment.learning_rate_factor): 'constant', or
    # 'burda': learning_rate · 10^(−i/7) for 3^i passes, i = 0…7 (Burda et al. 2015; 3,280
    # passes in all, the last rate held after them); train.num_epochs stops it early
    schedule: str = "constant"

    def validate(self) -> None:
        _choice("optim.name", self.name, OPTIMIZERS)
        _choice("optim.schedule", self.schedule, LR_SCHEDULES)
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            _fail("optim.learning_rate", self.learning_rate, "must be a finite number > 0")
        for f in ("b1", "b2"):
            v = getattr(self, f)
            if not 0 <= v < 1:
                _fail(f"optim.{f}", v, "must be in [0, 1)")
        for f in ("eps", "weight_decay", "grad_clip_norm", "skip_grad_norm"):
            v = getattr(self, f)
            if not (v >= 0 and math.isfinite(v)):
                _fail(f"optim.{f}", v, "must be a finite number >= 0")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 128
    num_epochs: int = 10
    eval_every_epochs: int = 1  # test-set ELBO every N epochs (and after the last)
    checkpoint_every_epochs: int = 1  # checkpoint every N epochs (and after the last)
    keep_checkpoints: int = 3
    figures: bool = True  # write PNG figures into the workdir after training
    progress: bool = True  # a progress bar with loss and images/s
    # precision of float32 matmuls and convolutions (jax.default_matmul_precision): 'default'
    # lets the backend choose (bf16 passes on TPU, TF32 on recent GPUs), 'high' (bf16_3x / TF32),
    # 'highest' (full float32; vdvae-jax needed it on TPU to reproduce its numbers)
    matmul_precision: str = "default"

    def validate(self) -> None:
        _min_int("train.batch_size", self.batch_size, 1)
        _choice("train.matmul_precision", self.matmul_precision, MATMUL_PRECISIONS)
        _min_int("train.num_epochs", self.num_epochs, 1)
        _min_int("train.eval_every_epochs", self.eval_every_epochs, 1)
        _min_int("train.checkpoint_every_epochs", self.checkpoint_every_epochs, 1)
        _min_int("train.keep_checkpoints", self.keep_checkpoints, 1)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """``--mode eval``: which evaluators run (names from ``vae_jax.evaluate.EVALUATORS``, checked
    there before anything compiles) and their settings."""

    batch_size: int = 1000  # test images per compiled call
    num_samples: int = 1  # posterior samples per image for the test ELBO
    evaluators: tuple[str, ...] = ("test_elbo", "importance_sampling", "collapse", "reconstruction",
                                   "smoothness", "figures")
    k: int = 5000  # importance samples per image for log p(x) (Burda et al. 2015 report k = 5000)
    chunk: int = 10  # importance samples per scan step: memory ~ chunk * batch_size decoder outputs
    num_images: int = 0  # evaluate the first N test images only; 0 = the whole split
    active_unit_threshold: float = 0.01  # a latent is active when Cov_x(E_q[z_d]) exceeds this
    collapse_threshold: float = 0.1  # nats: a latent is collapsed when its mean KL is below this
    num_pairs: int = 8  # image pairs for the interpolation smoothness metric and figure
    interpolation_steps: int = 10  # points on each posterior-mean path
    # disentanglement evaluators (vae_jax.disentanglement) on the test split's posterior means
    # and factors; defaults of disentanglement_lib (Locatello et al. 2019)
    factor_train: int = 10000  # MIG points; DCI / SAP training points; training votes
    factor_test: int = 5000  # DCI / SAP test points; evaluation votes
    factor_bins: int = 20  # MIG: histogram bins per code dimension
    factor_batch: int = 64  # FactorVAE / β-VAE scores: images per vote
    factor_variance_threshold: float = 0.05  # FactorVAE score: dims with lower variance are pruned
    dci_model: str = "gbt"  # DCI importances: 'gbt' (sklearn defaults, as disentanglement_lib) or 'forest'
    overlap_neighbors: int = 5  # class_overlap: k of the k-NN probe

    def validate(self) -> None:
        _min_int("eval.batch_size", self.batch_size, 1)
        _min_int("eval.num_samples", self.num_samples, 1)
        if not self.evaluators or any(not v for v in self.evaluators) or len(
                set(self.evaluators)) != len(self.evaluators):
            _fail("eval.evaluators", self.evaluators, "must be a non-empty sequence of distinct names")
        _min_int("eval.k", self.k, 1)
        _min_int("eval.chunk", self.chunk, 1)
        _min_int("eval.num_images", self.num_images, 0)
        _min_int("eval.num_pairs", self.num_pairs, 1)
        _min_int("eval.interpolation_steps", self.interpolation_steps, 2)
        for f in ("factor_train", "factor_test", "factor_bins", "factor_batch", "overlap_neighbors"):
            _min_int(f"eval.{f}", getattr(self, f), 2)
        _choice("eval.dci_model", self.dci_model, DCI_MODELS)
        if not (self.factor_variance_threshold >= 0 and math.isfinite(self.factor_variance_threshold)):
            _fail("eval.factor_variance_threshold", self.factor_variance_threshold,
                  "must be a finite number >= 0")
        for f in ("active_unit_threshold", "collapse_threshold"):
            v = getattr(self, f)
            if not (v >= 0 and math.isfinite(v)):
                _fail(f"eval.{f}", v, "must be a finite number >= 0")


def batchable_paths(cfg: "Config | None" = None) -> tuple[str, ...]:
    """Dotted paths of every batchable field (core sections and the registered families')."""
    cfg = Config() if cfg is None else cfg
    out = []
    for sec in dataclasses.fields(cfg):
        sub = getattr(cfg, sec.name)
        if not dataclasses.is_dataclass(sub):
            continue
        parts = [(f"{sec.name}.", sub)] + ([(f"model.{n}.", s) for n, s in sub.sections]
                                           if sec.name == "model" else [])
        for prefix, obj in parts:
            out += [prefix + f.name for f in dataclasses.fields(obj) if f.metadata.get("batchable")]
    return tuple(out)


def population_fields() -> tuple[str, ...]:
    """Fields a population member may set: the seed (its key stream) and the batchable fields;
    members differing only in these share one compiled program."""
    return ("seed",) + batchable_paths()


POPULATION_STRATEGIES = ("auto", "vmap", "map")


@dataclasses.dataclass(frozen=True)
class PopulationConfig:
    """Members trained together in one compiled program. Each member is a dict of overrides of
    :func:`population_fields`, e.g.
    ``({"objective.beta": 0.5}, {"objective.beta": 2.0, "seed": 1})``; a field a member leaves out
    keeps the config's value. Empty: a single run. Members share one data order
    (``data.shuffle_seed``, default the config's seed); each draws its noise from its own seed.
    On the command line: ``--config.population.members="({'objective.beta': 0.5}, ...)"``."""

    members: tuple[dict[str, Any], ...] = ()
    # 'vmap': members step in lockstep, their matmuls batched (one wide matmul for the first
    # layer over the shared batch): the accelerator layout. 'map': the compiled epoch runs the
    # members one after another (lax.map), each ending bit for bit where it would alone.
    # 'auto': 'map' on CPU, else 'vmap' (experiment.resolve_strategy)
    strategy: str = "auto"
    # evaluators (names in vae_jax.evaluate.EVALUATORS) run on every member after training,
    # written to members/<name>/eval.json; checked before anything compiles
    evaluators: tuple[str, ...] = ("collapse", "smoothness")

    def validate(self) -> None:
        _choice("population.strategy", self.strategy, POPULATION_STRATEGIES)
        if any(not v for v in self.evaluators) or len(set(self.evaluators)) != len(self.evaluators):
            _fail("population.evaluators", self.evaluators, "must be a sequence of distinct names")
        seen: dict[tuple, int] = {}
        for i, m in enumerate(self.members):
            key = tuple(sorted(m.items()))
            if key in seen:
                _fail(f"population.members[{i}]", m, f"duplicates member {seen[key]}")
            seen[key] = i


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """The device mesh (``vae_jax.sharding``): axes ('members', 'data'). The batch is split over
    'data'; a population's members over 'members' (a single run uses members=1). -1 = all devices
    not used by the other axis. ``members * data`` must equal the number of devices."""

    data: int = -1
    members: int = 1
    # 'replicated': every device holds all parameters; 'fsdp': weight matrices of at least
    # fsdp_min_size elements are split over 'data' along their largest divisible axis (XLA
    # gathers them for each use), for models whose state does not fit one device
    param_sharding: str = "replicated"
    fsdp_min_size: int = 2 ** 18
    # multi-host: 'auto' calls jax.distributed.initialize() when the process runs under a
    # cluster launcher with more than one task (SLURM_NTASKS, OMPI_COMM_WORLD_SIZE,
    # JAX_NUM_PROCESSES, a multi-host TPU slice); 'on' always; 'off' never
    distributed: str = "auto"

    def validate(self) -> None:
        for f in ("data", "members"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or not (v == -1 or v >= 1):
                _fail(f"mesh.{f}", v, "must be -1 (all remaining devices) or an integer >= 1")
        if self.data == -1 and self.members == -1:
            _fail("mesh.members", self.members, "only one of mesh.data and mesh.members may be -1")
        _choice("mesh.param_sharding", self.param_sharding, PARAM_SHARDINGS)
        _min_int("mesh.fsdp_min_size", self.fsdp_min_size, 1)
        _choice("mesh.distributed", self.distributed, DISTRIBUTED)


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    data: DataConfig = DataConfig()
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    objective: ObjectiveConfig = ObjectiveConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    population: PopulationConfig = PopulationConfig()
    mesh: MeshConfig = MeshConfig()

    def validate(self) -> None:
        _min_int("seed", self.seed, 0)
        for f in dataclasses.fields(self):
            sub = getattr(self, f.name)
            if dataclasses.is_dataclass(sub):
                sub.validate()
        if self.data.name == "binarized_mnist" and self.model.likelihood != "bernoulli":
            _fail("model.likelihood", self.model.likelihood,
                  "binarized_mnist is binary data: use 'bernoulli'")
        if self.data.binarization == "dynamic" and self.model.likelihood != "bernoulli":
            _fail("model.likelihood", self.model.likelihood,
                  "dynamically binarized data needs 'bernoulli'")
        if self.model.likelihood == "bernoulli" and self.data.scale != "unit":
            _fail("data.scale", self.data.scale, "the 'bernoulli' likelihood needs data in [0, 1] ('unit')")
        if self.model.likelihood == "logistic" and (self.data.scale != "symmetric"
                                                    or self.data.name == "binarized_mnist"):
            _fail("model.likelihood", self.model.likelihood, "the discretized logistic models 8-bit "
                  "images scaled to [-1, 1]: use data.scale 'symmetric' on a grayscale dataset")
        family = FAMILIES[self.model.family]
        if family.conditional and self.data.name not in LABELLED:
            _fail("model.family", self.model.family, f"a conditional family needs class labels and "
                  f"{self.data.name} has none; use one of {', '.join(LABELLED)}")
        if not family.has_kl and self.objective.name == "iwae":
            _fail("objective.name", self.objective.name,
                  f"the IWAE bound needs a stochastic encoder; family '{self.model.family}' has none")
        if not family.has_kl and self.objective.beta != 1.0:
            _fail("objective.beta", self.objective.beta,
                  f"family '{self.model.family}' has no KL term to weight; use 1.0")
        if not family.has_kl and (self.objective.schedule != "constant" or self.objective.free_bits):
            _fail("objective.schedule", self.objective.schedule, f"family '{self.model.family}' "
                  "has no KL term to schedule (use 'constant' and free_bits 0)")
        if self.objective.name in TC_OBJECTIVES and self.model.family != "vae":
            _fail("objective.name", self.objective.name, f"estimates the total correlation of a "
                  f"single Gaussian latent layer: use model.family 'vae', not {self.model.family!r}")
        if self.objective.name in TC_OBJECTIVES and self.model.prior != "normal":
            _fail("objective.name", self.objective.name, "splits the KL to a factorised N(0, I) "
                  f"prior: use model.prior 'normal', not {self.model.prior!r}")
        if self.model.prior not in family.priors:
            _fail("model.prior", self.model.prior, f"family '{self.model.family}' supports "
                  f"{', '.join(family.priors)}")
        family.validate(self)

        if self.mesh.members not in (1, -1) and not self.population.members:
            _fail("mesh.members", self.mesh.members, "a single run has one member: use 1 (or set "
                  "population.members)")
        if self.population.members and self.mesh.members > 1 and len(
                self.population.members) % self.mesh.members:
            _fail("mesh.members", self.mesh.members, f"must divide the "
                  f"{len(self.population.members)} population members")

        for i, member in enumerate(member_configs(self)):  # each member is a valid config
            try:
                member.validate()
            except ConfigError as e:
                raise ConfigError(f"config.population.members[{i}]: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts; the model's family sections appear as ``model.<family>``."""
        out = dataclasses.asdict(dataclasses.replace(self, model=dataclasses.replace(
            self.model, sections=())))
        del out["model"]["sections"]
        out["model"].update({n: dataclasses.asdict(s) for n, s in self.model.sections})
        return out


def _choice(field: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        _fail(field, value, f"must be one of {', '.join(allowed)}")


def _min_int(field: str, value: Any, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        _fail(field, value, f"must be an integer >= {lo}")


def _positive_ints(field: str, value: Any, allow_empty: bool = False) -> None:
    if not isinstance(value, tuple) or (not value and not allow_empty) or any(
        isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value
    ):
        _fail(field, value, "must be a " + ("" if allow_empty else "non-empty ")
              + "sequence of integers >= 1")


def _convert(cls: type, raw: Any, prefix: str) -> Any:
    """Builds dataclass ``cls`` from a mapping, checking names and types of every field."""
    if not isinstance(raw, (dict, ml_collections.ConfigDict)):
        _fail(prefix.rstrip("."), raw, f"must be a section ({cls.__name__})")
    items = dict(raw.items())
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)} - {"sections"}
    sections = {}
    if cls is ModelConfig:  # family sections: model.<family> with the family's own dataclass
        default = dict(ModelConfig().sections)
        names |= set(default)
        sections = {n: _convert(type(s), items.pop(n), f"{prefix}{n}.") if n in items else s
                    for n, s in default.items()}
    for key in items:
        if key not in names:
            _fail(prefix + key, items[key], f"unknown field; allowed: {', '.join(sorted(names))}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in items:
            continue
        value, hint, field = items[f.name], hints[f.name], prefix + f.name
        if dataclasses.is_dataclass(hint):
            kwargs[f.name] = _convert(hint, value, field + ".")
        else:
            kwargs[f.name] = _coerce(field, value, hint)
    if cls is ModelConfig:
        kwargs["sections"] = tuple(sections.items())
    return cls(**kwargs)


def _coerce(field: str, value: Any, hint: Any) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            _fail(field, value, "must be True or False")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(field, value, "must be an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(field, value, "must be a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            _fail(field, value, "must be a string")
        return value
    if typing.get_origin(hint) is dict:  # a population member: {dotted field: value}
        return _coerce_member(field, value)
    if typing.get_origin(hint) is tuple and typing.get_origin(typing.get_args(hint)[0]) is dict:
        if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
            _fail(field, value, "must be a sequence of dicts of field overrides")
        return tuple(_coerce(f"{field}[{i}]", v, typing.get_args(hint)[0]) for i, v in enumerate(value))
    if typing.get_origin(hint) is tuple:
        (inner, _) = typing.get_args(hint)
        if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
            _fail(field, value, "must be a sequence of " + ("strings" if inner is str else "integers"))
        return tuple(_coerce(field, v, inner) for v in value)
    raise TypeError(f"unsupported config type {hint} for {field}")  # a bug in this module


def field_type(path: str) -> Any:
    """The type of the dotted config field ``path`` ('seed', 'objective.beta'); None if unknown."""
    parts = path.split(".")
    cls: Any = Config
    for i, name in enumerate(parts):
        hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
        if cls is ModelConfig:
            hints = dict(hints, **{n: type(s) for n, s in ModelConfig().sections})
            hints.pop("sections")
        if name not in hints:
            return None
        cls = hints[name]
        if dataclasses.is_dataclass(cls) != (i < len(parts) - 1):
            return None
    return cls


def _coerce_member(field: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, (dict, ml_collections.ConfigDict)):
        _fail(field, value, "must be a dict of field overrides, e.g. {'objective.beta': 0.5}")
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or field_type(k) is None:
            _fail(f"{field}[{k!r}]", v, f"unknown field; a member may set {', '.join(population_fields())}")
        if k not in population_fields():
            _fail(f"{field}[{k!r}]", v, "not batchable (it changes the compiled program: make it a "
                  f"separate run); a member may set {', '.join(population_fields())}")
        out[k] = _coerce(f"{field}[{k!r}]", v, field_type(k))
    return out


def coerce_field(path: str, value: Any, where: str = "") -> Any:
    """``value`` checked and converted for the dotted config field ``path`` (ConfigError if the
    field does not exist or the type is wrong); ``where`` names the field in the message."""
    hint = field_type(path) if isinstance(path, str) else None
    if hint is None:
        _fail(where or str(path), value, "unknown field")
    return _coerce(where or path, value, hint)


def with_overrides(cfg: Any, overrides: dict[str, Any]) -> Any:
    """``cfg`` with dotted fields replaced, e.g. ``{"objective.beta": 2.0, "seed": 1}`` or
    ``{"model.hvae.latents": (64,)}`` (values as given: coerce and validate separately)."""
    top = {k: v for k, v in overrides.items() if "." not in k}
    nested: dict[str, dict[str, Any]] = {}
    for k, v in overrides.items():
        if "." in k:
            head, rest = k.split(".", 1)
            nested.setdefault(head, {})[rest] = v
    if isinstance(cfg, ModelConfig):
        sections = tuple((n, with_overrides(s, nested.pop(n, {}))) for n, s in cfg.sections)
        top["sections"] = sections
    return dataclasses.replace(cfg, **top, **{
        s: with_overrides(getattr(cfg, s), f) for s, f in nested.items()})


def member_configs(cfg: Config) -> list[Config]:
    """One single-run config per population member (none for an empty population): the member's
    overrides applied, ``population.members`` emptied and ``data.shuffle_seed`` pinned to the
    population's data order, so training it alone trains exactly that member."""
    if not cfg.population.members:
        return []
    shuffle = cfg.data.shuffle_seed if cfg.data.shuffle_seed >= 0 else cfg.seed
    base = dataclasses.replace(cfg, population=dataclasses.replace(cfg.population, members=()),
                               data=dataclasses.replace(cfg.data, shuffle_seed=shuffle),
                               mesh=dataclasses.replace(cfg.mesh, members=1))
    return [with_overrides(base, m) for m in cfg.population.members]


def format_value(v: Any) -> str:
    """A config value as it appears in folder names: 0.1, 1e-05, 400-400, True, gaussian."""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return format(v, ".12g")
    if isinstance(v, (tuple, list)):
        return "-".join(format_value(x) for x in v) or "none"
    return str(v)


def label(overrides: Mapping[str, Any], keys: Mapping[str, str] | None = None,
          empty: str = "default") -> str:
    """A deterministic, filesystem-safe name for a set of overrides: ``beta=0.5,seed=1``.

    Fields are named by their last component unless ``keys`` maps them to something else (the
    sweep passes full paths where last components collide); long names are cut and suffixed with
    a hash of the whole, so distinct overrides keep distinct names."""
    if not overrides:
        return empty
    keys = keys or {}
    parts = [f"{keys.get(k, k.rsplit('.', 1)[-1])}={format_value(v)}" for k, v in overrides.items()]
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", ",".join(parts))
    if len(name) > 120:
        digest = hashlib.sha1(json.dumps(sorted(overrides.items()), default=str).encode()).hexdigest()
        name = f"{name[:100]}-{digest[:10]}"
    return name


def member_names(cfg: Config) -> list[str]:
    """Folder names of the population's members, from their overrides."""
    return [label(m) for m in cfg.population.members]


def from_config_dict(raw: ml_collections.ConfigDict | dict) -> Config:
    """Converts and validates a ConfigDict; raises ConfigError with one clear line."""
    cfg = _convert(Config, raw, "")
    cfg.validate()
    return cfg


def to_config_dict(cfg: Config) -> ml_collections.ConfigDict:
    """The inverse of :func:`from_config_dict`."""
    return ml_collections.ConfigDict(cfg.to_dict())


def base_config() -> ml_collections.ConfigDict:
    """Every field at its default: the base that each ``configs/*.py`` overrides."""
    return to_config_dict(Config())
