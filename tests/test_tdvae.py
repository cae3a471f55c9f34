"""The top-down hierarchical VAE (``vae_jax/models/tdvae.py``), the Burda et al. (2015) learning-
rate schedule, gradient-norm update skipping and the Table 1 configs under ``configs/paper/``,
each against an independent reference: the plain VAE under mapped parameters, Monte Carlo KL in
numpy float64, hand-written schedules, an optimizer run without the skipped batch."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import load_config_dict, replace, tiny
from vae_jax import config as config_lib, estimators, experiment, objectives

TD = dict(family="tdvae", tdvae=dict(latents=(4, 4), up_hidden=(16,), top_down_hidden=(24,)))


def _setup(**model):
    cfg = tiny(model=dict(TD, **model))
    ds = experiment.load_data(cfg)
    exp = experiment.Experiment.build(cfg, ds.image_shape)
    return cfg, ds, exp, exp.init_state()


def _perturb(params, key, scale=0.3, scales=None):
    """Every leaf plus scale·N(0, 1) noise (so the zero-initialised posterior heads are not zero);
    ``scales`` overrides the scale per top-level entry."""
    leaves, tree = jax.tree.flatten_with_path(params)
    out = []
    for i, (path, a) in enumerate(leaves):
        s = (scales or {}).get(path[0].key, scale)
        out.append(a + s * jax.random.normal(jax.random.fold_in(key, i), a.shape))
    return jax.tree.unflatten(jax.tree.structure(params), out)


def _batch(ds, n=100):
    return {"image": jnp.asarray(ds.train_images[:n])}


# ----------------------------------------------------------------------------------------------
# The family


def test_one_stochastic_layer_is_the_plain_vae_with_mapped_parameters():
    """L = 1 without a log-variance floor: the prior is N(0, I), the posterior a Dense of the
    bottom-up features and the decoder reads [h_0, z_1]; with the state's rows of those Dense
    kernels at zero the terms are the ``vae`` family's with the same weights and the same noise."""
    d, width = 5, 7
    cfg_v = tiny(model=dict(latent_dim=d))
    cfg_t = tiny(model=dict(family="tdvae", tdvae=dict(latents=(d,), top_down_hidden=(width,),
                                                       min_logvar=-math.inf)))
    ds = experiment.load_data(cfg_v)
    ev = experiment.Experiment.build(cfg_v, ds.image_shape)
    et = experiment.Experiment.build(cfg_t, ds.image_shape)
    pv = ev.init_state().params
    pt = et.init_state().params
    batch = _batch(ds, 50)
    # untrained: the zero-initialised residual heads make q = p, so every KL is exactly 0
    t0 = et.family.terms(et.model, pt, batch, jax.random.key(3), 2)
    assert float(jnp.max(jnp.abs(t0["kl_per_dim"]))) == 0.0

    post_v = pv["posterior"]["Dense_0"]
    dec_v = pv["decoder"]["MLP_0"]["Dense_0"]["Dense_0"]
    mapped = {
        "encoder": pv["encoder"],
        "h0": jax.random.normal(jax.random.key(1), (width,)),  # ignored: its rows are zero
        "posterior_0": {"kernel": jnp.concatenate([jnp.zeros((width, 2 * d)), post_v["kernel"]]),
                        "bias": post_v["bias"]},
        "decoder": {"Dense_0": pv["decoder"]["Dense_0"], "MLP_0": {"Dense_0": {"Dense_0": {
            "kernel": jnp.concatenate([jnp.zeros((width, dec_v["kernel"].shape[1])), dec_v["kernel"]]),
            "bias": dec_v["bias"]}}}},
    }
    assert jax.tree.structure(mapped) == jax.tree.structure(pt)
    key = jax.random.key(7)
    tv = ev.family.terms(ev.model, pv, batch, key, 3)
    tt = et.family.terms(et.model, mapped, batch, key, 3)
    for k in ("recon", "kl", "elbo", "kl_per_dim", "log_w"):
        np.testing.assert_allclose(tt[k], tv[k], rtol=1e-5, atol=1e-4, err_msg=k)
    np.testing.assert_allclose(tt["kl_layer1"], tv["kl"], rtol=1e-6)
    assert float(jnp.mean(tv["kl"])) > 0.1  # a real KL, not the trivial q = p


