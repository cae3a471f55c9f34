"""The package's structure: imports flow one way, and a model family, its config section, an
auxiliary network and an evaluator defined entirely in this file train, resume, evaluate, draw
figures and run as a population without editing any module of vae_jax/."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import pathlib

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import Stop, replace, stop_after, tiny
from vae_jax import config as config_lib, evaluate, experiment, objectives, train
from vae_jax.metrics import read_jsonl
from vae_jax.models import Auxiliary, base, vae

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "vae_jax"
ENTRY_POINTS = {"vae_jax.main", "vae_jax.sweep"}


def _imports() -> dict[str, set[str]]:
    """Every vae_jax module -> the vae_jax modules it imports (at any depth in the file)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vae_jax"):
                for a in node.names:  # `from vae_jax import x` names a module x
                    sub = f"{node.module}.{a.name}"
                    deps.add(sub if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists()
                             or (PACKAGE.parent / sub.replace(".", "/")).is_dir() else node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("vae_jax")}
        graph[name] = deps - {name, "vae_jax"}
    return graph


def test_no_import_cycle_and_only_entry_points_import_the_training_loop():
    graph = _imports()
    assert {"vae_jax.train", "vae_jax.experiment", "vae_jax.evaluate", "vae_jax.config"} <= set(graph)
    # a package imports its own submodules (registration); a cycle is a path back to a module
    graph["vae_jax.models"] -= {m for m in graph if m.startswith("vae_jax.models.")}
    state: dict[str, int] = {}

    def visit(m, path):
        if state.get(m) == 1:
            raise AssertionError(f"import cycle: {' -> '.join(path + [m])}")
        if state.get(m) == 2:
            return
        state[m] = 1
        for d in graph.get(m, ()):
            visit(d, path + [m])
        state[m] = 2

    for m in graph:
        visit(m, [])
    importers = {m for m, deps in graph.items() if "vae_jax.train" in deps}
    assert importers <= ENTRY_POINTS, importers
    assert "vae_jax.experiment" not in graph["vae_jax.config"]
    assert not {"vae_jax.train", "vae_jax.evaluate"} & graph["vae_jax.experiment"]


# ----------------------------------------------------------------------------------------------
# A family that lives in this file: a VAE whose Bernoulli decoder divides its logits by a learned
# per-pixel temperature, an auxiliary network (a diagonal Gaussian fitted by maximum likelihood to
# the posterior means, with its own Adam), its own config section and its own evaluator.


@dataclasses.dataclass(frozen=True)
class TempConfig:
    prior_lr: float = 0.05

    def validate(self) -> None:
        if not self.prior_lr > 0:
            raise config_lib.ConfigError(f"config.model.tempvae.prior_lr={self.prior_lr!r}: must be > 0")


class TempVAE(vae.VAE):
    def setup(self):
        super().setup()
        self.log_temp = self.param("log_temp", nn.initializers.zeros, self.image_shape)

    def decode(self, z):
        return self.decoder(z) / jnp.exp(self.log_temp)

    def __call__(self, x, num_samples=1):
        mu, logvar = self.encode(x)
        z = objectives.reparameterize(self.make_rng("noise"), mu, logvar, num_samples)
        params = self.decode(z.reshape(-1, z.shape[-1])).reshape(num_samples, *x.shape[:-1], -1)
        return {"mu": mu, "logvar": logvar, "z": z, "params": params}


class TempFamily(vae.VAEFamily):
    name = "tempvae"
    section = TempConfig

    def build(self, cfg, image_shape):
        return TempVAE(cfg.model, tuple(image_shape))

    def terms(self, model, params, batch, key, num_samples, aux=None):
        x = batch["image"]
        out = model.apply({"params": params}, x, num_samples, rngs={"noise": key})
        t = vae.gaussian_terms(model.cfg, x, out)
        t["_mu"] = out["mu"]
        t["temperature"] = jnp.broadcast_to(jnp.mean(jnp.exp(params["log_temp"])), x.shape[:1])
        return t

    def auxiliaries(self, cfg):
        d = cfg.model.latent_dim

        def loss(p, batch, terms, key):
            return -jnp.mean(objectives.diag_gaussian_log_prob(terms["_mu"], p["mu"], p["logvar"]))

        return {"code_prior": Auxiliary(
            init=lambda key, batch: {"mu": jnp.zeros(d), "logvar": jnp.zeros(d)}, loss=loss,
            optimizer=optax.adam(cfg.model.tempvae.prior_lr))}

    def describe_latents(self, cfg):
        return f"latent {cfg.model.latent_dim}, learned per-pixel temperature"


def _temperature(ctx):
    yield "mean_temperature", float(jnp.mean(jnp.exp(ctx.params["log_temp"])))


