"""Evaluators: importance sampling against a closed form and on a trained model, the running
log-mean-exp, active units and collapse on a constructed encoder, BCE per pixel and interpolation
smoothness on hand-made inputs, the gradient-estimator study, and the eval command end to end."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from conftest import CONFIGS, ROOT, load_config_dict, replace, tiny
from vae_jax import config as config_lib
from vae_jax import diagnostics, estimators, evaluate, experiment, models, objectives, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny quickstart model trained for 30 epochs on the embedded digits."""
    workdir = tmp_path_factory.mktemp("trained")
    cfg = tiny(train=dict(num_epochs=30, eval_every_epochs=30), eval=dict(k=100))
    train.train_and_evaluate(cfg, str(workdir))
    r = experiment.restore(cfg, str(workdir))
    return cfg, workdir, r.experiments[0], r.dataset, r.params()


# --- importance sampling ----------------------------------------------------------------------


def _linear_gaussian(seed=0, dim_x=6, dim_z=2, sigma=0.6, n=16):
    """p(z) = N(0, I), p(x|z) = N(Wz + b, σ²I), so p(x) = N(b, WWᵀ + σ²I); q(z|x) is the exact
    posterior's mean shifted by 0.1 with 1.5× its marginal variances (diagonal: deliberately
    imperfect). Returns the Inference, the data and the closed-form log p(x) and ELBO."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(dim_x, dim_z))
    b = rng.normal(size=dim_x)
    x = (rng.normal(size=(n, dim_z)) @ W.T + b + sigma * rng.normal(size=(n, dim_x)))
    cov_post = np.linalg.inv(np.eye(dim_z) + W.T @ W / sigma**2)
    m = (x - b) @ W @ cov_post / sigma**2 + 0.1
    s = 1.5 * np.diag(cov_post) * np.ones((n, dim_z))
    exact = stats.multivariate_normal(b, W @ W.T + sigma**2 * np.eye(dim_x)).logpdf(x)
    resid = x - m @ W.T - b
    elbo = (-0.5 * dim_x * np.log(2 * np.pi * sigma**2)
            - ((resid**2).sum(1) + ((W**2) @ s.T).sum(0)) / (2 * sigma**2)
            - 0.5 * dim_z * np.log(2 * np.pi) - 0.5 * ((m**2).sum(1) + s.sum(1))
            + 0.5 * np.log(2 * np.pi * np.e * s).sum(1))
    Wj, bj = jnp.asarray(W, jnp.float32), jnp.asarray(b, jnp.float32)

    def posterior(params, batch):
        return jnp.asarray(m, jnp.float32), jnp.asarray(np.log(s), jnp.float32)

    def log_weights(params, batch, q, key, k):
        mu, logvar = q
        eps = jax.random.normal(key, (k, *mu.shape))
        z = mu + jnp.exp(0.5 * logvar) * eps
        xs = batch["image"]
        log_px_z = jnp.sum(stats_norm_logpdf(xs, z @ Wj.T + bj, sigma), -1)
        log_pz = jnp.sum(stats_norm_logpdf(z, 0.0, 1.0), -1)
        log_q = jnp.sum(stats_norm_logpdf(z, mu, jnp.exp(0.5 * logvar)), -1)
        return log_px_z + log_pz - log_q

    batch = {"image": jnp.asarray(x, jnp.float32)}
    return estimators.Inference(posterior, log_weights), batch, exact, elbo


def stats_norm_logpdf(x, mean, sd):
    return -0.5 * jnp.square((x - mean) / sd) - jnp.log(sd) - 0.5 * math.log(2 * math.pi)


def test_importance_sampling_converges_to_closed_form_linear_gaussian():
    inf, batch, exact, elbo = _linear_gaussian()
    fn = jax.jit(lambda b, key: estimators.importance_log_px(inf, None, b, key, 5000, 768))
    log_px, mean_lw = (np.asarray(a) for a in fn(batch, jax.random.key(0)))
    err = np.abs(log_px - exact)
    print(f"\nlinear-Gaussian, k=5000: max |IS - exact| = {err.max():.4f} nats, "
          f"mean gap exact - ELBO = {np.mean(exact - elbo):.3f} nats")
    assert err.max() < 0.05
    assert np.all(elbo < exact - 0.01)  # the ELBO stays below log p(x)
    np.testing.assert_allclose(mean_lw, elbo, atol=0.15)  # the weights average to the ELBO (MC)
    few, _ = jax.jit(lambda b, key: estimators.importance_log_px(inf, None, b, key, 5, 5))(
        batch, jax.random.key(0))
    assert np.abs(np.asarray(few) - exact).mean() > err.mean()  # k = 5 is visibly worse


def test_chunked_log_mean_exp_is_exact_and_stable():
    """The running log-sum-exp over chunks (the last one partial) equals logsumexp over all k
    weights, for weights whose exp overflows float32."""
    b, k, chunk = 7, 50, 16

    def log_weights(params, batch, q, key, n):
        return 1000.0 + 40.0 * jax.random.normal(key, (n, b))

    inf = estimators.Inference(None, log_weights)
    key = jax.random.key(3)
    got, mean_lw = estimators.importance_log_px(inf, None, {"image": jnp.zeros((b, 1, 1, 1))}, key, k, chunk)
    draw = jax.jit(lambda i: log_weights(None, None, None, jax.random.fold_in(key, i), chunk))
    allw = jnp.concatenate([draw(i) for i in range(-(-k // chunk))])[:k]
    allw = np.asarray(allw, np.float64)
    ref = special.logsumexp(allw, 0) - math.log(k)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(mean_lw), allw.mean(0), rtol=1e-6)
    assert np.all(np.isfinite(np.asarray(got)))


def test_vae_log_weights_match_an_independent_computation(trained):
    """The fast VAE path's log p(x|z) + log p(z) − log q(z|x), recomputed with scipy densities
    and the likelihood on image-shaped arrays from the same ε."""
    _, _, exp, ds, params = trained
    inf = estimators.inference(exp)
    assert inf is not None and exp.cfg.model.family == "vae"
    batch = {"image": estimators.test_images(exp, ds)[:5]}
    q = jax.jit(inf.posterior)(params, batch)
    key = jax.random.key(7)
    got = np.asarray(jax.jit(inf.log_weights, static_argnums=4)(params, batch, q, key, 3))
    mu, logvar = (np.asarray(a, np.float64) for a in q)
    eps = np.asarray(jax.random.normal(key, (3, *mu.shape)), np.float64)
    sd = np.exp(0.5 * logvar)
    z = mu + sd * eps
    logits = exp.model.apply({"params": params}, jnp.asarray(z.reshape(-1, z.shape[-1]), jnp.float32),
                             method=exp.model.decode).reshape(3, *batch["image"].shape)
    x = np.asarray(batch["image"], np.float64)
    p = 1 / (1 + np.exp(-np.asarray(logits, np.float64)))
    log_px_z = (x * np.log(p) + (1 - x) * np.log1p(-p)).reshape(3, 5, -1).sum(-1)
    ref = log_px_z + stats.norm.logpdf(z).sum(-1) - stats.norm.logpdf(z, mu, sd).sum(-1)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3)


def _is_log_px(cfg, exp, ds, params, k, tmp):
    c = replace(cfg, eval=dict(k=k, chunk=50, evaluators=("importance_sampling",)))
    e = experiment.Experiment.build(c, ds.image_shape)
    return evaluate.run(e, ds, params, 0, 0, str(tmp))["is_log_px"]


def test_is_estimate_above_elbo_rises_with_k_and_is_deterministic(trained, tmp_path):
    cfg, _, exp, ds, params = trained
    elbo = estimators.TestELBO(exp, ds)(params, 0, 0)["elbo"]
    est = {k: _is_log_px(cfg, exp, ds, params, k, tmp_path) for k in (1, 10, 100, 1000)}
    print(f"\ntrained tiny model: test ELBO {elbo:.3f}; IS " +
          ", ".join(f"k={k}: {v:.3f}" for k, v in est.items()) +
          f"; gap IS(1000) - ELBO = {est[1000] - elbo:.3f} nats")
    assert est[1000] > elbo
    assert est[1] < est[10] < est[100] < est[1000]
    assert _is_log_px(cfg, exp, ds, params, 10, tmp_path) == est[10]  # deterministic given the seed


# --- collapse diagnostics ---------------------------------------------------------------------


def test_active_units_and_collapse_on_a_constructed_encoder(tmp_path):
    """A linear encoder (no hidden layer) whose first two latent means read the image and whose
    other two are constant: 2 active units, dims 2 and 3 collapsed (KL 0), dims 0, 1 not."""
    cfg = tiny(model=dict(hidden=(), latent_dim=4), eval=dict(evaluators=("collapse",)))
    ds = experiment.load_data(cfg)
    exp = experiment.Experiment.build(cfg, ds.image_shape)
    params = jax.tree.map(jnp.zeros_like, jax.jit(exp.init_state)().params)
    dense = params["posterior"]["Dense_0"]
    pixels = np.prod(ds.image_shape)
    rng = np.random.default_rng(0)
    kernel = np.zeros((pixels, 8), np.float32)
    kernel[:, 0] = rng.normal(size=pixels)
    kernel[:, 1] = 0.5 * rng.normal(size=pixels)
    bias = np.zeros(8, np.float32)
    bias[4:6] = -2.0  # informative dims: σ² = e⁻², their KL is far above 0.1
    params["posterior"]["Dense_0"] = dict(dense, kernel=jnp.asarray(kernel), bias=jnp.asarray(bias))
    out = evaluate.run(exp, ds, params, 0, 0, str(tmp_path))
    x = np.asarray(estimators.test_images(exp, ds)).reshape(len(ds.test_images), -1)
    mu = x @ kernel[:, :4]
    assert mu[:, :2].var(0).min() > 0.1 and np.all(mu[:, 2:] == 0)  # the construction holds
    assert out["active_units"] == 2
    assert out["collapsed_dims"] == [2, 3] and out["num_collapsed"] == 2
    kl = objectives.gaussian_kl(jnp.asarray(mu), jnp.asarray(bias[None, 4:].repeat(len(mu), 0)))
    np.testing.assert_allclose(out["kl_per_dim"], np.asarray(kl).mean(0), rtol=1e-4, atol=1e-6)


def test_collapse_stats_thresholds():
    mu = np.array([[0.0, 1.0, 0.0], [0.0, -1.0, 0.3]])  # Var = 0, 1, 0.0225
    s = diagnostics.collapse_stats(mu, np.array([0.05, 2.0, 0.1]), active_threshold=0.01, kl_threshold=0.1)
    assert s["active_units"] == 2 and s["collapsed_dims"] == [0] and s["num_collapsed"] == 1
    assert diagnostics.collapse_stats(mu, None, active_threshold=0.03)["active_units"] == 1


# --- seed metrics -----------------------------------------------------------------------------


def test_bce_per_pixel_known_values():
    x = jnp.array([[1.0, 0.0, 1.0, 0.0], [0.3, 0.3, 0.3, 0.3]])
    r = jnp.array([[0.5, 0.5, 0.9, 0.1], [0.3, 0.3, 0.3, 0.3]])
    got = np.asarray(diagnostics.bce_per_pixel(x, r))
    h03 = -(0.3 * math.log(0.3) + 0.7 * math.log(0.7))  # entropy of a 0.3 pixel
    np.testing.assert_allclose(got, [(2 * math.log(2) - 2 * math.log(0.9)) / 4, h03], rtol=1e-5)
    assert float(diagnostics.bce_per_pixel(x[:1], x[:1])[0]) < 1e-5  # perfect binary reconstruction


def test_interpolation_smoothness_known_answers():
    t = np.linspace(0, 1, 10)[:, None, None, None]
    a, b = np.zeros((1, 4, 4, 1)), np.ones((1, 4, 4, 1))
    fade = (1 - t) * a + t * b  # every step changes every pixel by 1/9
    jump = np.concatenate([np.repeat(a, 5, 0), np.repeat(b, 5, 0)])  # one step of size 1
    msd, ratio = diagnostics.interpolation_smoothness(fade[None])
    assert msd == pytest.approx(1 / 81) and ratio == pytest.approx(1.0)
    msd, ratio = diagnostics.interpolation_smoothness(jump[None])
    assert msd == pytest.approx(1 / 9) and ratio == pytest.approx(9.0)
    msd, _ = diagnostics.interpolation_smoothness(np.stack([fade, jump]))
    assert msd == pytest.approx((1 / 81 + 1 / 9) / 2)


def test_pca_2d_recovers_a_plane():
    rng = np.random.default_rng(0)
    coords = rng.normal(size=(200, 2)) * [3.0, 1.0]
    basis = np.linalg.qr(rng.normal(size=(5, 2)))[0]  # orthonormal 5×2
    proj, frac = diagnostics.pca_2d(coords @ basis.T + 7.0)
    assert frac == pytest.approx(1.0)
    c = coords - coords.mean(0)
    np.testing.assert_allclose(proj @ proj.T, c @ c.T, atol=1e-8)  # an isometry of the plane
    assert proj[:, 0].var() > proj[:, 1].var()


# --- gradient-estimator study -----------------------------------------------------------------


def _gradient_study():
    spec = importlib.util.spec_from_file_location("gradient_study", ROOT / "scripts" / "gradient_study.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gradient_study_reparameterization_has_lower_variance(trained, tmp_path):
    _, _, exp, ds, params = trained
    gs = _gradient_study()
    x = estimators.test_images(exp, ds)[:64]
    rows = gs.study(exp, params, x, (1, 8), 40, jax.random.key(0))
    ratio = {(r["samples"], r["estimator"]): r["ratio_to_reparameterization"] for r in rows}
    print("\nVar[score function] / Var[reparameterization]: " + ", ".join(
        f"L={L} {e}: {v:.1f}" for (L, e), v in ratio.items() if e != "reparameterization"))
    for L in (1, 8):
        assert ratio[(L, "score_function")] > 10
        assert ratio[(L, "score_function_loo")] > 1
        assert ratio[(L, "score_function_loo")] < ratio[(L, "score_function")]  # the baseline helps
    var = {(r["samples"], r["estimator"]): r["total_variance"] for r in rows}
    assert var[(8, "reparameterization")] < var[(1, "reparameterization")]  # more samples, less noise
    paths = gs.write(rows, str(tmp_path), "# test")
    assert all((tmp_path / p).stat().st_size > 0 for p in paths)
    assert (tmp_path / "gradient_variance.md").read_text().count("| 8 |") == 3


# --- the eval command -------------------------------------------------------------------------


def test_eval_cli_writes_eval_json_with_metadata_and_figures(trained):
    cfg, workdir, *_ = trained
    args = [sys.executable, "-m", "vae_jax.main", "--mode", "eval", "--workdir", str(workdir),
            "--config", str(CONFIGS / "quickstart.py"), "--config.data.name=digits",
            f"--config.model.hidden={cfg.model.hidden}", f"--config.train.batch_size={cfg.train.batch_size}",
            f"--config.eval.batch_size={cfg.eval.batch_size}", "--config.eval.k=50",
            "--allow_config_change"]  # a subset of the tiny config: evaluate under the given one
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads((workdir / "eval.json").read_text())
    meta = out["metadata"]
    for field in ("dataset", "binarization", "split", "num_images", "epochs", "hardware", "wall_s"):
        assert field in meta, field
    assert meta["dataset"] == "digits" and meta["epochs"] == 30 and meta["num_images"] == 297
    hidden = "-".join(map(str, cfg.model.hidden))
    assert meta["model"] == f"vae mlp {hidden} {cfg.model.activation}, latent {cfg.model.latent_dim}"
    assert meta["estimator"].startswith("ELBO")
    assert "k=50" in meta["evaluators"]["importance_sampling"]["estimator"]
    assert set(meta["evaluators"]) == set(cfg.eval.evaluators)
    assert out["is_log_px"] > out["elbo"] and 0 <= out["active_units"] <= cfg.model.latent_dim
    assert len(out["kl_per_dim"]) == cfg.model.latent_dim
    expected = {"reconstructions.png", "samples.png", "interpolation.png", "traversals.png",
                "latent_scatter.png", "arithmetic.png", "kl_per_dim.png", "training_curves.png"}
    assert expected <= set(out["figures"])
    for name in expected:
        assert (workdir / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    bad = subprocess.run(args + ["--config.eval.evaluators=('test_elbo', 'nope')"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert "config.eval.evaluators" in bad.stderr and "'nope'" in bad.stderr


def test_model_description_names_every_stochastic_layer():
    hvae = config_lib.from_config_dict(load_config_dict("mnist_hvae"))
    assert models.get("hvae").describe(hvae) == ("hvae mlp 200-200 tanh, latents 100-50 "
                                                 "(upper 100-100, bottom_up inference)")
    burda = config_lib.from_config_dict(load_config_dict("mnist_burda_vae"))
    assert models.get("vae").describe(burda) == "vae mlp 200-200 tanh, latent 50"


BAD_EVAL = [
    ("k", 0, "config.eval.k=0: must be an integer >= 1"),
    ("chunk", 0, "config.eval.chunk=0"),
    ("num_images", -1, "config.eval.num_images=-1"),
    ("evaluators", (), "config.eval.evaluators=(): must be a non-empty sequence of distinct names"),
    ("evaluators", ("collapse", "collapse"), "distinct names"),
    ("evaluators", "collapse", "must be a sequence of strings"),
    ("collapse_threshold", -0.1, "config.eval.collapse_threshold=-0.1: must be a finite number >= 0"),
    ("interpolation_steps", 1, "config.eval.interpolation_steps=1"),
]


@pytest.mark.parametrize("field,value,message", BAD_EVAL, ids=[f"{f}={v!r}" for f, v, _ in BAD_EVAL])
def test_bad_eval_fields_fail_with_one_line(field, value, message):
    c = load_config_dict("quickstart").to_dict()  # a plain dict also takes wrongly typed values
    c["eval"][field] = value
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.from_config_dict(c)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_unknown_evaluator_name_fails_before_loading(tmp_path):
    cfg = tiny(eval=dict(evaluators=("test_elbo", "fid")))
    with pytest.raises(config_lib.ConfigError, match="unknown 'fid'; allowed: test_elbo"):
        evaluate.evaluate_workdir(cfg, str(tmp_path / "missing"))
