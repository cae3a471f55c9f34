"""Configs: every shipped file validates; bad values fail before anything compiles, with one
line naming the field, the value and what is allowed; the CLI prints that line and exits 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import CONFIGS, ROOT, load_config_dict
from vae_jax import config as config_lib

SHIPPED = sorted(p.stem for p in CONFIGS.glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_validate(name):
    cfg = config_lib.from_config_dict(load_config_dict(name))
    assert isinstance(cfg, config_lib.Config)
    assert cfg.model.family in config_lib.FAMILIES


def test_config_files_carry_the_requested_recipes():
    pt = config_lib.from_config_dict(load_config_dict("mnist_pytorch_example"))
    assert (pt.model.hidden, pt.model.latent_dim, pt.train.batch_size, pt.train.num_epochs) == ((400,), 20, 128, 10)
    assert pt.model.init == "torch" and pt.optim.learning_rate == 1e-3
    s0 = config_lib.from_config_dict(load_config_dict("mnist_mlp"))
    assert (s0.model.hidden, s0.model.latent_dim) == ((400, 400), 20)
    fc = config_lib.from_config_dict(load_config_dict("fashion_conv"))
    assert (fc.data.name, fc.data.scale, fc.model.network, fc.model.latent_dim) == ("fashion_mnist", "symmetric", "conv", 64)
    assert (fc.train.num_epochs, fc.train.checkpoint_every_epochs, fc.objective.beta) == (60, 10, 1.0)
    assert config_lib.from_config_dict(load_config_dict("mnist_2d")).model.latent_dim == 2


BAD = [
    ("model", "family", "gan", "config.model.family='gan': must be one of"),
    ("model", "likelihood", "poisson", "config.model.likelihood='poisson'"),
    ("model", "latent_dim", 0, "config.model.latent_dim=0: must be an integer >= 1"),
    ("model", "hidden", (400, -1), "config.model.hidden=(400, -1)"),
    ("model", "sigma", -1.0, "config.model.sigma=-1.0: must be a finite number > 0"),
    ("model", "conv_strides", (2, 2), "needs one stride per conv layer"),
    ("objective", "beta", -0.5, "config.objective.beta=-0.5: must be a finite number >= 0"),
    ("objective", "num_samples", 0, "config.objective.num_samples=0"),
    ("optim", "learning_rate", 0.0, "config.optim.learning_rate=0.0"),
    ("optim", "name", "rmsprop", "config.optim.name='rmsprop'"),
    ("train", "batch_size", 0, "config.train.batch_size=0"),
    ("train", "num_epochs", -3, "config.train.num_epochs=-3"),
    ("data", "name", "CIFAR 10", "config.data.name='CIFAR 10': must be one of digits, mnist"),
    ("data", "binarization", "always", "config.data.binarization='always'"),
    ("data", "scale", "zero_one", "config.data.scale='zero_one'"),
]


@pytest.mark.parametrize("section,field,value,message", BAD, ids=[f"{s}.{f}" for s, f, *_ in BAD])
def test_bad_values_raise_one_clear_line(section, field, value, message):
    c = load_config_dict("quickstart")
    setattr(getattr(c, section), field, value)
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.from_config_dict(c)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("overrides,message", [
    (dict(data=dict(name="binarized_mnist", binarization="dynamic")), "already statically binarized"),
    (dict(data=dict(scale="symmetric")), "'bernoulli' likelihood needs data in [0, 1]"),
    (dict(data=dict(binarization="dynamic"), model=dict(likelihood="gaussian")), "needs 'bernoulli'"),
    (dict(data=dict(name="binarized_mnist"), model=dict(likelihood="laplace")), "binary data"),
])
def test_impossible_combinations_are_rejected(overrides, message):
    c = load_config_dict("quickstart")
    for section, fields in overrides.items():
        for k, v in fields.items():
            setattr(getattr(c, section), k, v)
    with pytest.raises(config_lib.ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config_lib.from_config_dict(c)


def test_unknown_field_and_wrong_type_are_rejected():
    raw = config_lib.base_config().to_dict()
    raw["model"]["latent_size"] = 3
    with pytest.raises(config_lib.ConfigError, match=r"config.model.latent_size=3: unknown field"):
        config_lib.from_config_dict(raw)
    raw = config_lib.base_config().to_dict()
    raw["train"]["batch_size"] = "128"
    with pytest.raises(config_lib.ConfigError, match="config.train.batch_size='128': must be an integer"):
        config_lib.from_config_dict(raw)
    raw = config_lib.base_config().to_dict()
    raw["train"]["figures"] = 1
    with pytest.raises(config_lib.ConfigError, match="must be True or False"):
        config_lib.from_config_dict(raw)


def test_round_trip_through_config_dict():
    cfg = config_lib.from_config_dict(load_config_dict("fashion_conv"))
    assert config_lib.from_config_dict(config_lib.to_config_dict(cfg)) == cfg


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "vae_jax.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_cli_bad_value_prints_one_line_and_writes_nothing(tmp_path):
    wd = tmp_path / "wd"
    r = _cli("--config", str(CONFIGS / "quickstart.py"), "--workdir", str(wd), "--config.model.latent_dim=-2")
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert lines[-1] == "error: config.model.latent_dim=-2: must be an integer >= 1"
    assert not wd.exists()  # nothing was created for a bad config


def test_cli_missing_workdir_is_an_error():
    r = _cli("--config", str(CONFIGS / "quickstart.py"))
    assert r.returncode == 2 and "--workdir" in r.stderr


def test_cli_missing_data_names_the_files(tmp_path):
    r = _cli("--config", str(CONFIGS / "mnist_mlp.py"), "--workdir", str(tmp_path / "wd"),
             f"--config.data.manual_dir={tmp_path / 'empty'}", f"--config.data.data_dir={tmp_path / 'tfds'}")
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "train-images-idx3-ubyte.gz" in last
