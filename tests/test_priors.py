"""Learned priors (vae_jax.priors) in the VAE family: mixture and VampPrior log-densities against
scipy, the Monte Carlo KL against the closed form where one exists, prior samples from a
constructed mixture, β / warm-up / free bits acting on the Monte Carlo KL, and end to end on the
embedded digits (training, checkpoint round trip, importance sampling against the ELBO)."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal, norm

from conftest import replace, tiny
from vae_jax import checkpoint, estimators, evaluate, experiment, priors
from vae_jax.config import ConfigError
from vae_jax.models import vae


def _ref_log_prob(z, means, logvars, weights):
    """log Σ_k π_k N(z; m_k, diag exp(lv_k)) in float64 with scipy, z [N, d] -> [N]."""
    comps = [multivariate_normal(m, np.diag(np.exp(lv))).logpdf(z) + np.log(w)
             for m, lv, w in zip(means, logvars, weights)]
    return logsumexp(np.stack(comps), axis=0)


def _random_mixture(rng, k, d):
    means = rng.normal(0, 1.5, (k, d))
    logvars = rng.normal(0, 0.5, (k, d))
    weights = rng.dirichlet(np.ones(k))
    mix = priors.Mixture(jnp.asarray(means, jnp.float32), jnp.asarray(logvars, jnp.float32),
                         jnp.asarray(np.log(weights), jnp.float32))
    return mix, means, logvars, weights


def _init(cfg, image_shape=(8, 8, 1)):
    exp = experiment.Experiment.build(cfg, image_shape)
    return exp, jax.jit(exp.init_state)().params


def _tiny_prior(kind, k):
    return tiny("mnist_vampprior", model=dict(prior=kind, prior_components=k, latent_dim=6),
                train=dict(num_epochs=2, checkpoint_every_epochs=2, eval_every_epochs=2))


@pytest.fixture(scope="module")
def mog():
    """A tiny VAE with a two-component mixture prior, initialised (digits, latent 6)."""
    return _init(_tiny_prior("mog", 2))


@pytest.fixture(scope="module")
def vamp_run(tmp_path_factory):
    """A tiny VAE with an 8-pseudo-input VampPrior, 30 steps of the training step on digits,
    then saved and restored: (experiment, dataset, initial state, trained state, restored state,
    per-step losses)."""
    cfg = _tiny_prior("vamp", 8)
    ds = experiment.load_data(cfg)
    exp = experiment.Experiment.build(cfg, ds.image_shape)
    state = start = jax.jit(exp.init_state)()
    step = jax.jit(lambda st, b: exp.train_step(st, b, experiment.hyperparams(cfg), 15))
    images, losses = jnp.asarray(ds.train_images), []
    for i in range(30):
        state, metrics = step(state, {"image": images[(i % 15) * 100:(i % 15 + 1) * 100]})
        losses.append(float(metrics["loss"]))
    workdir = str(tmp_path_factory.mktemp("vamp"))
    ck = checkpoint.Checkpointer(workdir)
    ck.save(int(state.step), state)
    ck.close()
    ck = checkpoint.Checkpointer(workdir)
    restored = ck.restore_latest(jax.eval_shape(exp.init_state))[1]
    ck.close()
    return exp, ds, start, state, restored, losses


def test_mixture_log_density_and_its_split_over_dimensions_match_scipy():
    rng = np.random.default_rng(0)
    mix, means, logvars, weights = _random_mixture(rng, 5, 6)
    z = rng.normal(0, 2.0, (3, 7, 6))  # leading axes are kept
    ref = _ref_log_prob(z.reshape(-1, 6), means, logvars, weights).reshape(3, 7)
    np.testing.assert_allclose(priors.log_prob(jnp.asarray(z, jnp.float32), mix), ref, rtol=1e-5, atol=2e-4)
    # the split: Σ_k r_k(z) log N(z_d; m_kd, s_kd²) plus an equal share of −KL(r(z) || π)
    per_dim = np.asarray(priors.log_prob_per_dim(jnp.asarray(z, jnp.float32), mix)).reshape(-1, 6)
    flat = z.reshape(-1, 6)
    dims = norm(means[None], np.exp(0.5 * logvars[None])).logpdf(flat[:, None])  # [N, K, d]
    joint = dims.sum(-1) + np.log(weights)
    r = np.exp(joint - logsumexp(joint, -1, keepdims=True))
    kl_r = np.sum(r * (np.log(r) - np.log(weights)), -1)
    expected = np.einsum("nk,nkd->nd", r, dims) - kl_r[:, None] / 6
    np.testing.assert_allclose(per_dim, expected, rtol=1e-5, atol=2e-4)
    np.testing.assert_allclose(per_dim.sum(-1), ref.reshape(-1), rtol=1e-5, atol=2e-4)


def test_vampprior_density_is_the_mixture_of_pseudo_input_posteriors(vamp_run):
    exp, _, _, state, _, _ = vamp_run
    params = state.params
    u = np.array(params["learned_prior"]["pseudo_inputs"])
    assert u.shape == (8, 8, 8, 1)
    u[0, :4] = 1.7  # outside the data range: clipped to [0, 1] on use (their hardtanh)
    u[1, :4] = -0.3
    params = dict(params, learned_prior={"pseudo_inputs": jnp.asarray(u)})
    apply = jax.jit(lambda p, x: (exp.model.apply({"params": p}, method=exp.model.prior),
                                  exp.model.apply({"params": p}, x, method=exp.model.encode)))
    mix, posterior = apply(params, jnp.asarray(np.clip(u, 0.0, 1.0)))
    mu, lv = (np.asarray(a, np.float64) for a in posterior)
    z = np.random.default_rng(1).normal(0, 1.0, (9, 6)) + mu[2]
    ref = _ref_log_prob(z, mu, lv, np.full(8, 1 / 8))
    np.testing.assert_allclose(priors.log_prob(jnp.asarray(z, jnp.float32), mix), ref, rtol=1e-5, atol=2e-4)


@pytest.mark.parametrize("standard", [True, False])
def test_monte_carlo_kl_matches_closed_form_for_one_gaussian_component(standard):
    """K = 1: the prior is one diagonal Gaussian (N(0, I) or another), the KL has a closed form,
    and the chain-rule terms are each dimension's own KL; the Monte Carlo means must agree
    within their sampling error."""
    rng = np.random.default_rng(2)
    b, d, chunks, per = 3, 5, 20, 2000
    mu, logvar = rng.normal(0, 1, (b, d)), rng.normal(-0.5, 0.5, (b, d))
    m = np.zeros(d) if standard else rng.normal(0, 1, d)
    lv = np.zeros(d) if standard else rng.normal(0, 0.5, d)
    mix = priors.Mixture(jnp.asarray(m[None], jnp.float32), jnp.asarray(lv[None], jnp.float32),
                         jnp.zeros((1,), jnp.float32))
    z = mu + np.exp(0.5 * logvar) * rng.normal(size=(chunks, per, b, d))
    kl = np.asarray(jax.jit(jax.vmap(lambda zc: priors.kl_terms(zc, jnp.asarray(mu, jnp.float32),
                                                        jnp.asarray(logvar, jnp.float32), mix)[0]))(
        jnp.asarray(z, jnp.float32)), np.float64)  # [chunks, B, d]
    closed = 0.5 * (lv - logvar + (np.exp(logvar) + (mu - m) ** 2) / np.exp(lv) - 1.0)
    se = kl.std(0, ddof=1) / math.sqrt(chunks)
    assert np.all(np.abs(kl.mean(0) - closed) < 5 * se + 1e-4)

    # the same through the family's terms: kl and elbo from the Monte Carlo branch
    zz = jnp.asarray(z.reshape(-1, b, d), jnp.float32)
    out = {"mu": jnp.asarray(mu, jnp.float32), "logvar": jnp.asarray(logvar, jnp.float32), "z": zz,
           "params": jnp.zeros((zz.shape[0], b, 2, 2, 1))}
    x = jnp.ones((b, 2, 2, 1))
    t = jax.jit(lambda o, m: vae.gaussian_terms(_tiny_prior("mog", 1).model, x, o, m))(out, mix)
    np.testing.assert_allclose(t["kl"], closed.sum(-1), atol=6 * se.sum(-1).max() + 1e-3)
    np.testing.assert_allclose(t["kl"], np.asarray(t["kl_per_dim"]).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(t["elbo"], np.asarray(t["log_w"]).mean(0), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(t["recon"], 4 * math.log(1 + math.exp(0.0)), rtol=1e-5)  # a float32 mean of 40,000 terms


def test_prior_samples_come_from_the_learned_mixture(mog):
    exp, params = mog
    means = np.zeros((2, 6)); means[0, 0], means[1, 0], means[1, 1] = -8.0, 8.0, 3.0
    logvars = np.zeros((2, 6)); logvars[0] = np.log(0.25)
    params = dict(params, learned_prior={"means": jnp.asarray(means, jnp.float32),
                                         "logvars": jnp.asarray(logvars, jnp.float32),
                                         "logits": jnp.log(jnp.asarray([0.3, 0.7]))})
    n = 20000
    z = np.asarray(exp.family.sample_prior(exp.model, params, jax.random.key(0), n), np.float64)
    right = z[:, 0] > 0
    assert abs(right.mean() - 0.7) < 4 * math.sqrt(0.21 / n)
    for sel, k in ((~right, 0), (right, 1)):
        sd = np.exp(0.5 * logvars[k])
        assert np.all(np.abs(z[sel].mean(0) - means[k]) < 4 * sd / math.sqrt(sel.sum()))
        np.testing.assert_allclose(z[sel].std(0), sd, rtol=0.05)


def test_kl_weight_warmup_and_free_bits_act_on_the_monte_carlo_kl(mog):
    """The prior's parameters enter the loss only through the KL: β = 0 (warm-up at step 0) and
    free bits above every dimension's KL leave them without gradient; otherwise they get one."""
    exp, params = mog
    cfg = exp.cfg
    ds = experiment.load_data(cfg)
    batch = {"image": jnp.asarray(ds.train_images[:32] > 0.5, jnp.float32)}

    @jax.jit
    def prior_grad(step, hp):
        g, (terms, _) = jax.grad(exp.loss_fn, has_aux=True)(params, batch, jax.random.key(0), step, hp)
        return jnp.max(jnp.stack([jnp.abs(a).max() for a in jax.tree.leaves(g["learned_prior"])])), terms["kl"]

    assert cfg.objective.schedule == "linear"
    hp = experiment.hyperparams(cfg)
    assert float(prior_grad(jnp.asarray(0), hp)[0]) == 0.0  # β = 0 at the start of warm-up
    g, kl = prior_grad(jnp.asarray(100), hp)
    assert float(g) > 0.0 and float(jnp.mean(kl)) > 0.0
    floor = dict(hp, free_bits=jnp.float32(1e3))  # far above every dimension's KL
    assert float(prior_grad(jnp.asarray(100), floor)[0]) == 0.0


