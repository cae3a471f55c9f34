"""Typed, frozen experiment configuration, validated at the boundary.

Config files (``configs/*.py``) return an ``ml_collections.ConfigDict``; :func:`from_config_dict`
turns it into the frozen dataclasses below and checks every field before anything is traced or
compiled. A wrong field raises :class:`ConfigError` with one line naming the field, the value and
what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

import ml_collections

FAMILIES = ("vae",)
NETWORKS = ("mlp", "conv")
ACTIVATIONS = ("relu", "tanh", "elu", "gelu", "swish", "leaky_relu")
INITS = ("lecun", "torch")
LIKELIHOODS = ("bernoulli", "gaussian", "gaussian_learned", "laplace")
DATASETS = ("digits", "mnist", "fashion_mnist", "binarized_mnist")
BINARIZATIONS = ("none", "dynamic")
SCALES = ("unit", "symmetric")
OPTIMIZERS = ("adam", "adamw", "sgd")


class ConfigError(ValueError):
    """A configuration value is wrong; the message is one line: field, value, what is allowed."""


def _fail(field: str, value: Any, allowed: str) -> typing.NoReturn:
    raise ConfigError(f"config.{field}={value!r}: {allowed}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    name: str = "digits"
    train_split: str = ""  # '' = the dataset's default ('train'); TFDS split syntax is accepted
    test_split: str = ""  # '' = the dataset's default ('test')
    data_dir: str = ""  # TFDS data_dir; '' = TFDS default (~/tensorflow_datasets)
    manual_dir: str = ""  # folder with the raw files (or a root holding <name>/ folders)
    binarization: str = "none"  # 'dynamic' = a fresh Bernoulli draw each time an image is used
    eval_binarization_seed: int = 0  # fixes the test set's binarization under 'dynamic'
    scale: str = "unit"  # 'unit' keeps [0, 1]; 'symmetric' maps to [-1, 1]

    def validate(self) -> None:
        _choice("data.name", self.name, DATASETS)
        _choice("data.binarization", self.binarization, BINARIZATIONS)
        _choice("data.scale", self.scale, SCALES)
        if self.binarization == "dynamic" and self.name == "binarized_mnist":
            _fail("data.binarization", self.binarization,
                  "binarized_mnist is already statically binarized; use 'none'")
        if self.binarization == "dynamic" and self.scale != "unit":
            _fail("data.scale", self.scale, "dynamic binarization needs scale 'unit'")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    family: str = "vae"
    network: str = "mlp"
    hidden: tuple[int, ...] = (400,)  # MLP hidden widths (encoder; the decoder mirrors them)
    conv_channels: tuple[int, ...] = (32, 64, 128)  # conv encoder channels; decoder mirrors
    conv_strides: tuple[int, ...] = (2, 2, 1)
    latent_dim: int = 20
    activation: str = "relu"
    init: str = "lecun"  # 'torch' reproduces PyTorch nn.Linear / nn.Conv2d initialisation
    likelihood: str = "bernoulli"
    sigma: float = 1.0  # fixed scale of the 'gaussian' (std) and 'laplace' (b) likelihoods
    min_log_sigma: float = -7.0  # floor on the learned log-scale of 'gaussian_learned'

    def validate(self) -> None:
        _choice("model.family", self.family, FAMILIES)
        _choice("model.network", self.network, NETWORKS)
        _choice("model.activation", self.activation, ACTIVATIONS)
        _choice("model.init", self.init, INITS)
        _choice("model.likelihood", self.likelihood, LIKELIHOODS)
        _positive_ints("model.hidden", self.hidden, allow_empty=True)
        _positive_ints("model.conv_channels", self.conv_channels)
        _positive_ints("model.conv_strides", self.conv_strides)
        if len(self.conv_strides) != len(self.conv_channels):
            _fail("model.conv_strides", self.conv_strides,
                  f"needs one stride per conv layer ({len(self.conv_channels)})")
        if any(s not in (1, 2) for s in self.conv_strides):
            _fail("model.conv_strides", self.conv_strides, "strides must be 1 or 2")
        _min_int("model.latent_dim", self.latent_dim, 1)
        if not self.sigma > 0 or not math.isfinite(self.sigma):
            _fail("model.sigma", self.sigma, "must be a finite number > 0")


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    beta: float = 1.0  # weight of the KL term in the training loss (the logged ELBO is unweighted)
    num_samples: int = 1  # L, Monte Carlo samples of z per datapoint

    def validate(self) -> None:
        if not (self.beta >= 0 and math.isfinite(self.beta)):
            _fail("objective.beta", self.beta, "must be a finite number >= 0")
        _min_int("objective.num_samples", self.num_samples, 1)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    name: str = "adam"
    learning_rate: float = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0  # 0 = no clipping

    def validate(self) -> None:
        _choice("optim.name", self.name, OPTIMIZERS)
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            _fail("optim.learning_rate", self.learning_rate, "must be a finite number > 0")
        for f in ("b1", "b2"):
            v = getattr(self, f)
            if not 0 <= v < 1:
                _fail(f"optim.{f}", v, "must be in [0, 1)")
        for f in ("eps", "weight_decay", "grad_clip_norm"):
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

    def validate(self) -> None:
        _min_int("train.batch_size", self.batch_size, 1)
        _min_int("train.num_epochs", self.num_epochs, 1)
        _min_int("train.eval_every_epochs", self.eval_every_epochs, 1)
        _min_int("train.checkpoint_every_epochs", self.checkpoint_every_epochs, 1)
        _min_int("train.keep_checkpoints", self.keep_checkpoints, 1)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 1000
    num_samples: int = 1  # posterior samples per image for the test ELBO

    def validate(self) -> None:
        _min_int("eval.batch_size", self.batch_size, 1)
        _min_int("eval.num_samples", self.num_samples, 1)


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
    names = {f.name for f in dataclasses.fields(cls)}
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
    if typing.get_origin(hint) is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
            _fail(field, value, "must be a sequence of integers")
        (inner, _) = typing.get_args(hint)
        return tuple(_coerce(field, v, inner) for v in value)
    raise TypeError(f"unsupported config type {hint} for {field}")  # a bug in this module


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
