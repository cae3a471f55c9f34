"""Grid launcher and aggregation: plans (packing, names, slices), bad definitions in one line, an
interrupted sweep re-run to completion with every run done once, rate–distortion of a trained β
sweep, aggregation of hand-made results, the CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from conftest import CONFIGS, ROOT, load_config_dict
from vae_jax import aggregate, config as config_lib, sweep
from vae_jax.metrics import read_jsonl
from vae_jax.sweep import Spec, axis, product, zip_

SWEEPS = ROOT / "configs" / "sweeps"


def _tiny_base(**fields):
    c = load_config_dict("quickstart")
    c.model.hidden = (32,)
    c.train.batch_size = 100
    c.train.num_epochs = 2
    c.train.eval_every_epochs = 1
    c.train.checkpoint_every_epochs = 1
    c.train.progress = False
    c.train.figures = False
    c.eval.batch_size = 297
    c.population.evaluators = ()
    for k, v in fields.items():
        section, name = k.split(".")
        setattr(getattr(c, section), name, v)
    return c


# ----------------------------------------------------------------------------------------------
# Plans


def test_grid_building_blocks():
    assert axis("objective.beta", [1, 2]) == [{"objective.beta": 1}, {"objective.beta": 2}]
    g = product({"model.latent_dim": [2, 4]}, zip_(axis("model.likelihood", ["bernoulli", "gaussian"]),
                                                   axis("model.sigma", [1.0, 0.1])))
    assert g == [{"model.latent_dim": 2, "model.likelihood": "bernoulli", "model.sigma": 1.0},
                 {"model.latent_dim": 2, "model.likelihood": "gaussian", "model.sigma": 0.1},
                 {"model.latent_dim": 4, "model.likelihood": "bernoulli", "model.sigma": 1.0},
                 {"model.latent_dim": 4, "model.likelihood": "gaussian", "model.sigma": 0.1}]


def test_plan_packs_batchable_fields_and_splits_structural_ones():
    spec = Spec(grid=product({"model.latent_dim": [2, 4], "objective.beta": [0.5, 2.0],
                              "optim.learning_rate": [1e-3]}), seeds=(0, 1))
    runs = sweep.plan(_tiny_base(), spec)
    assert [r.name for r in runs] == ["latent_dim=2", "latent_dim=4"]
    for r, d in zip(runs, (2, 4)):
        assert r.overrides == {"model.latent_dim": d}
        assert r.config.model.latent_dim == d
        assert len(r.members) == 4 and r.config.population.members == r.members
        assert r.members[0] == {"objective.beta": 0.5, "optim.learning_rate": 1e-3, "seed": 0}
        assert {(m["objective.beta"], m["seed"]) for m in r.members} == {(0.5, 0), (0.5, 1), (2.0, 0), (2.0, 1)}
    assert [r.name for r in sweep.plan(_tiny_base(), spec)] == [r.name for r in runs]  # deterministic
    # max_members splits a population; 1 means every point is its own run
    split = sweep.plan(_tiny_base(), Spec(grid=spec.grid, seeds=(0, 1), max_members=3))
    assert [(r.name, len(r.members)) for r in split] == [
        ("latent_dim=2.part0", 3), ("latent_dim=2.part1", 1), ("latent_dim=4.part0", 3), ("latent_dim=4.part1", 1)]
    assert len(sweep.plan(_tiny_base(), Spec(grid=spec.grid, seeds=(0, 1), max_members=1))) == 8
    # a pure β sweep is one run named 'base'; a sweep without batchable fields has one member each
    assert [r.name for r in sweep.plan(_tiny_base(), Spec(grid=product({"objective.beta": [1, 2]})))] == ["base"]
    runs = sweep.plan(_tiny_base(), Spec(grid=product({"data.name": ["digits"], "optim.name": ["adam", "sgd"]})))
    assert [r.name for r in runs] == ["data.name=digits,optim.name=adam", "data.name=digits,optim.name=sgd"]
    assert all(r.members == ({},) for r in runs)


def test_slices_are_disjoint_and_cover_every_run():
    runs = sweep.plan(_tiny_base(), Spec(grid=product({"model.latent_dim": [1, 2, 3, 4, 5]})))
    slices = [sweep.select(runs, i, 3) for i in range(3)]
    names = [r.name for s in slices for r in s]
    assert sorted(names) == sorted(r.name for r in runs) and len(names) == len(set(names))
    with pytest.raises(config_lib.ConfigError, match=r"--index=3 --count=3"):
        sweep.select(runs, 3, 3)


BAD = [
    (Spec(grid=product({"model.latent_size": [2]})), "unknown config field 'model.latent_size'"),
    (Spec(grid=product({"objective.beta": ["x"]})), "sweep point 0: config.objective.beta='x': must be a number"),
    (Spec(grid=product({"objective.beta": [1.0, -1.0]})),
     "sweep run base: config.population.members[1]: config.objective.beta=-1.0: must be a finite number >= 0"),
    (Spec(grid=product({"model.latent_dim": [0]})), "sweep run latent_dim=0: config.model.latent_dim=0"),
    (Spec(grid=[{"seed": 1}], seeds=(0, 1)), "sweep grid sets 'seed' and the sweep has seeds"),
    (Spec(grid=[{"objective.beta": 1.0}, {"objective.beta": 1}]), "sweep point 1 {'objective.beta': 1.0}: duplicates point 0"),
    (Spec(grid=product({"objective.beta": [1.0]}), seeds=(0, 0)), "sweep seeds=(0, 0): must be distinct"),
    (Spec(grid=[{"population.members": ()}]), "unknown config field 'population.members'"),
    (Spec(grid=product({"objective.beta": [1.0]}), max_members=-1), "sweep max_members=-1"),
]


@pytest.mark.parametrize("spec,message", BAD, ids=[m for _, m in BAD])
def test_bad_sweeps_fail_in_one_line(spec, message):
    with pytest.raises(config_lib.ConfigError) as e:
        sweep.plan(_tiny_base(), spec)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("build,message", [
    (lambda: zip_(axis("objective.beta", [1, 2]), axis("seed", [0])), "factors have different lengths [2, 1]"),
    (lambda: product(axis("objective.beta", [1]), axis("objective.beta", [2])), "field 'objective.beta' appears in more"),
    (lambda: axis("objective.beta", []), "has no values"),
])
def test_bad_grids_fail_in_one_line(build, message):
    with pytest.raises(config_lib.ConfigError) as e:
        build()
    assert message in str(e.value) and "\n" not in str(e.value)


def test_base_config_may_not_define_members():
    base = _tiny_base()
    base.population.members = ({"seed": 1},)
    with pytest.raises(config_lib.ConfigError, match="defines population.members"):
        sweep.plan(base, Spec())


@pytest.mark.parametrize("name,runs,members", [("mnist_beta", 1, 18), ("fashion_beta", 1, 12),
                                                ("mnist_ablation", 8, 24), ("dsprites_beta", 2, 36),
                                                ("dsprites_factorvae", 1, 18)])
def test_shipped_sweeps_plan(name, runs, members):
    path = SWEEPS / f"{name}.py"
    doc = path.read_text()
    assert f"python -m vae_jax.sweep --config configs/sweeps/{name}.py --workdir" in doc
    plan = sweep.plan(sweep.load_config_file(path), sweep.load_spec(path))
    assert (len(plan), sum(len(r.members) for r in plan)) == (runs, members)
    if name == "fashion_beta":  # seed 004's track
        cfg = plan[0].config
        assert sorted({m["objective.beta"] for m in plan[0].members}) == [0.1, 0.5, 1.0, 2.0]
        assert (cfg.data.name, cfg.model.network, cfg.model.latent_dim) == ("fashion_mnist", "conv", 64)
        assert "smoothness" in cfg.population.evaluators and "class_overlap" in cfg.population.evaluators
    if name == "dsprites_beta":  # β-VAE and β-TCVAE, β ∈ {1, 2, 4, 6, 8, 16}
        assert {r.config.objective.name for r in plan} == {"elbo", "beta_tcvae"}
        assert sorted({m["objective.beta"] for m in plan[0].members}) == [1, 2, 4, 6, 8, 16]
        cfg = plan[0].config
        assert (cfg.data.name, cfg.model.conv_channels, cfg.model.conv_dense, cfg.model.latent_dim) == (
            "dsprites_generated", (32, 32, 64, 64), (256,), 10)
        assert {"mig", "dci"} <= set(cfg.population.evaluators)
    if name == "mnist_beta":
        assert sorted({m["objective.beta"] for m in plan[0].members}) == [0.1, 0.5, 1.0, 2.0, 4.0, 8.0]
    if name == "mnist_ablation":
        assert {tuple(sorted(r.overrides)) for r in plan} == {
            ("model.latent_dim", "model.likelihood", "model.sigma", "objective.schedule")}
        assert all(sorted(m["seed"] for m in r.members) == [0, 1, 2] for r in plan)


# ----------------------------------------------------------------------------------------------
# A trained sweep: interrupted, re-run, aggregated

BETAS = (0.25, 1.0, 4.0)


@pytest.fixture(scope="module")
def interrupted_sweep(tmp_path_factory):
    """Two runs (latent 4 and 8) of three β members each; the first call is interrupted during
    the second run, the second call finishes."""
    wd = str(tmp_path_factory.mktemp("sweep"))
    base = _tiny_base(**{"train.num_epochs": 3})
    spec = Spec(grid=product({"model.latent_dim": [4, 8], "objective.beta": list(BETAS)}))

    class Stop(Exception):
        pass

    def stop(run, epoch):
        if run == "latent_dim=8" and epoch == 1:
            raise Stop

    log: list[str] = []
    with pytest.raises(Stop):
        sweep.run_sweep(base, spec, wd, on_epoch_end=stop, out=log.append)
    done_first = os.path.getmtime(os.path.join(wd, "runs", "latent_dim=4", "summary.json"))
    second = sweep.run_sweep(base, spec, wd, out=log.append)
    return wd, base, spec, second, done_first, log


def test_interrupted_sweep_rerun_finishes_every_run_once(interrupted_sweep):
    wd, base, spec, second, done_first, log = interrupted_sweep
    assert second == [("latent_dim=4", "done"), ("latent_dim=8", "resumed")]
    assert os.path.getmtime(os.path.join(wd, "runs", "latent_dim=4", "summary.json")) == done_first
    assert [s for _, s in sweep.run_sweep(base, spec, wd, out=log.append, aggregate=False)] == ["done", "done"]
    for run in ("latent_dim=4", "latent_dim=8"):
        for beta in BETAS:
            d = os.path.join(wd, "runs", run, "members", f"beta={beta:g}")
            epochs = [r["epoch"] for r in read_jsonl(os.path.join(d, "metrics.jsonl")) if r["split"] == "train"]
            assert epochs == [1, 2, 3]  # each epoch trained and logged exactly once
            assert json.load(open(os.path.join(d, "summary.json")))["step"] == 3 * 15
    plan = json.load(open(os.path.join(wd, "sweep.json")))
    assert [r["name"] for r in plan["runs"]] == ["latent_dim=4", "latent_dim=8"]
    # the same workdir with an edited sweep: refused in one line, nothing retrained
    edited = Spec(grid=product({"model.latent_dim": [4, 8], "objective.beta": [0.25, 1.0, 2.0]}))
    with pytest.raises(config_lib.ConfigError, match=r"runs/latent_dim=4 holds members \['beta=0.25', "
                       r"'beta=1', 'beta=4'\], but the sweep now gives that run"):
        sweep.run_sweep(base, edited, wd, out=log.append)


def test_trained_beta_sweep_rate_distortion(interrupted_sweep):
    wd = interrupted_sweep[0]
    for f in ("results.csv", "results.md", "results_mean_std.csv", "results_mean_std.md",
              "rate_distortion.png", "elbo_vs_beta.png", "ablation.png"):
        assert os.path.getsize(os.path.join(wd, f)) > 0, f
    rows, overrides = aggregate.collect(wd)
    assert overrides == ["model.latent_dim"] and len(rows) == 6
    rd = aggregate.rate_distortion(aggregate.group(rows, overrides), overrides)
    assert set(rd) == {"latent_dim=4", "latent_dim=8"}
    for curve in rd.values():
        betas, kls, recons = zip(*curve)
        assert betas == BETAS
        assert all(a > b for a, b in zip(kls, kls[1:])), curve  # KL (rate) falls as β rises
        assert recons[-1] > recons[0], curve  # and distortion rises


# ----------------------------------------------------------------------------------------------
# Aggregation of hand-made results


def _unit(folder, seed, beta, elbo, kl, latent=8, ev=None, member=True, metrics=None):
    os.makedirs(folder, exist_ok=True)
    cfg = config_lib.Config().to_dict()
    cfg["seed"], cfg["objective"]["beta"], cfg["model"]["latent_dim"] = seed, beta, latent
    cfg["data"]["shuffle_seed"] = 0 if member else -1
    json.dump(cfg, open(os.path.join(folder, "config.json"), "w"))
    json.dump({"elbo": elbo, "recon": -elbo - kl, "kl": kl, "bits_per_dim": 0.1, "step": 100,
               "metadata": {"epochs": 5, "dataset": "digits", "estimator": "ELBO"}},
              open(os.path.join(folder, "summary.json"), "w"))
    if ev is not None:
        json.dump(ev, open(os.path.join(folder, "eval.json"), "w"))
    if metrics is not None:
        with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
            for r in metrics:
                f.write(json.dumps(r) + "\n")


def test_aggregation_on_fixture_results(tmp_path):
    wd = tmp_path
    # a population (its own summary lists members and is skipped), plus two plain single runs
    pop = wd / "runs" / "latent_dim=8"
    os.makedirs(pop)
    json.dump({"step": 100, "members": {}}, open(pop / "summary.json", "w"))
    json.dump(config_lib.Config().to_dict(), open(pop / "config.json", "w"))
    for seed, beta, elbo, kl in [(0, 1.0, -100.0, 20.0), (1, 1.0, -102.0, 22.0),
                                 (0, 4.0, -110.0, 8.0), (1, 4.0, -114.0, 6.0)]:
        _unit(pop / "members" / f"beta={beta:g},seed={seed}", seed, beta, elbo, kl,
              ev={"active_units": 12 if beta == 1 else 5, "is_log_px": elbo + 3.0,
                  "interpolation_smoothness": 0.01 * beta},
              metrics=[{"step": 50, "split": "train", "kl_contribution": 1.0},
                       {"step": 100, "split": "train", "kl_contribution": beta * kl},
                       {"step": 100, "split": "test", "elbo": elbo}])
    _unit(wd / "runs" / "latent_dim=2" / "members" / "beta=1,seed=0", 0, 1.0, -120.0, 5.0, latent=2)
    _unit(wd / "runs" / "latent_dim=2" / "members" / "beta=1,seed=1", 1, 1.0, -124.0, 7.0, latent=2)
    os.makedirs(wd / "runs" / "unfinished" / "members" / "x")  # no summary yet: not a row

    written = aggregate.aggregate(str(wd))
    names = {os.path.basename(p) for p in written}
    assert {"results.csv", "results.md", "results_mean_std.csv", "results_mean_std.md",
            "rate_distortion.png", "elbo_vs_beta.png", "active_units_vs_beta.png",
            "interpolation_smoothness_vs_beta.png", "ablation.png"} <= names
    rows, overrides = aggregate.collect(str(wd))
    assert overrides == ["model.latent_dim"] and len(rows) == 6
    r = next(r for r in rows if r["member"] == "beta=4,seed=1")
    assert r["run"] == os.path.join("runs", "latent_dim=8") and r["seed"] == 1 and r["beta"] == 4.0
    assert r["nll"] == pytest.approx(111.0) and r["beta_kl"] == pytest.approx(24.0)
    assert r["train_kl_contribution"] == pytest.approx(24.0) and r["active_units"] == 5

    import csv

    table = list(csv.DictReader(open(wd / "results_mean_std.csv")))
    g = {(t["model.latent_dim"], t["beta"]): t for t in table}
    assert set(g) == {("8", "1.0"), ("8", "4.0"), ("2", "1.0")}
    t = g[("8", "4.0")]
    assert t["n"] == "2" and float(t["elbo_mean"]) == pytest.approx(-112.0)
    assert float(t["elbo_std"]) == pytest.approx(math.sqrt(8.0))  # ddof 1 over the two seeds
    assert float(t["nll_mean"]) == pytest.approx(109.0)
    md = (wd / "results_mean_std.md").read_text()
    assert "| 8 | 4 | 2 | (0, 1) | -112 ± 2.8284 |" in md
    assert len((wd / "results.md").read_text().splitlines()) == 4 + 2 + 6
    rd = aggregate.rate_distortion(aggregate.group(rows, overrides), overrides)
    assert rd["latent_dim=8"] == [(1.0, 21.0, pytest.approx(80.0)), (4.0, 7.0, pytest.approx(105.0))]


def test_aggregate_cli_on_an_empty_folder(tmp_path):
    r = subprocess.run([sys.executable, "-m", "vae_jax.aggregate", str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and "no finished runs" in r.stderr


# ----------------------------------------------------------------------------------------------
# Command line


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "vae_jax.sweep", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_cli_dry_run_prints_the_plan_and_trains_nothing(tmp_path):
    wd = tmp_path / "wd"
    r = _cli("--config", str(SWEEPS / "mnist_ablation.py"), "--workdir", str(wd), "--dry-run",
             "--index=1", "--count=3", "--config.train.num_epochs=1")
    assert r.returncode == 0, r.stderr
    assert "8 run(s), 24 member(s) in all; this slice: 3 run(s), 9 member(s)" in r.stdout
    assert "new            3  likelihood=bernoulli,sigma=1,latent_dim=8,schedule=linear -> seed=0, seed=1, seed=2" in r.stdout
    assert not wd.exists()


def test_cli_bad_sweep_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
                   "from vae_jax.config import base_config\nfrom vae_jax.sweep import Spec, product\n"
                   "def get_config():\n    return base_config()\n"
                   "def get_sweep():\n    return Spec(grid=product({'model.latnt_dim': [2, 4]}))\n")
    r = _cli("--config", str(bad), "--workdir", str(tmp_path / "wd"))
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert lines[-1] == ("error: sweep point 0 {'model.latnt_dim': 2}: unknown config field "
                         "'model.latnt_dim'")
    r = _cli("--config", str(CONFIGS / "quickstart.py"), "--workdir", str(tmp_path / "wd"))
    assert r.returncode == 2 and "defines no get_sweep()" in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "wd").exists()


@pytest.mark.parametrize("path", sorted(SWEEPS.glob("*.py")), ids=lambda p: p.stem)
def test_every_shipped_sweep_plans_through_the_launcher(path, tmp_path, capsys):
    """Each sweep file's plan is built and every run's config validated (the launcher's dry run)."""
    wd = tmp_path / "wd"
    assert sweep.main(["sweep", f"--config={path}", f"--workdir={wd}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    spec = sweep.load_spec(path)
    runs = sweep.plan(sweep.load_config_file(path), spec)
    assert f"{len(runs)} run(s), {sum(len(r.members) for r in runs)} member(s) in all" in out
    assert not wd.exists()