def _log_normal(z, mu, lv):
    z, mu, lv = (np.asarray(a, np.float64) for a in (z, mu, lv))
    return -0.5 * np.sum((z - mu) ** 2 * np.exp(-lv) + lv + np.log(2 * np.pi), -1)


def test_each_layers_analytic_kl_matches_monte_carlo_given_the_sampled_parents():
    cfg, ds, exp, st = _setup(tdvae=dict(latents=(4, 3), up_hidden=(16,), top_down_hidden=(24,)))
    params = _perturb(st.params, jax.random.key(0))
    x = _batch(ds, 8)["image"]
    n = 4000
    out = jax.jit(lambda p: exp.model.apply({"params": p}, x, n, rngs={"noise": jax.random.key(5)})
                  )(params)
    for i, lv in enumerate(out["levels"]):
        analytic = np.asarray(jnp.sum(lv["kl"], -1), np.float64)  # [n, B], given each parent draw
        ratio = _log_normal(lv["z"], *lv["q"]) - _log_normal(lv["z"], *lv["p"])  # [n, B]
        se = ratio.std(0) / np.sqrt(n)
        assert analytic.mean() > 0.2, f"layer {i + 1}: KL too small to test"
        np.testing.assert_array_less(np.abs(ratio.mean(0) - analytic.mean(0)), 5 * se + 1e-3)
    # the top prior is N(0, I); the lower ones come from the state
    top = out["levels"][-1]["p"]
    assert float(jnp.max(jnp.abs(top[0]))) == 0.0 and float(jnp.max(jnp.abs(top[1]))) == 0.0
    assert float(jnp.std(out["levels"][0]["p"][0])) > 0.05


def test_importance_sampled_log_px_lies_above_the_elbo_and_rises_with_k():
    cfg, ds, exp, st = _setup()
    epoch = jax.jit(exp.train_epoch)
    hp = experiment.hyperparams(cfg)
    images = jnp.asarray(ds.train_images)
    for e in range(3):
        st, m = epoch(st, hp, images, None, jnp.int32(e), exp.data_key())
    assert float(jnp.mean(m["kl_layer1"])) > 0.05 and float(jnp.mean(m["kl_layer2"])) > 0.05
    batch = {"image": estimators.test_images(exp, ds)[:100]}
    inf = estimators.inference(exp)
    est = {}
    for k in (1, 10, 100):
        log_px, mean_lw = jax.jit(lambda p, k=k: estimators.importance_log_px(
            inf, p, batch, jax.random.key(11), k, 10))(st.params)
        est[k] = float(jnp.mean(log_px))
        if k > 1:
            assert est[k] >= float(jnp.mean(mean_lw))  # log-mean-exp >= mean
    elbo = float(jnp.mean(exp.family.terms(exp.model, st.params, batch, jax.random.key(2), 50)["elbo"]))
    assert abs(est[1] - elbo) < 1.0  # k = 1 is an ELBO estimate
    # chunk 0 of k = 100 is the k = 10 estimate's sample set: the 90 more samples only add
    assert est[1] < est[10] - 0.2 and elbo < est[10] - 0.2 and est[10] < est[100], (elbo, est)


def test_ancestral_samples_have_the_right_shapes_and_come_from_the_prior():
    cfg, ds, exp, st = _setup()
    fam, model, n = exp.family, exp.model, 4000
    z = np.asarray(fam.sample_prior(model, st.params, jax.random.key(0), n))
    assert z.shape == (n, 8)
    top = z[:, 4:]  # untrained: the top layer is N(0, I)
    assert np.all(np.abs(top.mean(0)) < 0.1) and np.all(np.abs(top.var(0) - 1) < 0.1)
    # trained-like weights: each level, standardized by its prior given the levels above, is N(0, I)
    params = _perturb(st.params, jax.random.key(1))
    z = fam.sample_prior(model, params, jax.random.key(2), n)
    priors = model.apply({"params": params}, z, method=model.priors)
    zs = np.split(np.asarray(z), [4], -1)
    assert float(np.std(np.asarray(priors[0][0]))) > 0.1  # a non-trivial conditional prior
    for zi, (mu, lv) in zip(zs, priors):
        eps = (zi - np.asarray(mu)) / np.exp(0.5 * np.asarray(lv))
        assert np.all(np.abs(eps.mean(0)) < 0.1) and np.all(np.abs(eps.var(0) - 1) < 0.1)
    imgs = fam.decode(model, params, z[:16])
    assert imgs.shape == (16, 8, 8, 1) and np.isfinite(np.asarray(imgs)).all()
    # what the figures decode: posterior codes of the concatenation, encode's code too
    q = fam.posteriors(model, params, _batch(ds, 10), jax.random.key(3))
    assert list(q) == ["", "layer1", "layer2"] and q[""][0].shape == (10, 8)
    np.testing.assert_allclose(q[""][0][:, :4], q["layer1"][0])
    mu, lv = fam.encode(model, params, _batch(ds, 10))
    assert mu.shape == lv.shape == (10, 8)
    assert fam.decode(model, params, mu).shape == (10, 8, 8, 1)


