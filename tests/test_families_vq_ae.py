"""VQ-VAE, AE and DAE families, the discretized logistic likelihood and the conv variants:
a tiny run per family on the embedded digits, the VQ maths against brute force, the EMA codebook,
the DAE's noisy input and clean target, and conv trunks for 28×28, 32×32 and 64×64 inputs."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import expit

from conftest import tiny
from vae_jax import checkpoint, experiment, likelihoods, networks, train
from vae_jax.config import ConfigError
from vae_jax.metrics import read_jsonl
from vae_jax.models import ae, vqvae


def _exp(cfg, shape=(8, 8, 1), seed=0):
    """The experiment and a train state with host-drawn parameters: N(0, 1/fan_in) kernels (and
    codebook), zero biases. Compiling the random initialisation costs more CPU time than the
    rest of a test, and these tests need parameters, not the shipped initialisers."""
    exp = experiment.Experiment.build(cfg, shape)
    rng = np.random.default_rng(seed)
    abstract = jax.eval_shape(exp.init_state).params
    params = jax.tree.map(lambda a: jnp.asarray(
        rng.normal(size=a.shape) / math.sqrt(math.prod(a.shape[:-1])) if len(a.shape) > 1
        else np.zeros(a.shape), a.dtype), abstract)
    state = experiment.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                             opt_state=exp.tx.init(params),
                             rng=jax.random.key_data(jax.random.key(seed)),
                             model_state=exp.family.init_state(exp.model, params))
    return exp, state


def _grads(exp, state, batch, key):
    """Jitted (loss, grads) of the experiment's training loss at ``state``."""
    hp = experiment.hyperparams(exp.cfg)
    fn = jax.jit(jax.value_and_grad(lambda p: exp.loss_fn(p, batch, key, state.step, hp)[0]))
    return fn(state.params)


def _digits_batch(n=64):
    cfg = tiny()
    x = np.asarray(experiment.load_data(cfg).train_images[:n], np.float32)
    return {"image": jnp.asarray(x)}


# ------------------------------------------------------------------------------------------
# One tiny run per family


@pytest.mark.parametrize("family,extra", [("vqvae", {}), ("vqvae", {"vqvae": {"ema": True}}),
                                          ("ae", {}), ("dae", {})],
                         ids=["vqvae", "vqvae_ema", "ae", "dae"])
def test_tiny_run_learns_and_terms_add_up(family, extra, tmp_path):
    # 8 epochs (120 steps): with the codebook trained by Adam, the loss of the tiny VQ-VAE rises
    # for a few epochs while the codes catch up with the growing encoder outputs, then falls
    cfg = tiny(model=dict(family=family, **extra),
               train=dict(num_epochs=8, eval_every_epochs=4, checkpoint_every_epochs=4))
    summary = train.train_and_evaluate(cfg, str(tmp_path))
    rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    assert len(rows) == 8
    assert rows[-1]["loss"] < rows[0]["loss"] and rows[-1]["recon"] < rows[0]["recon"]
    for r in rows:
        assert np.isfinite([r["loss"], r["recon"], r["kl"], r["elbo"], r["aux_loss"]]).all()
        assert r["elbo"] == pytest.approx(-r["recon"] - r["kl"], rel=1e-5, abs=1e-4)
        assert r["loss"] == pytest.approx(r["recon"] + r["aux_loss"], rel=1e-5, abs=1e-4)
    assert summary["elbo"] == pytest.approx(-summary["recon"] - summary["kl"], rel=1e-5)
    m = cfg.model
    if family == "vqvae":
        k = m.vqvae.num_codes
        for r in rows:
            assert r["kl"] == pytest.approx(m.latent_dim * math.log(k), rel=1e-6)
            assert 1.0 <= r["perplexity"] <= k and 0 < r["codes_used"] <= 1
            assert r["dead_codes"] == pytest.approx(k * (1 - r["codes_used"]), abs=1e-3)
        assert rows[-1]["perplexity"] > 2.0  # more than a collapsed codebook
        ck = checkpoint.Checkpointer(str(tmp_path))
        exp = experiment.Experiment.build(cfg, (8, 8, 1))
        _, state = ck.restore_latest(jax.eval_shape(exp.init_state))
        ck.close()
        if m.vqvae.ema:  # the EMA statistics are checkpointed and the codebook is their estimate
            size, total = state.model_state["cluster_size"], state.model_state["cluster_size"].sum()
            smoothed = (size + vqvae.LAPLACE_EPS) / (total + k * vqvae.LAPLACE_EPS) * total
            np.testing.assert_allclose(state.params["codebook"],
                                       state.model_state["embed_sum"] / smoothed[:, None], rtol=1e-5)
        else:
            assert state.model_state == {}
    else:
        for r in rows:
            assert r["kl"] == 0.0 and r["aux_loss"] == 0.0 and r["elbo"] == -r["recon"]


