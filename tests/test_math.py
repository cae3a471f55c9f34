"""Math against independent references: closed-form KL vs Monte Carlo, each likelihood vs
scipy.stats, reparameterization gradients vs finite differences."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from vae_jax import likelihoods, objectives

jax.config.update("jax_enable_x64", False)


def test_gaussian_kl_closed_form_matches_monte_carlo():
    mu = jnp.array([0.0, 1.5, -0.7, 0.3])
    logvar = jnp.array([0.0, -1.0, 0.8, -3.0])
    closed = np.asarray(objectives.gaussian_kl(mu, logvar))
    z = np.asarray(objectives.reparameterize(jax.random.key(0), mu, logvar, 400_000))
    sd = np.exp(0.5 * np.asarray(logvar))
    mc = (stats.norm.logpdf(z, np.asarray(mu), sd) - stats.norm.logpdf(z)).mean(0)
    np.testing.assert_allclose(closed, mc, atol=0.01)
    assert closed[0] == 0.0  # q = p gives exactly zero
    assert np.all(closed >= 0)


def test_gaussian_kl_equals_scipy_entropy_formula():
    # KL(N(m, s²) || N(0, 1)) = -H[q] - E_q[log p] computed independently with scipy
    mu, logvar = 0.9, -0.4
    s = math.exp(0.5 * logvar)
    ref = -stats.norm(mu, s).entropy() + 0.5 * math.log(2 * math.pi) + 0.5 * (mu**2 + s**2)
    assert float(objectives.gaussian_kl(jnp.float32(mu), jnp.float32(logvar))) == pytest.approx(ref, abs=1e-5)


@pytest.fixture
def xs():
    rng = np.random.default_rng(0)
    return rng.normal(size=(3, 4, 4, 1)).astype(np.float32), rng.normal(size=(3, 4, 4, 1)).astype(np.float32)


def test_bernoulli_matches_scipy_on_binary_data():
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=4, size=(5, 6, 6, 1)).astype(np.float32)
    x = (rng.random((5, 6, 6, 1)) < 0.5).astype(np.float32)
    ref = stats.bernoulli.logpmf(x, 1 / (1 + np.exp(-logits.astype(np.float64)))).reshape(5, -1).sum(-1)
    got = likelihoods.make("bernoulli").log_prob(jnp.asarray(logits), jnp.asarray(x))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-3)


def test_bernoulli_is_stable_and_its_gradient_is_sigmoid_minus_x():
    logits = jnp.array([-200.0, -30.0, -1.0, 0.0, 2.0, 40.0, 200.0]).reshape(1, 7, 1, 1)
    x = jnp.array([0.0, 1.0, 0.3, 0.5, 1.0, 0.0, 1.0]).reshape(1, 7, 1, 1)
    lp = likelihoods.bernoulli_log_prob(logits, x)
    assert np.isfinite(lp).all()
    ref = np.sum(np.asarray(x) * np.asarray(logits) - np.logaddexp(0, np.asarray(logits, np.float64)))
    assert float(lp[0]) == pytest.approx(ref, rel=1e-6)
    g = jax.grad(lambda l: likelihoods.bernoulli_log_prob(l, x).sum())(logits)
    np.testing.assert_allclose(g, x - jax.nn.sigmoid(logits), atol=1e-7)


def test_gaussian_fixed_sigma_matches_scipy(xs):
    mean, x = xs
    got = likelihoods.make("gaussian", sigma=0.3).log_prob(jnp.asarray(mean), jnp.asarray(x))
    ref = stats.norm.logpdf(x, mean, 0.3).reshape(3, -1).sum(-1)
    np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_gaussian_learned_sigma_matches_scipy(xs):
    mean, x = xs
    log_sigma = np.linspace(-2, 1, mean.size, dtype=np.float32).reshape(mean.shape)
    lik = likelihoods.make("gaussian_learned", min_log_sigma=-30.0)  # floor far below: identity
    got = lik.log_prob(jnp.concatenate([jnp.asarray(mean), jnp.asarray(log_sigma)], -1), jnp.asarray(x))
    ref = stats.norm.logpdf(x, mean, np.exp(log_sigma)).reshape(3, -1).sum(-1)
    np.testing.assert_allclose(got, ref, rtol=1e-4)
    assert lik.params_per_channel == 2


def test_laplace_matches_scipy(xs):
    loc, x = xs
    got = likelihoods.make("laplace", sigma=0.5).log_prob(jnp.asarray(loc), jnp.asarray(x))
    ref = stats.laplace.logpdf(x, loc, 0.5).reshape(3, -1).sum(-1)
    np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_likelihood_samples_have_the_stated_mean():
    key = jax.random.key(3)
    params = jnp.full((20000, 1, 1, 1), 0.7)
    for name in ("bernoulli", "gaussian", "laplace"):
        lik = likelihoods.make(name, sigma=0.2)
        s = lik.sample(params, key)
        assert float(s.mean()) == pytest.approx(float(lik.mean(params).mean()), abs=0.02), name


def test_reparameterization_gradient_matches_finite_differences():
    """d/dμ, d/dlogσ² of E_ε[f(μ + σε)] with the noise held fixed equals central differences."""
    eps_key = jax.random.key(7)
    x = jnp.array([0.2, -1.0, 0.5])

    def objective(mu, logvar):
        z = objectives.reparameterize(eps_key, mu, logvar, 64)
        return jnp.mean(jnp.sum(jnp.sin(z) * x + 0.5 * z**2, -1))

    mu = jnp.array([0.3, -0.2, 1.0])
    lv = jnp.array([-0.5, 0.2, -1.5])
    g_mu, g_lv = jax.grad(objective, argnums=(0, 1))(mu, lv)
    h = 1e-2
    for d in range(3):
        e = jnp.zeros(3).at[d].set(h)
        fd_mu = (objective(mu + e, lv) - objective(mu - e, lv)) / (2 * h)
        fd_lv = (objective(mu, lv + e) - objective(mu, lv - e)) / (2 * h)
        assert float(g_mu[d]) == pytest.approx(float(fd_mu), rel=2e-3, abs=2e-3)
        assert float(g_lv[d]) == pytest.approx(float(fd_lv), rel=2e-3, abs=2e-3)


def test_reparameterization_gradient_of_expectation_is_unbiased():
    """For f(z) = z², E[f] = μ² + σ², so ∂/∂μ = 2μ: the MC gradient converges to it."""
    mu, lv = jnp.array([0.8]), jnp.array([0.1])
    g = jax.grad(lambda m: jnp.mean(objectives.reparameterize(jax.random.key(1), m, lv, 200_000) ** 2))(mu)
    assert float(g[0]) == pytest.approx(1.6, abs=0.02)


def test_elbo_terms_add_up():
    log_px = jnp.array([[-10.0, -20.0], [-12.0, -18.0]])  # [L=2, B=2]
    kl_dims = jnp.array([[1.0, 2.0], [0.5, 0.5]])
    t = objectives.elbo_terms(log_px, kl_dims)
    np.testing.assert_allclose(t["recon"], [11.0, 19.0])
    np.testing.assert_allclose(t["kl"], [3.0, 1.0])
    np.testing.assert_allclose(t["elbo"], [-14.0, -20.0])
    assert float(objectives.beta_vae_loss(t, 2.0)) == pytest.approx((11 + 6 + 19 + 2) / 2)


@pytest.mark.parametrize("dim", [1, 3, 7])
def test_gaussian_kl_to_matches_monte_carlo(dim):
    # KL(q || p) = E_q[log q(z) - log p(z)] per dimension, from 10^6 numpy samples of q; the
    # tolerance is 5 standard errors of that mean
    rng = np.random.default_rng(dim)
    mu_q, mu_p = rng.normal(size=dim), rng.normal(size=dim)
    lv_q, lv_p = rng.uniform(-2, 1, size=dim), rng.uniform(-2, 1, size=dim)
    closed = np.asarray(objectives.gaussian_kl_to(*(jnp.float32(a) for a in (mu_q, lv_q, mu_p, lv_p))))
    sq, sp = np.exp(0.5 * lv_q), np.exp(0.5 * lv_p)
    z = mu_q + sq * rng.standard_normal((1_000_000, dim))
    d = stats.norm.logpdf(z, mu_q, sq) - stats.norm.logpdf(z, mu_p, sp)
    stderr = d.std(0) / math.sqrt(len(d))
    np.testing.assert_array_less(np.abs(closed - d.mean(0)), 5 * stderr + 1e-5)
    assert closed.shape == (dim,) and np.all(closed >= 0)
    same = objectives.gaussian_kl_to(jnp.float32(mu_q), jnp.float32(lv_q), jnp.float32(mu_q), jnp.float32(lv_q))
    np.testing.assert_allclose(np.asarray(same), 0.0, atol=1e-6)  # q = p gives zero