def test_kl_warmup_and_free_bits_reach_every_layer():
    cfg, ds, exp, st = _setup()
    cfg = replace(cfg, objective=dict(schedule="linear", warmup_steps=100, free_bits_group=4))
    exp = experiment.Experiment.build(cfg, ds.image_shape)
    # a small bottom KL and a large top one
    params = _perturb(st.params, jax.random.key(0), scale=0.0, scales={"posterior_0": 0.05, "posterior_1": 0.5})
    batch, key, hp = _batch(ds, 100), jax.random.key(4), experiment.hyperparams(cfg)
    t = exp.terms(params, batch, key)
    k1, k2 = float(jnp.mean(t["kl_layer1"])), float(jnp.mean(t["kl_layer2"]))
    assert 0 < k1 < k2 / 2, (k1, k2)
    # warm-up: the weighted KL is that of both layers
    l0, _ = exp.loss_fn(params, batch, key, jnp.int32(0), hp)
    l50, _ = exp.loss_fn(params, batch, key, jnp.int32(50), hp)
    assert float(l50 - l0) == pytest.approx(0.5 * (k1 + k2), rel=1e-4)
    np.testing.assert_allclose(jnp.sum(t["kl_per_dim"], -1), t["kl_layer1"] + t["kl_layer2"], rtol=1e-5)

    def grads(lam):  # free bits with one group per layer (4 + 4 dims)
        g = jax.grad(lambda p: objectives.free_bits_kl(exp.terms(p, batch, key)["kl_per_dim"],
                                                       jnp.float32(lam), 4))(params)
        return {n: float(optax.tree.norm(g[n])) for n in ("posterior_0", "posterior_1")}

    between = grads((k1 + k2) / 2)
    assert between["posterior_0"] == 0.0 and between["posterior_1"] > 0  # bottom below λ, top above
    below = grads(k1 / 2)
    assert below["posterior_0"] > 0 and below["posterior_1"] > 0
    above = grads(2 * k2)
    assert above["posterior_0"] == 0.0 and above["posterior_1"] == 0.0


def test_describe_and_bad_config():
    cfg, *_ = _setup()
    fam = experiment.models.get("tdvae")
    assert "latents 4-4 top-down" in fam.describe(cfg) and fam.latent_sizes(cfg.model) == (4, 4)
    with pytest.raises(config_lib.ConfigError, match="model.tdvae.norm='batch'"):
        tiny(model=dict(TD, tdvae=dict(norm="batch")))
    with pytest.raises(config_lib.ConfigError, match="model.network='conv'"):
        tiny(model=dict(TD, network="conv"))