# ------------------------------------------------------------------------------------------
# VQ maths


def test_nearest_codes_match_brute_force():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 7, 4)).astype(np.float32)
    cb = rng.normal(size=(13, 4)).astype(np.float32)
    want = np.argmin(((z[:, :, None, :] - cb[None, None]) ** 2).sum(-1), -1)
    np.testing.assert_array_equal(vqvae.nearest_codes(jnp.asarray(z), jnp.asarray(cb)), want)
    z_q, e, idx = vqvae.quantize(jnp.asarray(z), jnp.asarray(cb))
    np.testing.assert_allclose(z_q, cb[want], atol=1e-6)
    np.testing.assert_array_equal(e, cb[want])


def test_straight_through_copies_the_gradient_at_z_q():
    rng = np.random.default_rng(1)
    z_e = jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32)
    cb = jnp.asarray(rng.normal(size=(9, 4)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32)
    f = lambda z: jnp.sum(jnp.sin(z * w) * z)  # noqa: E731  nonlinear: gradient depends on the point
    g_through = jax.grad(lambda z: f(vqvae.quantize(z, cb)[0]))(z_e)
    _, e, _ = vqvae.quantize(z_e, cb)
    # z_q = z_e + (e − z_e) equals e up to float32 rounding, hence the atol
    np.testing.assert_allclose(g_through, jax.grad(f)(e), rtol=1e-5, atol=1e-6)
    assert not np.allclose(g_through, jax.grad(f)(z_e))  # evaluated at z_q, not at z_e


def test_perplexity_and_usage():
    k = 16
    idx = jnp.tile(jnp.arange(5), 8)  # 5 codes, used equally
    s = vqvae.usage_stats(idx, k)
    assert float(s["perplexity"]) == pytest.approx(5.0, rel=1e-5)
    assert float(s["codes_used"]) == pytest.approx(5 / k) and float(s["dead_codes"]) == k - 5
    s = vqvae.usage_stats(jnp.array([0, 0, 0, 1]), k)  # skewed: fewer effective codes than used
    assert 1.0 < float(s["perplexity"]) < 2.0


def test_ema_moves_codes_toward_assigned_outputs_and_codebook_gets_no_gradient():
    cfg = tiny(model=dict(family="vqvae", vqvae=dict(ema=True, decay=0.9)))
    exp, state = _exp(cfg)
    batch = _digits_batch()
    key = jax.random.key(0)
    hp = experiment.hyperparams(cfg)
    _, grads = _grads(exp, state, batch, key)
    assert not np.any(np.asarray(grads["codebook"]))
    assert np.any(np.asarray(grads["pre_quant"]["Dense_0"]["kernel"]))
    # without EMA the codebook loss does reach the codebook
    cfg2 = tiny(model=dict(family="vqvae", vqvae=dict(ema=False)))
    exp2, state2 = _exp(cfg2)
    _, g2 = _grads(exp2, state2, batch, key)
    assert np.any(np.asarray(g2["codebook"]))

    t = jax.jit(exp.terms)(state.params, batch, key)
    z_e, idx = np.asarray(t["_z_e"]).reshape(-1, cfg.model.vqvae.code_dim), np.asarray(t["_idx"]).ravel()
    old = np.asarray(state.params["codebook"])
    new_params, new_state = jax.jit(lambda p, s, t: exp.family.post_update(exp.model, p, s, t))(
        state.params, state.model_state, t)
    new = np.asarray(new_params["codebook"])
    used = np.unique(idx)
    assert len(used) >= 2
    for k in used:
        target = z_e[idx == k].mean(0)
        assert np.linalg.norm(new[k] - target) < np.linalg.norm(old[k] - target)
    counts = np.bincount(idx, minlength=cfg.model.vqvae.num_codes)
    np.testing.assert_allclose(new_state["cluster_size"], 0.9 * 1.0 + 0.1 * counts, rtol=1e-6)
    unused = counts == 0  # unassigned codes keep their place (up to the Laplace smoothing)
    np.testing.assert_allclose(new[unused], old[unused], rtol=1e-3, atol=1e-6)
    # a full train step: the codebook ends where post_update puts it, whatever the optimizer did
    st, _ = jax.jit(exp.train_step)(state, {"image": batch["image"]}, hp)
    size = st.model_state["cluster_size"]
    total = size.sum()
    smoothed = (size + vqvae.LAPLACE_EPS) / (total + size.shape[0] * vqvae.LAPLACE_EPS) * total
    np.testing.assert_allclose(st.params["codebook"], st.model_state["embed_sum"] / smoothed[:, None],
                               rtol=1e-5)


def test_vq_encode_decode_for_figures():
    cfg = tiny(model=dict(family="vqvae"))
    exp, state = _exp(cfg)
    m, p = exp.model, {"params": state.params}
    x = _digits_batch(6)["image"]
    idx = m.apply(p, x, method=m.encode_indices)
    z_q, zeros = m.apply(p, x, method=m.encode)
    assert z_q.shape == (6, cfg.model.latent_dim * cfg.model.vqvae.code_dim) and not np.any(zeros)
    from_idx = m.apply(p, idx, method=m.decode)
    np.testing.assert_allclose(m.apply(p, z_q, method=m.decode), from_idx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m.apply(p, x)["params"], from_idx, rtol=1e-5, atol=1e-5)
    imgs = vqvae.sample_images(m, state.params, jax.random.key(3), 5)
    assert imgs.shape == (5, 8, 8, 1) and np.isfinite(imgs).all()


# ------------------------------------------------------------------------------------------
# AE / DAE


def test_dae_encodes_noisy_input_and_scores_clean_target():
    cfg = tiny(model=dict(family="dae", dae=dict(noise=0.5)))
    exp, state = _exp(cfg)
    x = _digits_batch(16)["image"]
    key = jax.random.key(7)
    seen = []

    def spy(next_fun, args, kwargs, context):
        if context.module.name == "encoder" and context.method_name == "__call__":
            seen.append(args[0])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(spy):
        t = exp.terms(state.params, {"image": x}, key, 1)
    x_noisy = ae.corrupt(x, key, 0.5, 1)[0]
    assert len(seen) == 1
    np.testing.assert_allclose(seen[0], x_noisy, rtol=1e-6)
    assert float(jnp.abs(seen[0] - x).mean()) > 0.3  # noise of std 0.5 was added
    lik = likelihoods.from_config(cfg.model)
    out = exp.model.apply({"params": state.params}, x_noisy)["params"]
    np.testing.assert_allclose(t["recon"], -lik.log_prob(out, x), rtol=1e-5)
    assert not np.allclose(t["recon"], -lik.log_prob(out, x_noisy), rtol=1e-3)
    # the plain AE sees x itself
    exp_ae = experiment.Experiment.build(tiny(model=dict(family="ae")), (8, 8, 1))
    seen.clear()
    with nn.intercept_methods(spy):
        exp_ae.terms(state.params, {"image": x}, key, 1)
    np.testing.assert_array_equal(seen[0], x)


def test_ae_decodes_prior_samples_to_finite_images():
    cfg = tiny(model=dict(family="ae"))
    exp, state = _exp(cfg)
    m = exp.model
    z = jax.random.normal(jax.random.key(0), (10, cfg.model.latent_dim))
    out = m.apply({"params": state.params}, z, method=m.decode)
    img = likelihoods.from_config(cfg.model).mean(out)
    assert img.shape == (10, 8, 8, 1) and np.isfinite(img).all()
    mu, logvar = m.apply({"params": state.params}, _digits_batch(4)["image"], method=m.encode)
    assert mu.shape == (4, cfg.model.latent_dim) and not np.any(logvar)


@pytest.mark.parametrize("family", ["ae", "vqvae"])
def test_beta_is_rejected_for_families_without_kl(family):
    with pytest.raises(ConfigError, match=r"config\.objective\.beta=4\.0: family .* no KL term"):
        experiment.Experiment.build(tiny(model=dict(family=family), objective=dict(beta=4.0)), (8, 8, 1))


# ------------------------------------------------------------------------------------------
# Discretized logistic

LEVELS = -1.0 + 2.0 * np.arange(256) / 255.0
CASES = [(0.0, -2.0), (0.3, 0.5), (-0.99, -5.0), (1.2, -6.5), (-3.0, 1.0), (0.5, 3.0), (0.1, -6.9)]


def _per_pixel(mu, log_s, x):
    shape = (-1, 1, 1, 1)
    return likelihoods.discretized_logistic_log_prob(
        jnp.asarray(np.broadcast_to(mu, np.shape(x)), jnp.float32).reshape(shape),
        jnp.asarray(np.broadcast_to(log_s, np.shape(x)), jnp.float32).reshape(shape),
        jnp.asarray(x, jnp.float32).reshape(shape))


@pytest.mark.parametrize("mu,log_s", CASES)
def test_logistic_sums_to_one_over_256_levels(mu, log_s):
    lp = np.asarray(_per_pixel(mu, log_s, LEVELS), np.float64)  # [256]
    assert np.isfinite(lp).all()
    assert np.exp(lp).sum() == pytest.approx(1.0, abs=1e-4)


def _reference(mu, s, x):
    """float64: log of the cdf difference, with the edge bins taking the whole tails."""
    a, b = (x - mu + 1 / 255) / s, (x - mu - 1 / 255) / s
    log_sig = lambda t: -np.logaddexp(0.0, -t)  # noqa: E731
    mid = log_sig(a) + np.log(-np.expm1(log_sig(b) - log_sig(a)))
    return np.where(x < -0.999, log_sig(a), np.where(x > 0.999, log_sig(-b), mid))


def test_logistic_matches_float64_reference():
    rng = np.random.default_rng(0)
    x = rng.choice(LEVELS, 4000)
    x[:20], x[20:40] = -1.0, 1.0
    mu = rng.uniform(-1.5, 1.5, x.shape)
    log_s = rng.uniform(-6.0, 1.0, x.shape)
    s32 = np.exp(np.float32(log_s)).astype(np.float64)
    got = np.asarray(_per_pixel(mu, log_s, x), np.float64)
    want = _reference(np.float32(mu).astype(np.float64), s32, np.float32(x).astype(np.float64))
    assert np.isfinite(want).all() and want.min() < -100  # far tails are in the test
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-4)
    # moderate cases against the plain cdf difference
    ok = np.abs(x) < 0.999
    direct = np.log(expit((x - mu + 1 / 255) / s32) - expit((x - mu - 1 / 255) / s32))
    sel = ok & (direct > -20)
    np.testing.assert_allclose(got[sel], direct[sel], rtol=1e-4, atol=2e-4)


