"""Issue 3 variants: KL schedules, free bits, capacity, IWAE, CVAE, hierarchical VAE."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config_dict, replace, tiny
from vae_jax import config as config_lib
from vae_jax import estimators, evaluate, experiment, objectives, train
from vae_jax.metrics import read_jsonl


def _hp(**kw):
    cfg = tiny(objective=kw)
    return experiment.hyperparams(cfg), cfg


def _exp(cfg):
    ds = experiment.load_data(cfg)
    return experiment.Experiment.build(cfg, ds.image_shape), ds


# --- schedules --------------------------------------------------------------------------------

def test_linear_warmup_matches_schedule():
    hp, _ = _hp(beta=2.0, schedule="linear", warmup_steps=100)
    for s, want in [(0, 0.0), (25, 0.5), (50, 1.0), (100, 2.0), (1000, 2.0)]:
        assert float(objectives.kl_weight("linear", s, hp, 0.5)) == pytest.approx(want)


def test_cyclical_schedule_repeats():
    hp, _ = _hp(beta=1.0, schedule="cyclical", cycle_steps=100, cycle_ratio=0.5)
    got = [float(objectives.kl_weight("cyclical", s, hp, 0.5)) for s in (0, 25, 50, 99, 100, 125, 175)]
    np.testing.assert_allclose(got, [0.0, 0.5, 1.0, 1.0, 0.0, 0.5, 1.0], atol=1e-6)


def test_capacity_rises_linearly_and_enters_the_loss():
    hp, cfg = _hp(schedule="capacity", capacity_max=10.0, capacity_steps=100, capacity_gamma=5.0)
    assert float(objectives.capacity(50, hp)) == pytest.approx(5.0)
    assert float(objectives.capacity(500, hp)) == pytest.approx(10.0)
    terms = {"recon": jnp.array([3.0, 5.0]), "kl": jnp.array([1.0, 3.0]), "kl_per_dim": jnp.ones((2, 2))}
    loss, logged = objectives.training_loss(terms, jnp.int32(50), hp, cfg.objective)
    assert float(loss) == pytest.approx(4.0 + 5.0 * abs(2.0 - 5.0))
    assert float(logged["capacity"]) == pytest.approx(5.0)


def test_logged_beta_follows_warmup_in_training(tmp_path):
    cfg = tiny(objective=dict(schedule="linear", warmup_steps=30, beta=1.0), train=dict(num_epochs=3))
    train.train_and_evaluate(cfg, str(tmp_path))
    rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    # epoch means of β over steps 0..14, 15..29, 30..44 of a 30-step warm-up
    want = [np.mean(np.minimum(1, np.arange(e * 15, (e + 1) * 15) / 30)) for e in range(3)]
    np.testing.assert_allclose([r["beta"] for r in rows], want, rtol=1e-5)
    for r in rows:  # the ELBO is logged unweighted whatever β is
        assert r["elbo"] == pytest.approx(-r["recon"] - r["kl"], rel=1e-5)


# --- free bits ----------------------------------------------------------------------------------

def test_free_bits_blocks_gradient_below_lambda():
    kl = jnp.array([[0.05, 2.0, 0.3], [0.15, 1.0, 0.5]])  # batch means: 0.1, 1.5, 0.4
    g = jax.grad(lambda k: objectives.free_bits_kl(k, jnp.float32(0.25)))(kl)
    np.testing.assert_allclose(g[:, 0], 0.0)  # below λ: no gradient
    np.testing.assert_allclose(g[:, 1:], 0.5)  # above λ: d mean / d entry
    assert float(objectives.free_bits_kl(kl, jnp.float32(0.25))) == pytest.approx(0.25 + 1.5 + 0.4)
    assert float(objectives.free_bits_kl(kl, jnp.float32(0.0))) == pytest.approx(float(kl.sum(1).mean()))
    # groups of 2 dims: (0.1 + 1.5) and 0.4 against λ = 1 → 1.6 + 1.0
    assert float(objectives.free_bits_kl(kl, jnp.float32(1.0), group=2)) == pytest.approx(2.6)


def test_free_bits_keeps_gradient_off_a_collapsed_latent_in_a_model():
    cfg = tiny(objective=dict(free_bits=50.0))  # every dimension far below λ
    exp, ds = _exp(cfg)
    state = jax.jit(exp.init_state)()
    batch = {"image": jnp.asarray(ds.train_images[:50])}
    hp = experiment.hyperparams(cfg)
    g_fb = jax.grad(lambda p: exp.loss_fn(p, batch, jax.random.key(0), jnp.int32(0), hp)[0])(state.params)
    hp0 = dict(hp, free_bits=jnp.float32(0.0), beta=jnp.float32(0.0))
    g_rec = jax.grad(lambda p: exp.loss_fn(p, batch, jax.random.key(0), jnp.int32(0), hp0)[0])(state.params)
    # with every KL below λ the loss's gradient is the reconstruction gradient alone
    for a, b in zip(jax.tree.leaves(g_fb), jax.tree.leaves(g_rec)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


# --- IWAE -------------------------------------------------------------------------------------

def test_iwae_k1_is_the_single_sample_elbo_and_bound_ordering():
    cfg = tiny()
    exp, ds = _exp(cfg)
    params = jax.jit(exp.init_state)().params
    batch = {"image": jnp.asarray(ds.test_images[:64])}
    t1 = exp.terms(params, batch, jax.random.key(1), 1)
    np.testing.assert_allclose(objectives.iwae_bound(t1["log_w"]), t1["log_w"][0], rtol=1e-6)
    # with k = 1, log_w is an unbiased single-sample estimate of the ELBO (analytic KL): over many
    # draws of the same noise both average to the same number
    keys = jax.random.split(jax.random.key(2), 400)
    both = jax.vmap(lambda k: (lambda t: (t["log_w"][0], t["elbo"]))(exp.terms(params, batch, k, 1)))(keys)
    assert float(both[0].mean()) == pytest.approx(float(both[1].mean()), abs=0.05)
    t5 = exp.terms(params, batch, jax.random.key(4), 5)
    iw = objectives.iwae_bound(t5["log_w"])
    assert np.all(np.asarray(iw) >= np.asarray(t5["log_w"].mean(0)) - 1e-5)  # Jensen, same samples


def test_iwae_training_objective_runs_and_bound_rises_with_k(tmp_path):
    cfg = tiny(objective=dict(name="iwae", num_samples=5), train=dict(num_epochs=6))
    train.train_and_evaluate(cfg, str(tmp_path))
    exp, ds = _exp(cfg)
    from vae_jax import checkpoint

    ck = checkpoint.Checkpointer(str(tmp_path))
    _, state = ck.restore_latest(jax.eval_shape(exp.init_state))
    ck.close()
    batch = {"image": jnp.asarray(ds.test_images)}
    bounds = []
    for k in (1, 5, 50):
        vals = [objectives.iwae_bound(exp.terms(state.params, batch, jax.random.key(s), k)["log_w"]).mean()
                for s in range(5)]
        bounds.append(float(np.mean(vals)))
    assert bounds[0] < bounds[1] < bounds[2], bounds


# --- CVAE -------------------------------------------------------------------------------------

def test_cvae_learned_prior_moves_and_samples_come_from_it(tmp_path):
    cfg = tiny(model=dict(family="cvae", cvae=dict(prior="learned")), train=dict(num_epochs=5))
    train.train_and_evaluate(cfg, str(tmp_path))
    exp, _ = _exp(cfg)
    from vae_jax import checkpoint

    ck = checkpoint.Checkpointer(str(tmp_path))
    _, state = ck.restore_latest(jax.eval_shape(exp.init_state))
    ck.close()
    p = state.params
    assert float(jnp.abs(p["prior_mu"]).max()) > 1e-3 and float(jnp.abs(p["prior_logvar"]).max()) > 1e-3
    y = jnp.full((20000,), 3, jnp.int32)
    z = exp.model.apply({"params": p}, jax.random.key(0), y, method=exp.model.sample_prior)
    np.testing.assert_allclose(z.mean(0), p["prior_mu"][3], atol=0.05)
    np.testing.assert_allclose(z.var(0), np.exp(p["prior_logvar"][3]), rtol=0.1)


def test_cvae_decoder_uses_the_label():
    cfg = tiny(model=dict(family="cvae"))
    exp, _ = _exp(cfg)
    params = jax.jit(exp.init_state)().params
    z = jnp.zeros((2, cfg.model.latent_dim))
    out = exp.model.apply({"params": params}, z, jnp.array([0, 7]), method=exp.model.decode)
    assert float(jnp.abs(out[0] - out[1]).max()) > 1e-4


# --- hierarchical -----------------------------------------------------------------------------

@pytest.mark.parametrize("inference", ["ladder", "bottom_up"])
def test_hvae_with_one_layer_equals_the_vae(inference):
    vae_cfg = tiny(model=dict(latent_dim=6))
    h_cfg = replace(vae_cfg, model=dict(family="hvae", hvae=dict(latents=(6,), inference=inference)))
    v_exp, ds = _exp(vae_cfg)
    h_exp, _ = _exp(h_cfg)
    params = jax.jit(v_exp.init_state)().params
    assert jax.tree.structure(params) == jax.tree.structure(jax.eval_shape(h_exp.init_state).params)
    batch = {"image": jnp.asarray(ds.test_images[:32])}
    tv = v_exp.terms(params, batch, jax.random.key(5), 3)
    th = h_exp.terms(params, batch, jax.random.key(5), 3)
    for k in ("elbo", "recon", "kl", "log_w"):
        np.testing.assert_allclose(th[k], tv[k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("inference", ["ladder", "bottom_up"])
def test_hvae_two_layers_logs_per_layer_kl_and_ancestral_samples(tmp_path, inference):
    cfg = tiny(model=dict(family="hvae", hvae=dict(latents=(8, 4), upper_hidden=(16,), inference=inference)),
               train=dict(num_epochs=3, figures=True))  # figures: encode/decode work on both paths
    train.train_and_evaluate(cfg, str(tmp_path))
    rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    for r in rows:
        assert r["kl"] == pytest.approx(r["kl_layer1"] + r["kl_layer2"], rel=1e-5)
    kl_dims = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["split"] == "train_kl_per_dim"]
    assert len(kl_dims[-1]) - 2 == 8 + 4  # step, split, then one entry per latent dimension
    exp, _ = _exp(cfg)
    params = jax.jit(exp.init_state)().params
    z1 = exp.model.apply({"params": params}, jax.random.key(0), 7, method=exp.model.sample_prior)
    assert z1.shape == (7, 8) and np.isfinite(z1).all()


@pytest.mark.parametrize("inference", ["ladder", "bottom_up"])
def test_hvae_posterior_means_and_active_units_per_layer(inference):

    cfg = tiny(model=dict(family="hvae", hvae=dict(latents=(8, 4), upper_hidden=(16,), inference=inference)))
    exp, ds = _exp(cfg)
    params = jax.jit(exp.init_state)().params
    x = jnp.asarray(ds.test_images[:64])
    key = jax.random.key(3)
    means = exp.model.apply({"params": params}, x, 4000, rngs={"noise": key},
                            method=exp.model.posterior_means)
    assert sorted(means) == ["layer1", "layer2"]
    assert means["layer1"][0].shape == (64, 8) and means["layer2"][0].shape == (64, 4)
    if inference == "bottom_up":  # q(z1|x) needs no draws: exactly the encoder's head
        mu1, _ = exp.model.apply({"params": params}, x, method=exp.model.encode)
        np.testing.assert_allclose(means["layer1"][0], mu1, rtol=1e-6, atol=1e-6)
        # E_q[z2|x] = E_{z1 ~ q(z1|x)}[mu_2(z1)], close to (not equal to) the plug-in mu_2(E[z1])
        h = exp.model.apply({"params": params}, mu1, method=lambda m, z: m.up_heads[0](m.up[0](z)))
        assert 0 < float(jnp.abs(means["layer2"][0] - h[:, :4]).max()) < 0.5
    else:
        mu_hat = exp.model.apply({"params": params}, x, method=exp.model.bottom_up)  # the top of the ladder is its bottom-up head; level 1 is pulled towards the prior
        np.testing.assert_allclose(means["layer2"][0], mu_hat[1][0], rtol=1e-6, atol=1e-6)
        assert float(jnp.abs(means["layer1"][0] - mu_hat[0][0]).max()) > 1e-3
    # the collapse evaluator reports active units for each layer from these means
    ctx = estimators.Context(exp, ds, params, 0, 0, folder="")
    out = dict(evaluate.EVALUATORS["collapse"].run(ctx))
    for name, size in (("layer1", 8), ("layer2", 4)):
        assert 0 <= out[f"{name}/active_units"] <= size
        assert out[f"{name}/active_units"] == int(np.sum(np.var(
            np.asarray(ctx.posterior[name][0], np.float64), axis=0) > cfg.eval.active_unit_threshold))


def test_ladder_posterior_is_the_precision_weighted_product_by_hand():
    from vae_jax.models import hvae

    mu_hat, var_hat, mu_p, var_p = 2.0, 0.5, -1.0, 2.0  # precisions 2 and 0.5
    var_q = 1.0 / (1 / var_hat + 1 / var_p)  # 0.4
    mu_q = (mu_hat / var_hat + mu_p / var_p) * var_q  # (4 - 0.5) * 0.4 = 1.4
    got_mu, got_lv = hvae.precision_weighted(*(jnp.float32(v) for v in (mu_hat, np.log(var_hat), mu_p,
                                                                        np.log(var_p))))
    assert float(got_mu) == pytest.approx(1.4, rel=1e-6) and float(jnp.exp(got_lv)) == pytest.approx(var_q, rel=1e-6)
    # extreme log-variances stay finite and pick the more precise side
    mu, lv = hvae.precision_weighted(jnp.float32(3.0), jnp.float32(-200.0), jnp.float32(0.0), jnp.float32(200.0))
    assert float(mu) == pytest.approx(3.0) and float(lv) == pytest.approx(-200.0)


def test_burda_two_layer_config_builds():
    cfg = config_lib.from_config_dict(load_config_dict("mnist_hvae"))
    assert cfg.model.hvae.latents == (100, 50) and cfg.model.hidden == (200, 200)
    assert cfg.model.hvae.upper_hidden == (100, 100) and cfg.model.activation == "tanh"
    assert cfg.model.hvae.inference == "bottom_up"
    exp = experiment.Experiment.build(cfg, (28, 28, 1))
    shapes = jax.eval_shape(exp.init_state).params
    assert shapes["posterior"]["Dense_0"]["kernel"].shape == (200, 200)
    assert shapes["up_heads_0"]["Dense_0"]["kernel"].shape == (100, 100)
    assert shapes["up_0"]["Dense_0"]["Dense_0"]["kernel"].shape == (100, 100)  # from the z1 sample


def test_burda_one_layer_config_is_the_like_for_like_plain_vae():
    v = config_lib.from_config_dict(load_config_dict("mnist_burda_vae"))
    h = config_lib.from_config_dict(load_config_dict("mnist_hvae"))
    assert v.model.family == "vae" and v.model.hidden == (200, 200) and v.model.latent_dim == 50
    for section in ("data", "objective", "optim", "train"):  # only the model differs
        assert getattr(v, section) == getattr(h, section), section
    assert (v.model.activation, v.model.likelihood) == (h.model.activation, h.model.likelihood)


# --- every family: a tiny run whose loss falls and whose terms add up ---------------------------

@pytest.mark.parametrize("overrides", [
    dict(model=dict(family="cvae")),
    dict(model=dict(family="cvae", cvae=dict(prior="learned"))),
    dict(model=dict(family="hvae", hvae=dict(latents=(8, 4), upper_hidden=(16,)))),
    dict(model=dict(family="hvae", hvae=dict(latents=(8, 4, 2), upper_hidden=(16,), inference="bottom_up"))),
    dict(objective=dict(name="iwae", num_samples=3)),
    dict(objective=dict(schedule="cyclical", cycle_steps=20)),
    dict(objective=dict(schedule="capacity", capacity_max=5.0, capacity_steps=30, capacity_gamma=10.0)),
    dict(objective=dict(free_bits=0.3, free_bits_group=2)),
], ids=["cvae", "cvae_learned", "hvae", "hvae3_bottom_up", "iwae", "cyclical", "capacity", "free_bits"])
def test_family_tiny_run_learns_and_terms_add_up(overrides, tmp_path):
    cfg = tiny(**overrides)
    cfg = replace(cfg, train=dict(num_epochs=4))
    train.train_and_evaluate(cfg, str(tmp_path))
    rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    assert rows[-1]["recon"] < rows[0]["recon"]
    for r in rows:
        assert np.isfinite([r["loss"], r["recon"], r["kl"], r["elbo"]]).all()
        assert r["elbo"] == pytest.approx(-r["recon"] - r["kl"], rel=1e-5, abs=1e-4)


@pytest.mark.parametrize("overrides,message", [
    (dict(model=dict(family="cvae"), data=dict(name="binarized_mnist")), "a conditional family needs class labels"),
    (dict(model=dict(family="vqvae"), objective=dict(name="iwae")), "needs a stochastic encoder"),
    (dict(model=dict(family="ae"), objective=dict(schedule="linear")), "has no KL term"),
    (dict(model=dict(hvae=dict(latents=()))), "config.model.hvae.latents=()"),
    (dict(objective=dict(free_bits=-1.0)), "config.objective.free_bits=-1.0"),
    (dict(objective=dict(name="iwae", beta=4.0)), "takes no KL weighting"),
    (dict(objective=dict(schedule="sigmoid")), "config.objective.schedule='sigmoid'"),
    (dict(objective=dict(cycle_ratio=0.0)), "config.objective.cycle_ratio=0.0"),
    (dict(model=dict(cvae=dict(prior="mixture"))), "config.model.cvae.prior='mixture'"),
    (dict(model=dict(likelihood="logistic")), "discretized logistic"),
])
def test_variant_bad_input(overrides, message):
    c = load_config_dict("quickstart")
    for section, fields in overrides.items():
        for k, v in fields.items():
            setattr(getattr(c, section), k, v)
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.from_config_dict(c)
    assert message in str(e.value) and "\n" not in str(e.value)


def _step_metrics(exp, state, batch, hp):
    return jax.jit(exp.train_step)(state, batch, hp)[1]


def test_the_noise_differs_between_steps_and_the_shuffle_between_epochs():
    cfg = tiny()
    ds = experiment.load_data(cfg)
    exp = experiment.Experiment.build(cfg, ds.image_shape)
    hp = dict(experiment.hyperparams(cfg), learning_rate=jnp.float32(0.0))  # parameters stay put
    state = exp.init_state()
    batch = {"image": jnp.asarray(ds.train_images[:100])}
    a = _step_metrics(exp, state, batch, hp)
    assert _step_metrics(exp, state, batch, hp)["recon"] == a["recon"]  # a deterministic step
    b = _step_metrics(exp, state.replace(step=state.step + 1), batch, hp)
    assert a["recon"] != b["recon"] and a["kl"] == b["kl"]  # new ε (the KL is closed-form)

    ae = experiment.Experiment.build(replace(cfg, model=dict(family="ae")), ds.image_shape)
    st = ae.init_state()
    images = jnp.asarray(ds.train_images)
    epoch = jax.jit(ae.train_epoch)
    recon = [np.asarray(epoch(st, hp, images, None, jnp.int32(e), ae.data_key())[1]["recon"], np.float64)
             for e in (0, 1)]
    # 15 batches of 100 cover all 1500 images in both epochs: the same total, another order
    assert recon[0].sum() == pytest.approx(recon[1].sum(), rel=1e-6)
    assert not np.allclose(recon[0], recon[1])


@pytest.mark.parametrize("overrides", [
    dict(model=dict(family="hvae", hvae=dict(latents=(8, 4), upper_hidden=(16,), inference="ladder"))),
    dict(model=dict(family="hvae", hvae=dict(latents=(8, 4), upper_hidden=(16,), inference="bottom_up"))),
    dict(model=dict(family="cvae", cvae=dict(prior="learned"))),
], ids=["hvae-ladder", "hvae-bottom_up", "cvae"])
def test_importance_sampling_through_each_inference_path_is_above_the_elbo(overrides, tmp_path):
    cfg = tiny(**overrides, train=dict(num_epochs=5))
    train.train_and_evaluate(cfg, str(tmp_path))

    out = evaluate.evaluate_workdir(replace(cfg, eval=dict(k=64, chunk=16, evaluators=(
        "test_elbo", "importance_sampling"))), str(tmp_path))
    assert out["is_log_px"] > out["elbo"]
    # the mean log-weight is itself a one-sample ELBO estimate: close to the test ELBO
    assert out["is_mean_log_weight"] == pytest.approx(out["elbo"], abs=0.05 * abs(out["elbo"]))
