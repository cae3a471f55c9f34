"""Populations: members trained in one compiled program end where they would alone; resume;
per-member outputs; member validation in one line."""

from __future__ import annotations

import dataclasses
import json
import os

import chex
import jax
import numpy as np
import pytest

from conftest import load_config_dict, tiny
from vae_jax import experiment
from vae_jax import checkpoint, config as config_lib, train
from vae_jax.metrics import read_jsonl

MEMBERS = ({"objective.beta": 0.5}, {"objective.beta": 2.0, "seed": 1},
           {"optim.learning_rate": 3e-3, "seed": 2})
EPOCHS = 3
# vmap turns each member's dense layers into batched (and, for the first layer over the shared
# batch, one wider) matmuls whose float32 summation order differs from the single run's, so on
# CPU the agreement is not bit for bit: measured max |Δparam| ≈ 6e-8 after 45 steps (jax 0.10.2,
# XLA:CPU). Initialisation is bit for bit. The tolerance leaves room for other BLAS kernels;
# a real divergence (wrong key stream, data order or β) gives differences of order 1e-2.
PARAM_ATOL = 1e-5


def _population_cfg(**sections):
    cfg = tiny(train=dict(num_epochs=EPOCHS), **sections)
    return dataclasses.replace(cfg, population=dataclasses.replace(
        cfg.population, members=MEMBERS, strategy="vmap", evaluators=("collapse", "smoothness")))


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One uninterrupted population (shared by the tests below)."""
    cfg = _population_cfg()
    wd = tmp_path_factory.mktemp("population")
    summary = train.train_and_evaluate(cfg, str(wd))
    exps, ds, step, state = experiment.restore(cfg, str(wd))
    return cfg, wd, summary, step, state.params


@pytest.fixture(scope="module")
def alone(trained, tmp_path_factory):
    """Member 1 (β = 2, seed 1: a batchable value and its own key stream differ from the base)
    trained alone with train.train_and_evaluate: (config, summary, final state)."""
    cfg = trained[0]
    m = config_lib.member_configs(cfg)[1]
    assert m.seed == 1 and m.objective.beta == 2.0 and not m.population.members
    assert m.data.shuffle_seed == cfg.seed  # the population's data order, pinned
    wd = tmp_path_factory.mktemp("alone")
    summary = train.train_and_evaluate(m, str(wd))
    ck = checkpoint.Checkpointer(str(wd))
    step, state = ck.restore_latest(jax.eval_shape(experiment.Experiment.build(m, (8, 8, 1)).init_state))
    ck.close()
    assert step == EPOCHS * 15
    return m, summary, state


def test_initialisation_under_vmap_is_bit_for_bit(trained):
    members = config_lib.member_configs(trained[0])
    exp = experiment.Experiment.build(members[0], (8, 8, 1))
    init = jax.jit(experiment.init_fn(exp))(experiment.seeds(members))
    alone = jax.jit(experiment.Experiment.build(members[1], (8, 8, 1)).init_state)()  # as a single run does
    chex.assert_trees_all_equal(alone, experiment.member(init, 1))


def test_member_trained_in_population_matches_it_trained_alone(trained, alone):
    cfg, wd, summary, step, params = trained
    _, single, state = alone
    worst = 0.0
    chex.assert_trees_all_equal_shapes_and_dtypes(state.params, experiment.member(params, 1))
    for a, b in zip(_leaves(state.params), _leaves(experiment.member(params, 1))):
        np.testing.assert_allclose(b, a, rtol=0, atol=PARAM_ATOL)
        worst = max(worst, float(np.max(np.abs(a - b))))
    # the other members really are different models
    other = _leaves(experiment.member(params, 0))
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(_leaves(state.params), other)) > 1e-2
    name = config_lib.member_names(cfg)[1]
    assert summary["members"][name]["elbo"] == pytest.approx(single["elbo"], rel=1e-4)
    print(f"vmap: max |Δparam| population vs alone after {step} steps: {worst:.2e}")


@pytest.mark.slow
def test_map_strategy_is_bit_for_bit_the_single_run(trained, alone, tmp_path):
    cfg = trained[0]
    cfg = dataclasses.replace(cfg, population=dataclasses.replace(
        cfg.population, members=MEMBERS[:2], strategy="map", evaluators=()))
    summary = train.train_and_evaluate(cfg, str(tmp_path))
    assert summary["metadata"]["strategy"] == "map"
    _, _, step, pstate = experiment.restore(cfg, str(tmp_path))
    _, single, state = alone
    chex.assert_trees_all_equal(state, experiment.member(pstate, 1))  # params, optimizer state, step, key
    assert summary["members"]["beta=2,seed=1"]["elbo"] == single["elbo"]


def test_per_member_outputs(trained):
    cfg, wd, summary, step, _ = trained
    names = config_lib.member_names(cfg)
    assert names == ["beta=0.5", "beta=2,seed=1", "learning_rate=0.003,seed=2"]
    plan = json.loads((wd / "population.json").read_text())
    assert [m["name"] for m in plan["members"]] == names
    assert set(summary["members"]) == set(names)
    assert json.loads((wd / "summary.json").read_text())["step"] == step
    for name, over in zip(names, MEMBERS):
        d = wd / "members" / name
        cfg_i = config_lib.from_config_dict(json.loads((d / "config.json").read_text()))
        assert not cfg_i.population.members and cfg_i == config_lib.with_overrides(
            config_lib.member_configs(cfg)[0], {"seed": 0, "objective.beta": 1.0, **over})
        rows = list(read_jsonl(d / "metrics.jsonl"))
        tr = [r for r in rows if r["split"] == "train"]
        assert [r["epoch"] for r in tr] == list(range(1, EPOCHS + 1))
        beta = over.get("objective.beta", 1.0)
        for r in tr:
            assert r["beta"] == beta
            assert r["kl_contribution"] == pytest.approx(beta * r["kl"], rel=1e-5, abs=1e-5)
            assert r["population_images_per_s"] == pytest.approx(3 * r["images_per_s"])
        assert len([r for r in rows if r["split"] == "test"]) == EPOCHS
        s = json.loads((d / "summary.json").read_text())
        assert s["elbo"] == pytest.approx(-s["recon"] - s["kl"], rel=1e-5)
        assert s["metadata"]["population"]["name"] == name and s["metadata"]["seed"] == cfg_i.seed
        ev = json.loads((d / "eval.json").read_text())
        assert "active_units" in ev and "interpolation_smoothness" in ev
    # β = 2 pays more for KL than β = 0.5 (same seed-independent data order)
    kl = {n: summary["members"][n]["kl"] for n in names}
    assert kl["beta=2,seed=1"] < kl["beta=0.5"]


@pytest.mark.slow
def test_interrupted_population_resumes_to_the_same_parameters(trained, tmp_path):
    cfg, _, _, step, params = trained
    cfg = dataclasses.replace(cfg, population=dataclasses.replace(cfg.population, evaluators=()))

    class Stop(Exception):
        pass

    def stop_after_one(epoch):
        if epoch == 1:
            raise Stop

    wd = tmp_path / "resumed"
    with pytest.raises(Stop):
        train.train_and_evaluate(cfg, str(wd), on_epoch_end=stop_after_one)
    assert not (wd / "summary.json").exists()
    # a row written after the last checkpoint (as by a process killed before saving) is dropped
    name = config_lib.member_names(cfg)[0]
    with open(wd / "members" / name / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 10 ** 6, "split": "train", "epoch": 99}) + "\n")
    train.train_and_evaluate(cfg, str(wd))
    _, _, s, resumed = experiment.restore(cfg, str(wd))
    assert s == step
    chex.assert_trees_all_equal(params, resumed.params)  # the same program: bit for bit
    epochs = [r["epoch"] for r in read_jsonl(wd / "members" / name / "metrics.jsonl") if r["split"] == "train"]
    assert epochs == list(range(1, EPOCHS + 1))

    # another population cannot resume from these checkpoints
    other = dataclasses.replace(cfg, population=dataclasses.replace(
        cfg.population, members=({"objective.beta": 4.0},) + MEMBERS[1:]))
    with pytest.raises(checkpoint.CheckpointError, match="holds a population with members"):
        train.train_and_evaluate(other, str(wd))


@pytest.mark.slow
def test_non_finite_member_is_named(tmp_path):
    cfg = tiny(train=dict(num_epochs=1))
    cfg = dataclasses.replace(cfg, population=dataclasses.replace(
        cfg.population, members=({"seed": 0}, {"optim.learning_rate": 1e30, "seed": 1}), evaluators=()))
    with pytest.raises(train.NonFiniteLossError, match=r"population member 1 \(learning_rate=1e\+30,seed=1\): non-finite"):
        train.train_and_evaluate(cfg, str(tmp_path))
    assert not os.path.exists(tmp_path / "checkpoints" / "15")


BAD_MEMBERS = [
    (({"objective.betta": 1.0},), "config.population.members[0]['objective.betta']=1.0: unknown field"),
    (({"model.latent_dim": 4},), "config.population.members[0]['model.latent_dim']=4: not batchable"),
    (({"objective.beta": "big"},), "config.population.members[0]['objective.beta']='big': must be a number"),
    (({"seed": 1.5},), "config.population.members[0]['seed']=1.5: must be an integer"),
    (({"seed": 0}, {"objective.beta": -1.0}),
     "config.population.members[1]: config.objective.beta=-1.0: must be a finite number >= 0"),
    (({"seed": 3}, {"seed": 3}), "config.population.members[1]={'seed': 3}: duplicates member 0"),
    (([1, 2],), "config.population.members[0]=[1, 2]: must be a dict of field overrides"),
]


@pytest.mark.parametrize("members,message", BAD_MEMBERS, ids=[m for _, m in BAD_MEMBERS])
def test_bad_members_raise_one_clear_line(members, message):
    raw = load_config_dict("quickstart").to_dict()
    raw["population"] = {"members": members}
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.from_config_dict(raw)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_members_round_trip_and_evaluator_names():
    c = load_config_dict("quickstart")
    c.population.members = ({"objective.beta": 2, "seed": 1},)
    cfg = config_lib.from_config_dict(c)
    assert cfg.population.members == ({"objective.beta": 2.0, "seed": 1},)  # coerced to float
    assert isinstance(cfg.population.members[0]["objective.beta"], float)
    assert config_lib.from_config_dict(config_lib.to_config_dict(cfg)) == cfg
    assert experiment.resolve_strategy("auto") == ("map" if jax.default_backend() == "cpu" else "vmap")
    c.population.strategy = "pmap"
    with pytest.raises(config_lib.ConfigError, match="config.population.strategy='pmap': must be one of auto, vmap, map"):
        config_lib.from_config_dict(c)
    c.population.strategy = "auto"
    c.population.evaluators = ("smoothness", "smoothness")
    with pytest.raises(config_lib.ConfigError, match="distinct names"):
        config_lib.from_config_dict(c)
    c.population.evaluators = ("smoothnes",)
    cfg = config_lib.from_config_dict(c)
    with pytest.raises(config_lib.ConfigError, match="unknown 'smoothnes'"):
        train.train_and_evaluate(cfg, "/nonexistent/never/created")