def test_logistic_gradients_finite_and_samples_on_grid():
    lik = likelihoods.make("logistic", min_log_sigma=-7.0)
    p = jnp.concatenate([jnp.linspace(-3, 3, 64).reshape(1, 8, 8, 1),
                         jnp.linspace(-12, 4, 64).reshape(1, 8, 8, 1)], -1)
    x = jnp.asarray(np.random.default_rng(0).choice(LEVELS, (1, 8, 8, 1)), jnp.float32)
    g = jax.jit(jax.grad(lambda p: lik.log_prob(p, x).sum()))(p)
    assert np.isfinite(g).all()
    s = np.asarray(jax.jit(lik.sample)(jnp.tile(p, (50, 1, 1, 1)), jax.random.key(0)), np.float64)
    k = (s + 1.0) * 127.5
    assert s.min() >= -1.0 and s.max() <= 1.0
    np.testing.assert_allclose(k, np.round(k), atol=1e-3)
    assert len(np.unique(np.round(k))) > 20
    assert float(lik.mean(p).max()) == 1.0 and float(lik.mean(p).min()) == -1.0  # μ clipped


# ------------------------------------------------------------------------------------------
# Conv trunks for 28×28, 32×32 and 64×64


# every size with the VAE; the VQ-VAE and the AE build the same trunks (vae.make_encoder /
# make_decoder) behind their own heads, so one size each covers their wiring
@pytest.mark.parametrize("family,size,channels", [
    ("vae", 28, 1), ("vae", 32, 3), ("vae", 64, 3), ("vqvae", 64, 3), ("ae", 32, 1)])
def test_conv_variants_build_and_train_a_step(family, size, channels):
    ch, strides = networks.CONV_PRESETS[size]
    cfg = tiny(data=dict(scale="symmetric"),
               model=dict(family=family, network="conv", conv_channels=tuple(4 for _ in ch),
                          conv_strides=strides, likelihood="logistic", latent_dim=4, vqvae=dict(code_dim=2)))
    exp, state = _exp(cfg, (size, size, channels))
    x = np.random.default_rng(0).integers(0, 256, (2, size, size, channels)) / 127.5 - 1
    batch = {"image": jnp.asarray(x, jnp.float32)}
    loss, grads = _grads(exp, state, batch, jax.random.key(1))
    assert np.isfinite(float(loss))
    assert all(np.isfinite(g).all() and np.any(g) for g in jax.tree.leaves(grads["decoder"]))
    m = exp.model
    out = jax.eval_shape(lambda p, x: m.apply({"params": p}, m.apply({"params": p}, x, method=m.encode)[0],
                                              method=m.decode), state.params, batch["image"])
    assert out.shape == (2, size, size, 2 * channels)  # (μ, log s) per channel