def test_ablation_switches_cut_exactly_the_paths_they_name():
    """posterior='direct': q(z_1 | ·) no longer depends on the prior's head (the residual path's
    gradient is 0, while the default's is not); decoder_input='z1': the decoder's output no longer
    depends on z_2 given z_1 (it does by default). Parameters perturbed so that no head is zero."""
    key = jax.random.key(5)

    def q_mean_grad(posterior):
        _, ds, exp, st = _setup(tdvae=dict(TD["tdvae"], posterior=posterior))
        params = _perturb(st.params, key)
        x = _batch(ds, 20)["image"]

        def mean_q1(prior_head):
            p = dict(params, prior_0=prior_head)
            out = exp.model.apply({"params": p}, x, 1, rngs={"noise": key})
            return jnp.sum(out["levels"][0]["q"][0])
        g = jax.grad(mean_q1)(params["prior_0"])
        return float(sum(jnp.sum(jnp.abs(v)) for v in jax.tree.leaves(g)))

    assert q_mean_grad("residual") > 0.1 and q_mean_grad("direct") == 0.0

    def decoder_moves_with_z2(decoder_input):
        _, ds, exp, st = _setup(tdvae=dict(TD["tdvae"], decoder_input=decoder_input))
        params = _perturb(st.params, key)
        z = jax.random.normal(key, (6, 8))
        z_other = z.at[:, 4:].set(jax.random.normal(jax.random.key(9), (6, 4)))  # new z_2
        dec = lambda c: exp.model.apply({"params": params}, c, method=exp.model.decode)  # noqa: E731
        return float(jnp.max(jnp.abs(dec(z) - dec(z_other))))

    assert decoder_moves_with_z2("state") > 1e-3 and decoder_moves_with_z2("z1") == 0.0
    with pytest.raises(config_lib.ConfigError, match="model.tdvae.posterior='ladder'"):
        tiny(model=dict(TD, tdvae=dict(posterior="ladder")))


def test_layer_norm_trains_as_a_population():
    """norm='layer' and a 2-member population (vmap) over β: one epoch, finite, members differ."""
    cfg = tiny(model=dict(TD, tdvae=dict(norm="layer")),
               population=dict(members=({"objective.beta": 0.5}, {"objective.beta": 2.0}),
                               strategy="vmap"))
    ds = experiment.load_data(cfg)
    members, _ = experiment.members_of(cfg)
    exp = experiment.Experiment.build(members[0], ds.image_shape)
    states = experiment.init_fn(exp)(experiment.seeds(members))
    assert "LayerNorm_0" in states.params["encoder"]
    run = jax.jit(experiment.epoch_fn(exp, "vmap"))
    states, m = run(states, experiment.stack_hyperparams(members), jnp.asarray(ds.train_images),
                    None, jnp.int32(0), exp.data_key())
    assert np.isfinite(np.asarray(m["loss"])).all()
    assert float(jnp.mean(m["kl"][0])) > float(jnp.mean(m["kl"][1]))  # β = 0.5 keeps more KL


# ----------------------------------------------------------------------------------------------
# Learning-rate schedule and update skipping


def _burda_by_hand(epochs: int) -> list[float]:
    rates = []
    for i in range(8):
        rates += [1e-3 * 10 ** (-i / 7)] * 3 ** i
    rates += [rates[-1]] * (epochs - len(rates))  # held after the 3,280 passes
    return rates[:epochs]


def test_burda_schedule_matches_the_hand_written_rates():
    hand = _burda_by_hand(3290)
    assert hand[0] == 1e-3 and hand[3279] == hand[3289] == 1e-3 * 10 ** (-1)
    assert hand[1:4] == [1e-3 * 10 ** (-1 / 7)] * 3 and hand[4] == 1e-3 * 10 ** (-2 / 7)
    got = 1e-3 * np.asarray(jax.jit(jax.vmap(lambda e: experiment.learning_rate_factor("burda", e)))(
        jnp.arange(3290)))
    np.testing.assert_allclose(got, hand, rtol=1e-6)
    assert float(experiment.learning_rate_factor("constant", jnp.int32(77))) == 1.0


def test_burda_schedule_in_the_compiled_step():
    """Per step inside the epoch (2 steps per pass): the logged rate follows the passes, and a
    step in pass 2 is the constant-rate step at 1e-3·10^(−1/7)."""
    cfg = tiny(optim=dict(schedule="burda"), train=dict(batch_size=750))
    ds = experiment.load_data(cfg)
    exp = experiment.Experiment.build(cfg, ds.image_shape)
    st, hp = exp.init_state(), experiment.hyperparams(cfg)
    epoch = jax.jit(exp.train_epoch)
    lrs = []
    for e in range(5):
        st, m = epoch(st, hp, jnp.asarray(ds.train_images), None, jnp.int32(e), exp.data_key())
        lrs += list(np.asarray(m["learning_rate"]))
        if e == 0:
            after_first = st
    np.testing.assert_allclose(lrs, np.repeat(_burda_by_hand(5), 2), rtol=1e-6)

    batch = _batch(ds, 750)
    lr1 = 1e-3 * 10 ** (-1 / 7)
    const = tiny(optim=dict(learning_rate=lr1), train=dict(batch_size=750))
    ec = experiment.Experiment.build(const, ds.image_shape)
    a, _ = jax.jit(exp.train_step, static_argnums=3)(after_first, batch, hp, 2)
    b, _ = jax.jit(ec.train_step)(after_first, batch, experiment.hyperparams(const))
    chex_close = lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-8)  # noqa: E731
    jax.tree.map(chex_close, a.params, b.params)
    moved = jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))), a.params, after_first.params)
    assert max(jax.tree.leaves(moved)) > 0