def test_config_refuses_a_prior_the_family_lacks():
    with pytest.raises(ConfigError, match="model.prior='vamp'.*family 'hvae' supports normal"):
        tiny("mnist_hvae", model=dict(prior="vamp"))
    with pytest.raises(ConfigError, match="model.prior='flow'"):
        tiny("mnist_elu_vae", model=dict(prior="flow"))
    with pytest.raises(ConfigError, match="model.prior_components=0"):
        tiny("mnist_elu_vae", model=dict(prior="mog", prior_components=0))


def test_trains_resumes_and_estimates_under_the_vampprior(vamp_run):
    """The training step trains the prior's parameters with the rest of the model, the
    checkpoint carries them, the logged descriptions state the Monte Carlo KL, and importance
    sampling under the prior is a bound above the ELBO that rises with k. (Both learned priors
    also train and evaluate end to end through train_and_evaluate as the shipped configs
    mnist_vampprior.py and mnist_mog_prior.py in test_train.py.)"""
    exp, ds, start, state, restored, losses = vamp_run
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    moved = np.abs(np.asarray(state.params["learned_prior"]["pseudo_inputs"])
                   - np.asarray(start.params["learned_prior"]["pseudo_inputs"]))
    assert moved.max() > 1e-3  # trained by the same optimizer
    chex.assert_trees_all_equal(restored.params, state.params)  # prior included
    assert any("pseudo_inputs" in jax.tree_util.keystr(k)  # Adam's moments of them too
               for k, _ in jax.tree_util.tree_leaves_with_path(restored.opt_state))
    assert "Monte Carlo KL" in evaluate.EVALUATORS["test_elbo"].describe(exp.cfg)
    assert "Monte Carlo KL" in exp.family.describe(exp.cfg)
    params = restored.params

    # 400 importance weights per test image through the family's sampling path; the k-sample
    # estimate averaged over the 400 / k disjoint groups; the ELBO from terms' own samples
    inf = estimators.inference(exp)
    batch = {"image": estimators.test_images(exp, ds)}

    @jax.jit
    def weights_and_elbo(p, b):
        lw = inf.log_weights(p, b, inf.posterior(p, b), jax.random.key(3), 400)
        return lw, exp.family.terms(exp.model, p, b, jax.random.key(7), 400)["elbo"]

    lw, elbo = (np.asarray(a, np.float64) for a in weights_and_elbo(params, batch))  # [400, N], [N]
    is_k = {k: float(np.mean(logsumexp(lw.reshape(400 // k, k, -1), axis=1) - np.log(k))) for k in (1, 10, 400)}
    se = lw.mean(0).std() / math.sqrt(lw.shape[1])
    assert is_k[1] == pytest.approx(elbo.mean(), abs=4 * se + 0.05)
    assert elbo.mean() < is_k[10] < is_k[400]
