"""Shared fixtures: config files by path, tiny configs on the embedded digits, real-data root."""

from __future__ import annotations

import importlib.util
import os
import pathlib

import pytest

from vae_jax import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def load_config_dict(name: str):
    """``get_config()`` of ``configs/<name>.py`` as an ml-collections ConfigDict."""
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", CONFIGS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def tiny(name: str = "quickstart", **sections) -> config_lib.Config:
    """A shipped config shrunk to seconds on the embedded digits; ``sections`` override fields,
    e.g. ``tiny(train=dict(num_epochs=2))``."""
    c = load_config_dict(name)
    c.data.name = "digits"
    c.data.manual_dir = ""
    c.data.test_split = ""
    c.data.image_size, c.data.crop, c.data.channels = 0, 0, "keep"  # digits is 8x8 grey as it is
    c.data.num_train = c.data.num_test = 0  # sizes of generated datasets only
    if c.data.scale != "symmetric" and c.model.likelihood == "bernoulli":
        c.data.scale = "unit"
    c.model.hidden = (32,)
    c.model.conv_channels = (8, 16, 16)
    if len(c.model.conv_strides) != 3:  # a deeper net (64x64 dSprites): 8x8 digits take 2, 2, 1
        c.model.conv_strides = (2, 2, 1)
    c.train.batch_size = 100
    c.train.num_epochs = 3
    c.train.eval_every_epochs = 1
    c.train.checkpoint_every_epochs = 1
    c.train.progress = False
    c.train.figures = False
    c.eval.batch_size = 100
    for section, fields in sections.items():
        target = c if section == "top" else getattr(c, section)
        for k, v in fields.items():
            if isinstance(v, dict):  # a family section: model=dict(hvae=dict(latents=(8, 4)))
                getattr(target, k).update(v)
            else:
                setattr(target, k, v)
    return config_lib.from_config_dict(c)


def replace(cfg: config_lib.Config, **sections) -> config_lib.Config:
    """``cfg`` with fields of sections replaced: ``replace(cfg, train=dict(num_epochs=5))``
    (nested dicts for family sections: ``model=dict(hvae=dict(latents=(6,)))``)."""
    def flat(d, prefix):
        for k, v in d.items():
            yield from flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [(prefix + k, v)]
    return config_lib.with_overrides(cfg, dict(flat(sections, "")))


class Stop(Exception):
    """Raised by :func:`stop_after` to interrupt a run between epochs."""


def stop_after(epochs: int):
    """An ``on_epoch_end`` hook that interrupts the run once ``epochs`` epochs are done."""
    def hook(done: int) -> None:
        if done == epochs:
            raise Stop
    return hook


@pytest.fixture(scope="session")
def datasets_root() -> pathlib.Path:
    """The raw dataset files (``VAE_JAX_DATASETS``); skips only when they are absent."""
    root = os.environ.get("VAE_JAX_DATASETS", "")
    if not root or not (pathlib.Path(root) / "mnist" / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("real MNIST files absent: set VAE_JAX_DATASETS to a folder with mnist/ (e.g. ../shared/datasets)")
    return pathlib.Path(root)