def test_skip_grad_norm_zeroes_large_updates_and_leaves_the_rest_identical():
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros((2,))}
    g = lambda s: {"w": s * jnp.full((3, 2), 0.1), "b": s * jnp.asarray([0.2, -0.1])}  # noqa: E731
    small1, big, small2 = g(1.0), g(1e3), g(-0.5)
    tx = experiment.make_optimizer(config_lib.OptimConfig(skip_grad_norm=1.0))
    ref = experiment.make_optimizer(config_lib.OptimConfig())
    s, r = tx.init(params), ref.init(params)
    u1, s = tx.update(small1, s, params)
    v1, r = ref.update(small1, r, params)
    jax.tree.map(np.testing.assert_array_equal, u1, v1)
    u2, s = tx.update(big, s, params)  # above the threshold: nothing moves
    assert all(float(jnp.max(jnp.abs(a))) == 0.0 for a in jax.tree.leaves(u2))
    u3, s = tx.update(small2, s, params)
    v3, r = ref.update(small2, r, params)  # the reference never saw the large batch
    jax.tree.map(np.testing.assert_array_equal, u3, v3)
    assert int(s.skipped) == 1
    u4, s = tx.update({"w": jnp.full((3, 2), jnp.nan), "b": jnp.zeros(2)}, s, params)
    assert all(float(jnp.max(jnp.abs(a))) == 0.0 for a in jax.tree.leaves(u4)) and int(s.skipped) == 2
    # off (0) is the plain optimizer: the same state structure
    assert jax.tree.structure(ref.init(params)) == jax.tree.structure(
        experiment.make_optimizer(config_lib.OptimConfig(skip_grad_norm=0.0)).init(params))


def test_skip_grad_norm_in_the_train_step():
    base = tiny()
    ds = experiment.load_data(base)
    batch = _batch(ds)
    st = experiment.Experiment.build(base, ds.image_shape).init_state()
    plain, pm = jax.jit(experiment.Experiment.build(base, ds.image_shape).train_step)(
        st, batch, experiment.hyperparams(base))
    for thr, skipped in ((1e-6, True), (1e9, False)):
        cfg = replace(base, optim=dict(skip_grad_norm=thr))
        exp = experiment.Experiment.build(cfg, ds.image_shape)
        st = exp.init_state()
        new, m = jax.jit(exp.train_step)(st, batch, experiment.hyperparams(cfg))
        assert float(m["grad_skipped"]) == float(skipped) and float(m["grad_norm"]) > 0
        assert int(new.step) == 1
        want = st.params if skipped else plain.params
        jax.tree.map(np.testing.assert_array_equal, new.params, want)
        assert float(m["loss"]) == float(pm["loss"])


# ----------------------------------------------------------------------------------------------
# Burda et al. (2015) Table 1 configs

