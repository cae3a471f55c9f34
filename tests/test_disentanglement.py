"""Disentanglement: the generated dSprites grid, the metrics on constructed codes with known
answers, the total-correlation estimators against the Gaussian TC, FactorVAE's discriminator,
and one short training run of β-TCVAE and FactorVAE through the normal path."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny
from vae_jax import config as config_lib, data, disentanglement as dis, evaluate, experiment, networks
from vae_jax import estimators, objectives, train
from vae_jax.data import sprites
from vae_jax.models import vae

# ----------------------------------------------------------------------------------------------
# Generated dSprites


def test_sprites_grid_order_and_factor_values():
    assert sprites.NUM_IMAGES == 3 * 6 * 40 * 32 * 32 == 737_280
    idx = np.array([0, 1, 32, 1024, 40 * 1024, 6 * 40 * 1024, sprites.NUM_IMAGES - 1])
    c = sprites.classes_of(idx)
    # the released file's order: shape slowest, then scale, orientation, x, y fastest
    np.testing.assert_array_equal(c, [[0, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 1, 0],
                                      [0, 0, 1, 0, 0], [0, 1, 0, 0, 0], [1, 0, 0, 0, 0],
                                      [2, 5, 39, 31, 31]])
    np.testing.assert_array_equal(sprites.index_of(c), idx)
    f = sprites.factors(c)
    np.testing.assert_allclose(f["value_scale"][[0, 4, 6]], [0.5, 0.6, 1.0], rtol=1e-6)
    np.testing.assert_array_equal(f["value_shape"][[0, 5, 6]], [1.0, 2.0, 3.0])
    np.testing.assert_allclose(f["value_orientation"][-1], 2 * np.pi, rtol=1e-6)
    np.testing.assert_allclose(f["value_x_position"][2], 1 / 31, rtol=1e-6)


def _centroid(img):
    ys, xs = np.nonzero(img[..., 0])
    return ys.mean(), xs.mean()


def test_each_factor_changes_the_image_as_stated():
    base = np.array([1, 3, 5, 10, 12])  # an ellipse (not symmetric under a quarter turn)

    def img(**change):
        c = base.copy()
        for name, v in change.items():
            c[sprites.FACTORS.index(name)] = v
        return sprites.render(c[None])[0]

    x0 = img()
    assert x0.shape == (64, 64, 1) and x0.dtype == np.uint8 and set(np.unique(x0)) == {0, 1}
    # x / y position: the same sprite moved by whole pixels (columns / rows)
    np.testing.assert_array_equal(np.roll(x0, 7, axis=1), img(x_position=17))
    np.testing.assert_array_equal(np.roll(x0, -4, axis=0), img(y_position=8))
    # scale: the area grows with the square of the scale (0.5 -> 1: four times)
    a_small, a_big = img(scale=0).sum(), img(scale=5).sum()
    assert 3.4 < a_big / a_small < 4.6
    # orientation: the area is kept, the image changes; 0 and 2π (classes 0 and 39) coincide
    turned = img(orientation=10)  # a quarter turn (10 of 39 steps of 2π/39) is ~92°
    assert abs(int(turned.sum()) - int(x0.sum())) < 0.1 * x0.sum() and (turned != x0).any()
    np.testing.assert_array_equal(img(orientation=0), img(orientation=39))
    # an ellipse's extents swap under about a quarter turn
    h0 = np.ptp(np.nonzero(img(orientation=0)[..., 0])[0])
    w0 = np.ptp(np.nonzero(img(orientation=0)[..., 0])[1])
    h1 = np.ptp(np.nonzero(turned[..., 0])[0])
    assert w0 > 1.6 * h0 and h1 > 1.6 * h0
    # shape: the three shapes differ at equal pose, and each stays centred at (16 + y, 16 + x)
    shapes = [img(shape=s, orientation=0) for s in range(3)]
    assert all((shapes[i] != shapes[j]).any() for i, j in ((0, 1), (0, 2), (1, 2)))
    cy, cx = _centroid(shapes[0])
    assert (cy, cx) == (16 + 12, 16 + 10)


def test_generated_dataset_subsets_are_disjoint_and_labelled():
    ds = data.load("dsprites_generated", num_train=300, num_test=200)
    assert ds.train_images.shape == (300, 64, 64, 1) and ds.test_images.shape == (200, 64, 64, 1)
    assert ds.num_classes == 3 and set(np.unique(ds.train_images)) == {0.0, 1.0}
    tr = sprites.index_of(np.stack([ds.train_factors[f"label_{n}"] for n in sprites.FACTORS], 1))
    te = sprites.index_of(np.stack([ds.test_factors[f"label_{n}"] for n in sprites.FACTORS], 1))
    assert not set(tr) & set(te)
    np.testing.assert_array_equal(ds.test_labels, ds.test_factors["label_shape"])
    np.testing.assert_array_equal(ds.test_images[:5].astype(np.uint8),
                                  sprites.render(sprites.classes_of(te[:5])))
    again = data.load("dsprites_generated", num_train=300, num_test=200)  # deterministic
    np.testing.assert_array_equal(again.train_images, ds.train_images)
    with pytest.raises(data.DataError, match="generated dataset"):
        data.load("digits", num_train=10)
    with pytest.raises(config_lib.ConfigError, match="data.num_train"):
        tiny(data=dict(num_train=100))


# ----------------------------------------------------------------------------------------------
# Metrics on constructed codes


@pytest.fixture(scope="module")
def codes():
    """Factor classes (4 factors of 3, 6, 8, 10 values) and codes: the factors themselves
    (scaled, tiny noise), an independent random code, the factors permuted, and the
    factors with the first two mixed by a 45° rotation."""
    rng = np.random.default_rng(0)
    sizes = np.array([3, 6, 8, 10])
    f = np.stack([rng.integers(s, size=1500) for s in sizes], 1)
    gt = f / sizes + 0.01 * rng.standard_normal(f.shape)
    c, s = np.cos(np.pi / 4), np.sin(np.pi / 4)
    rot = np.eye(4)
    rot[:2, :2] = [[c, -s], [s, c]]
    return f, {"truth": gt, "random": rng.standard_normal(f.shape),
               "permuted": gt[:, [2, 0, 3, 1]],
               "rotated": gt @ rot.T}


def _scores(f, c):
    tr, te = slice(0, 1000), slice(1000, None)
    d = dis.dci(c[tr], f[tr], c[te], f[te], model="forest")
    return {"mig": dis.mig(c, f)["mig"], "dci": d["dci_disentanglement"],
            "completeness": d["dci_completeness"], "informativeness": d["dci_informativeness"],
            "factor_vae": dis.factor_vae_score(c, f, num_train=500, num_eval=300)["factor_vae_score"],
            "beta_vae": dis.beta_vae_score(c, f, num_train=500, num_eval=300)["beta_vae_score"],
            "sap": dis.sap(c[tr], f[tr], c[te], f[te])["sap"]}


def test_metrics_on_constructed_codes(codes):
    f, reps = codes
    s = {k: _scores(f, c) for k, c in reps.items()}
    truth, rnd, perm, rot = s["truth"], s["random"], s["permuted"], s["rotated"]
    # the factors themselves: near 1
    for m in ("mig", "dci", "completeness", "informativeness", "factor_vae", "beta_vae"):
        assert truth[m] > 0.95, (m, truth[m])
    # an independent code: MIG and DCI near 0; the vote-based scores at chance (1 / K = 0.25)
    assert rnd["mig"] < 0.02 and rnd["dci"] < 0.05 and rnd["completeness"] < 0.05
    assert abs(rnd["factor_vae"] - 0.25) < 0.1 and abs(rnd["beta_vae"] - 0.25) < 0.1
    assert rnd["sap"] < 0.05 < truth["sap"]
    # permuting the dimensions changes nothing
    for m in truth:
        assert abs(perm[m] - truth[m]) < 0.03, (m, perm[m], truth[m])
    # a 45° mix of two factors: MIG loses exactly those two gaps (2 of 4 factors -> 0.5); DCI
    # splits each mixed code's importance evenly over 2 of K = 4 factors, 1 − log_4 2 = 0.5 for
    # those codes -> (2 · 0.5 + 2 · 1) / 4 = 0.75; every other score falls between
    assert abs(rot["mig"] - 0.5) < 0.05
    assert abs(rot["dci"] - 0.75) < 0.05 and abs(rot["completeness"] - 0.75) < 0.05
    for m in ("factor_vae", "beta_vae"):
        assert rnd[m] + 0.1 < rot[m] < truth[m] - 0.05, (m, rot[m])


def test_dci_scores_by_hand_and_gradient_boosting():
    assert dis.dci_scores(np.eye(3)) == pytest.approx((1.0, 1.0), abs=1e-6)
    assert dis.dci_scores(np.ones((3, 3))) == pytest.approx((0.0, 0.0), abs=1e-6)
    # code 0 serves factors 0 and 1 equally, code 1 nothing: disentanglement
    # ρ_0 (1 − log_2 2) = 0; completeness 1 for both factors (one code each)
    assert dis.dci_scores(np.array([[1.0, 1.0], [0.0, 0.0]])) == pytest.approx((0.0, 1.0), abs=1e-6)
    rng = np.random.default_rng(1)
    f = rng.integers(3, size=(600, 2))
    c = np.concatenate([f[:, ::-1] + 0.01 * rng.standard_normal(f.shape),
                        rng.standard_normal((600, 1))], 1)
    d = dis.dci(c[:400], f[:400], c[400:], f[400:], model="gbt")  # disentanglement_lib's model
    assert d["dci_disentanglement"] > 0.95 and d["dci_informativeness"] == 1.0


def test_class_overlap_separated_and_overlapping_classes():
    rng = np.random.default_rng(0)
    y = rng.integers(3, size=600)
    centres = np.eye(3) * 10
    apart = dis.class_overlap(centres[y] + rng.standard_normal((600, 3)), y)
    mixed = dis.class_overlap(rng.standard_normal((600, 3)), y)
    assert apart["probe_accuracy"] == 1.0 and apart["knn_accuracy"] == 1.0 and apart["silhouette"] > 0.7
    assert mixed["probe_accuracy"] < 0.45 and mixed["knn_accuracy"] < 0.45 and abs(mixed["silhouette"]) < 0.05


# ----------------------------------------------------------------------------------------------
# Total correlation


def _gaussian_codes(rng, rho, n=1000, d=3, s=0.3):
    """Posteriors N(μ_n, s² I) with μ_n ~ N(0, C − s² I): the aggregate posterior is N(0, C),
    C the correlation matrix with C[0, 1] = ρ, whose TC is −½ log det C."""
    c = np.eye(d)
    c[0, 1] = c[1, 0] = rho
    mu = rng.standard_normal((n, d)) @ np.linalg.cholesky(c - s * s * np.eye(d)).T
    z = mu + s * rng.standard_normal((n, d))
    return (jnp.asarray(z, jnp.float32), jnp.asarray(mu, jnp.float32),
            jnp.full((n, d), 2 * np.log(s), jnp.float32), -0.5 * np.log(np.linalg.det(c)))


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_total_correlation_against_the_gaussian_tc(estimator):
    rng = np.random.default_rng(0)
    est, exact = [], []
    fn = jax.jit(lambda z, mu, lv: objectives.total_correlation(z, mu, lv, 1000, estimator))
    for rho in (0.0, 0.5, 0.8):
        z, mu, logvar, tc = _gaussian_codes(rng, rho)
        est.append(float(fn(z, mu, logvar)))
        exact.append(tc)
    assert abs(est[0]) < 0.06  # independent dimensions
    np.testing.assert_allclose(est, exact, atol=0.06)
    assert est[0] < est[1] < est[2]


def test_importance_weights_rows_sum_to_one():
    for est in ("mws", "mss"):
        w = np.exp(np.asarray(objectives.log_importance_weights(8, 100.0, est)))
        np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-5)
    w = np.exp(np.asarray(objectives.log_importance_weights(8, 100.0, "mss")))
    assert w[3, 3] == pytest.approx(1 / 100) and w[3, 4] == pytest.approx((100 - 7) / 700)
    assert w[7, 0] == pytest.approx((100 - 7) / 700) and w[3, 5] == pytest.approx(1 / 7)


def test_discriminator_separates_a_correlated_code_from_its_permutation():
    rng = np.random.default_rng(0)
    z, _, _, tc = _gaussian_codes(rng, 0.95, n=512, d=2, s=0.1)
    disc = networks.Discriminator((32, 32))
    params = jax.jit(disc.init)(jax.random.key(0), z[:1])["params"]
    opt = optax.adam(3e-3)

    def loss(p, key):
        zp = objectives.permute_dims(key, z)
        logits = disc.apply({"params": p}, jnp.concatenate([z, zp]))
        y = jnp.concatenate([jnp.zeros(len(z), jnp.int32), jnp.ones(len(z), jnp.int32)])
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    @jax.jit
    def step(p, s, key):
        g = jax.grad(loss)(p, key)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    state = opt.init(params)
    for i in range(150):
        params, state = step(params, state, jax.random.key(i))
    zp = objectives.permute_dims(jax.random.key(10_000), z)
    real, fake = vae.tc_logit(params, z), vae.tc_logit(params, zp)
    acc = 0.5 * (float(jnp.mean(real > 0)) + float(jnp.mean(fake < 0)))
    assert acc > 0.75  # chance is 0.5
    # the mean logit estimates the TC (−½ log(1 − 0.95²) = 1.16 nats): positive and of that order
    assert 0.3 < float(jnp.mean(real)) < 3 * tc


# ----------------------------------------------------------------------------------------------
# Training through the normal path


@pytest.mark.parametrize("objective", [
    dict(name="beta_tcvae", beta=4.0, tc_estimator="mss"),
    dict(name="factorvae", beta=10.0, discriminator_hidden=(16, 16)),
])
def test_tc_objectives_train_one_epoch(tmp_path, objective):
    cfg = tiny(objective=objective, train=dict(num_epochs=1))
    out = train.train_and_evaluate(cfg, str(tmp_path))
    assert np.isfinite(out["elbo"])
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    row = [r for r in rows if r["split"] == "train"][-1]
    key = "tc" if objective["name"] == "beta_tcvae" else "discriminator_loss"
    assert np.isfinite(row[key]) and np.isfinite(row["loss"])
    if objective["name"] == "factorvae":
        assert np.isfinite(row["tc_discriminator"])
        state = experiment.restore(cfg, str(tmp_path)).state
        assert set(state.aux) == {"discriminator"}


def test_tc_objective_config_errors():
    with pytest.raises(config_lib.ConfigError, match="objective.name"):
        tiny(model=dict(family="ae"), objective=dict(name="factorvae"))
    with pytest.raises(config_lib.ConfigError, match="objective.schedule"):
        tiny(objective=dict(name="beta_tcvae", schedule="linear"))
    with pytest.raises(config_lib.ConfigError, match="tc_estimator"):
        tiny(objective=dict(name="beta_tcvae", tc_estimator="exact"))
    with pytest.raises(config_lib.ConfigError, match="dci_model"):
        tiny(eval=dict(dci_model="svm"))


def test_disentanglement_evaluators_on_a_factor_dataset(tmp_path):
    """The evaluators read the test split's factors (and its labels, the shape class); a
    dataset without factors is skipped."""
    ds = data.load("dsprites_generated", num_train=256, num_test=300)
    cfg = tiny(eval=dict(factor_train=200, factor_test=100, dci_model="forest", batch_size=300,
                         evaluators=("mig", "dci", "sap", "factor_vae_score", "beta_vae_score",
                                     "class_overlap")),
               model=dict(hidden=(8,), latent_dim=3))
    exp = experiment.Experiment.build(cfg, ds.image_shape)
    params = jax.jit(exp.init_state)().params
    out = evaluate.run(exp, ds, params, 0, 0, str(tmp_path))
    for k in ("mig", "dci_disentanglement", "sap", "factor_vae_score", "beta_vae_score",
              "probe_accuracy", "knn_accuracy"):
        assert 0.0 <= out[k] <= 1.0, k
    assert set(out["mig_per_factor"]) == set(sprites.FACTORS)
    assert out["dci_num_points"] == [200, 100]
    with pytest.raises(estimators.NotApplicable, match="no ground-truth factors"):
        evaluate.factor_classes(data.load("digits"))


def test_aggregation_plots_metrics_against_beta(tmp_path):
    """Members' eval.json with the disentanglement metrics -> mean ± std over seeds per objective
    and β, and the metric-against-β figure."""
    import csv

    from vae_jax import aggregate

    for name in ("elbo", "beta_tcvae"):
        for beta in (1.0, 4.0):
            for seed, mig in ((0, 0.1 * beta), (1, 0.1 * beta + 0.02)):
                folder = tmp_path / "runs" / f"name={name}" / "members" / f"beta={beta:g},seed={seed}"
                folder.mkdir(parents=True)
                cfg = config_lib.Config().to_dict()
                cfg["seed"], cfg["objective"]["beta"], cfg["objective"]["name"] = seed, beta, name
                cfg["data"]["shuffle_seed"] = 0
                json.dump(cfg, open(folder / "config.json", "w"))
                json.dump({"elbo": -50.0, "recon": 40.0, "kl": 10.0, "step": 10,
                           "metadata": {"epochs": 1, "dataset": "dsprites_generated"}},
                          open(folder / "summary.json", "w"))
                json.dump({"mig": mig, "dci_disentanglement": 0.5, "probe_accuracy": 0.9},
                          open(folder / "eval.json", "w"))
    names = {p.rsplit("/", 1)[-1] for p in aggregate.aggregate(str(tmp_path))}
    assert {"disentanglement_vs_beta.png", "class_overlap_vs_beta.png"} <= names
    table = {(t["objective.name"], t["beta"]): t
             for t in csv.DictReader(open(tmp_path / "results_mean_std.csv"))}
    t = table[("beta_tcvae", "4.0")]
    assert float(t["mig_mean"]) == pytest.approx(0.41) and float(t["mig_std"]) == pytest.approx(0.02 / 2 ** 0.5)