@pytest.fixture
def tempvae():
    base.register(TempFamily())
    evaluate.EVALUATORS["temperature"] = evaluate.Evaluator(_temperature, lambda c: "exp(log_temp) averaged")
    yield
    del config_lib.FAMILIES["tempvae"], evaluate.EVALUATORS["temperature"]


def _cfg(**sections):
    return tiny("quickstart", model=dict(family="tempvae", latent_dim=4), **sections)


def _state(cfg, wd):
    return experiment.restore(cfg, str(wd)).state


def test_a_family_defined_in_a_test_trains_resumes_evaluates_and_runs_as_a_population(tempvae, tmp_path):
    cfg = _cfg(train=dict(num_epochs=4, figures=True))
    assert cfg.model.tempvae == TempConfig()
    with pytest.raises(config_lib.ConfigError, match=r"config.model.tempvae.prior_lr=-1.0: must be > 0"):
        tiny("quickstart", model=dict(family="tempvae", tempvae=dict(prior_lr=-1.0)))

    summary = train.train_and_evaluate(cfg, str(tmp_path / "straight"))
    assert summary["metadata"]["model"] == "tempvae mlp 32 relu, latent 4, learned per-pixel temperature"
    rows = [r for r in read_jsonl(tmp_path / "straight" / "metrics.jsonl") if r["split"] == "train"]
    assert rows[-1]["loss"] < rows[0]["loss"] and "code_prior_loss" in rows[0]
    state = _state(cfg, tmp_path / "straight")
    assert float(jnp.abs(state.params["log_temp"]).max()) > 1e-3  # the temperature is learned

    # the auxiliary network fitted the posterior means: its mean approaches their mean over the
    # training set (an independent numpy computation), and it is checkpointed with the model
    r = experiment.restore(cfg, str(tmp_path / "straight"))
    exp = r.experiments[0]
    x = exp.prepare(jnp.asarray(r.dataset.train_images), jax.random.key(0))
    mu = np.asarray(exp.family.encode(exp.model, state.params, {"image": x})[0])
    fitted = np.asarray(state.aux["code_prior"]["params"]["mu"])
    assert np.abs(fitted - mu.mean(0)).max() < 0.5 * np.abs(mu.mean(0)).max() + 0.1
    assert np.abs(fitted).max() > 1e-3

    # interrupted after 2 epochs, then resumed: every leaf (model, optimizer, auxiliary) equal
    with pytest.raises(Stop):
        train.train_and_evaluate(cfg, str(tmp_path / "resumed"), on_epoch_end=stop_after(2))
    train.train_and_evaluate(cfg, str(tmp_path / "resumed"))
    chex.assert_trees_all_equal(_state(cfg, tmp_path / "resumed"), state)

    # every evaluator that applies, the family's own among them, and the figures (the factor
    # metrics need a dataset with ground-truth factors: tests/test_disentanglement.py)
    names = tuple(n for n in evaluate.EVALUATORS if n not in evaluate.FACTOR_EVALUATORS)
    ev = replace(cfg, eval=dict(k=8, chunk=4, evaluators=names))
    out = evaluate.evaluate_workdir(ev, str(tmp_path / "straight"))
    assert not [n for n, b in out["metadata"]["evaluators"].items() if "skipped" in b]
    assert out["mean_temperature"] == pytest.approx(float(jnp.mean(jnp.exp(state.params["log_temp"]))))
    assert out["elbo"] == pytest.approx(summary["elbo"], abs=1e-4)
    assert out["is_log_px"] >= out["elbo"] - 0.5
    assert {"samples.png", "traversals.png", "kl_per_dim.png"} <= set(out["figures"])
    assert json.loads((tmp_path / "straight" / "eval.json").read_text())["mean_temperature"] == out["mean_temperature"]

    # a 2-member population ('map': each member bit for bit its single run)
    pop = replace(cfg, population=dict(members=({"seed": 0}, {"objective.beta": 2.0}), strategy="map",
                                       evaluators=("collapse", "temperature")))
    result = train.train_and_evaluate(pop, str(tmp_path / "pop"))
    assert set(result["members"]) == {"seed=0", "beta=2"}
    pstate = _state(pop, tmp_path / "pop")
    chex.assert_trees_all_equal(experiment.member(pstate, 0), state)
    assert not np.array_equal(experiment.member(pstate.params, 1)["log_temp"], state.params["log_temp"])
    member_eval = json.loads((tmp_path / "pop" / "members" / "beta=2" / "eval.json").read_text())
    assert member_eval["mean_temperature"] > 0 and "active_units" in member_eval
    assert os.path.exists(tmp_path / "pop" / "members" / "beta=2" / "figures" / "samples.png")