PAPER = {  # name -> (stochastic layers, objective, k, static binarization)
    "burda_vae_1layer": (1, "elbo", 1, False),
    "burda_iwae5_1layer": (1, "iwae", 5, False),
    "burda_iwae50_1layer": (1, "iwae", 50, False),
    "burda_vae_2layer": (2, "elbo", 1, False),
    "burda_iwae5_2layer": (2, "iwae", 5, False),
    "burda_iwae50_2layer": (2, "iwae", 50, False),
    "burda_vae_1layer_static": (1, "elbo", 1, True),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_config_carries_burdas_recipe_and_trains_one_tiny_epoch(name):
    layers, objective, k, static = PAPER[name]
    raw = load_config_dict(f"paper/{name}")
    cfg = config_lib.from_config_dict(raw)
    m, o, opt, t, e = cfg.model, cfg.objective, cfg.optim, cfg.train, cfg.eval
    assert (m.hidden, m.activation, m.likelihood, m.network) == ((200, 200), "tanh", "bernoulli", "mlp")
    if layers == 1:
        assert (m.family, m.latent_dim) == ("vae", 50)
    else:
        assert (m.family, m.hvae.latents, m.hvae.upper_hidden, m.hvae.inference) == (
            "hvae", (100, 50), (100, 100), "bottom_up")
    assert (o.name, o.num_samples, o.beta, o.schedule, o.free_bits) == (objective, k, 1.0, "constant", 0.0)
    assert (opt.name, opt.b1, opt.b2, opt.eps, opt.learning_rate, opt.schedule) == (
        "adam", 0.9, 0.999, 1e-4, 1e-3, "burda")
    assert (opt.grad_clip_norm, opt.skip_grad_norm, opt.weight_decay) == (0.0, 0.0, 0.0)
    assert (t.batch_size, t.num_epochs) == (20, sum(3 ** i for i in range(8))) == (20, 3280)
    assert e.k == 5000 and e.num_images == 0 and "importance_sampling" in e.evaluators
    if static:
        assert (cfg.data.name, cfg.data.binarization, cfg.data.train_split) == (
            "binarized_mnist", "none", "train+validation")
    else:
        assert (cfg.data.name, cfg.data.binarization) == ("mnist", "dynamic")

    # one tiny epoch on the digits (dynamic binarization applies to them too)
    raw.data.name, raw.data.train_split = "digits", ""
    raw.model.hidden, raw.model.latent_dim = (16,), 4
    raw.model.hvae.latents, raw.model.hvae.upper_hidden = (4, 3), (8,)
    cfg = config_lib.from_config_dict(raw)
    ds = experiment.load_data(cfg)
    exp = experiment.Experiment.build(cfg, ds.image_shape)
    st, metrics = jax.jit(exp.train_epoch)(exp.init_state(), experiment.hyperparams(cfg),
                                           jnp.asarray(ds.train_images), None, jnp.int32(0),
                                           exp.data_key())
    assert int(st.step) == len(ds.train_images) // 20
    assert np.isfinite(np.asarray(metrics["loss"])).all()
    np.testing.assert_allclose(np.asarray(metrics["learning_rate"]), 1e-3, rtol=1e-6)
    assert float(jnp.mean(metrics["loss"][-10:])) < float(jnp.mean(metrics["loss"][:10]))


def test_matmul_floor_reads_every_matmul_of_the_training_step():
    """``scripts/matmul_floor.py --config`` counts the step's matmuls from its jaxpr: for Burda's
    one-layer VAE (784-200-200-(2·50), mirrored decoder) that is 6 forward products, 6 weight
    gradients and 5 input gradients (none for the image), whose FLOPs are written out by hand."""
    import dataclasses
    import importlib.util
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("matmul_floor", root / "scripts" / "matmul_floor.py")
    mf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mf)
    cfg = config_lib.from_config_dict(load_config_dict("paper/burda_vae_1layer"))
    b = 20
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=b))
    exp = experiment.Experiment.build(cfg, (28, 28, 1))
    batch = {"image": jax.ShapeDtypeStruct((b, 28, 28, 1), jnp.float32),
             "label": jax.ShapeDtypeStruct((b,), jnp.int32)}
    jaxpr = jax.make_jaxpr(lambda s, x, h: exp.train_step(s, x, h, 1))(
        jax.eval_shape(exp.init_state), batch, experiment.hyperparams(cfg)).jaxpr
    dots = mf.step_dots(jaxpr)
    layers = [(784, 200), (200, 200), (200, 100), (50, 200), (200, 200), (200, 784)]
    forward = sum(i * o for i, o in layers)
    assert len(dots) == 6 + 6 + 5
    assert sum(mf.dot_flops(*d) for d in dots) == 2 * b * (3 * forward - 784 * 200)
    # the floor's epoch runs and returns a finite number
    assert np.isfinite(float(mf.dots_only_epoch(dots, 2)(jnp.float32(0))))
