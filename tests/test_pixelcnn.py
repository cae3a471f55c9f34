"""Gated PixelCNN and the autoregressive-decoder VAE: masks checked by the gradients of every
output with respect to every input (no pixel sees itself or a later pixel; the two-stack network
has no blind spot, the one-stack PixelCNN does), ancestral sampling against constructed models
with known answers, and the family's importance weights against a direct computation."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.special import expit, log_expit

from conftest import tiny
from vae_jax import estimators, experiment, pixelcnn
from vae_jax.config import ConfigError
from vae_jax.models import pixelcnn_vae


def test_raster_masks_by_hand():
    np.testing.assert_array_equal(pixelcnn.raster_mask(3, 3, "A"), [[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(pixelcnn.raster_mask(3, 3, "B"), [[1, 1, 1], [1, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(pixelcnn.vertical_mask(3, False), [[1, 1, 1], [0, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(pixelcnn.vertical_mask(3, True), [[1, 1, 1], [1, 1, 1], [0, 0, 0]])
    np.testing.assert_array_equal(pixelcnn.horizontal_mask(5, False), [[1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(pixelcnn.horizontal_mask(5, True), [[1, 1, 1, 0, 0]])


def _dependence(apply, x):
    """[H·W (outputs), H·W (inputs)]: whether any output channel at position t has a nonzero
    gradient with respect to any input channel at position s (one image)."""
    jac = jax.jit(jax.jacrev(lambda a: apply(a[None])[0]))(x)  # [H, W, Co, H, W, Ci]
    h, w = x.shape[:2]
    return np.abs(np.asarray(jac)).reshape(h * w, -1, h * w, x.shape[-1]).sum((1, 3)) > 0


class _OneStack(nn.Module):
    """The original PixelCNN: a mask-A layer, then mask-B layers."""

    @nn.compact
    def __call__(self, x):
        x = pixelcnn.MaskedConv(2, pixelcnn._mask(pixelcnn.raster_mask(3, 3, "A")))(x)
        for _ in range(3):
            x = pixelcnn.MaskedConv(2, pixelcnn._mask(pixelcnn.raster_mask(3, 3, "B")))(jnp.tanh(x))
        return x


H = W = 4
PAST = np.tril(np.ones((H * W, H * W), bool), -1)  # [t, s]: s strictly before t in raster order


@pytest.mark.parametrize("cond", [None, "vector", "map"])
def test_gated_pixelcnn_sees_exactly_the_past(cond):
    """Output (i, j) depends on every input pixel before it (no blind spot: 4 layers of 3×3
    cover a 4×4 image) and on no pixel at or after it, whatever the conditioning."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(H, W, 2)), jnp.float32)
    c = {None: None, "vector": jnp.ones((1, 3)), "map": jnp.asarray(rng.normal(size=(1, H, W, 3)), jnp.float32)}[cond]
    net = pixelcnn.GatedPixelCNN(channels=2, layers=4, kernel=3, out_features=3)
    params = net.init(jax.random.key(0), x[None], c)
    dep = _dependence(lambda a: net.apply(params, a, c), x)
    np.testing.assert_array_equal(dep, PAST)


def test_one_stack_pixelcnn_never_sees_the_future_but_has_a_blind_spot():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(H, W, 1)), jnp.float32)
    net = _OneStack()
    params = net.init(jax.random.key(1), x[None])
    dep = _dependence(lambda a: net.apply(params, a), x)
    assert not (dep & ~PAST).any()  # nothing at or after the pixel itself
    # the blind spot (van den Oord et al. 2016): pixel (2, 1) never sees (1, 3), up and right
    assert PAST[2 * W + 1, 1 * W + 3] and not dep[2 * W + 1, 1 * W + 3]


def test_ancestral_sampling_reproduces_a_constructed_image():
    """A deterministic model: x_t = 1 exactly when the number of ones before t is a multiple of
    3 (logits ±50). Sampling must follow the recursion, which needs each step to see the pixels
    drawn before it."""
    h, w = 4, 6
    want = np.zeros(h * w)
    for t in range(h * w):
        want[t] = float(want[:t].sum() % 3 == 0)

    def logits_fn(x):
        flat = x.reshape(x.shape[0], -1)
        before = jnp.cumsum(flat, -1) - flat
        return jnp.where(jnp.mod(before, 3) == 0, 50.0, -50.0).reshape(x.shape)

    x = jax.jit(lambda k: pixelcnn.ancestral_sample(logits_fn, k, jnp.zeros((2, h, w, 1)),
                                                    pixelcnn.draw_bernoulli))(jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(x)[..., 0].reshape(2, -1), np.stack([want, want]))


def test_sampling_frequencies_match_known_conditionals():
    """Pixel 0 ~ Bernoulli(σ(0.5)); pixel 1 has logit +2 after a one and −2 after a zero; codes
    (a second model) are categorical with known probabilities. 4000 draws each."""
    n = 4000

    def logits_fn(x):
        l1 = jnp.where(x[:, 0, 0, 0] > 0.5, 2.0, -2.0)
        return jnp.stack([jnp.full_like(l1, 0.5), l1], -1).reshape(-1, 1, 2, 1)

    x = np.asarray(jax.jit(lambda k: pixelcnn.ancestral_sample(
        logits_fn, k, jnp.zeros((n, 1, 2, 1)), pixelcnn.draw_bernoulli))(jax.random.key(3)))
    x0, x1 = x[:, 0, 0, 0], x[:, 0, 1, 0]
    p0 = expit(0.5)
    joint = {(1, 1): p0 * expit(2.0), (1, 0): p0 * expit(-2.0), (0, 1): (1 - p0) * expit(-2.0),
             (0, 0): (1 - p0) * expit(2.0)}
    for (a, b), p in joint.items():
        freq = np.mean((x0 == a) & (x1 == b))
        assert abs(freq - p) < 4 * np.sqrt(p * (1 - p) / n), (a, b, freq, p)

    probs = np.array([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]])
    logits = jnp.asarray(np.log(probs), jnp.float32).reshape(1, 1, 2, 4)
    codes = np.asarray(jax.jit(lambda k: pixelcnn.ancestral_sample(
        lambda c: jnp.broadcast_to(logits, (*c.shape, 4)), k, jnp.zeros((n, 1, 2), jnp.int32),
        pixelcnn.draw_categorical))(jax.random.key(4)))
    for pos in range(2):
        freq = np.bincount(codes[:, 0, pos], minlength=4) / n
        np.testing.assert_array_less(np.abs(freq - probs[pos]), 4 * np.sqrt(probs[pos] * (1 - probs[pos]) / n))


def test_categorical_log_prob_by_hand():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(2, 3, 3, 5)).astype(np.float32)
    codes = rng.integers(0, 5, size=(2, 3, 3))
    lsm = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want = np.take_along_axis(lsm, codes[..., None], -1)[..., 0].reshape(2, -1).sum(-1)
    np.testing.assert_allclose(pixelcnn.categorical_log_prob(jnp.asarray(logits), jnp.asarray(codes)),
                               want, rtol=1e-5)


# ------------------------------------------------------------------------------------------
# The autoregressive-decoder VAE


N_IS = 400  # importance samples per image


@pytest.fixture(scope="module")
def ar_vae():
    """A tiny model on 4 random binary 8×8 images, its q(z|x), N_IS log-weights per image, the
    importance-sampled log p(x) from the same samples and 200-sample ELBO terms (one compile)."""
    cfg = tiny("mnist_pixelcnn_vae", model=dict(latent_dim=3, pixelcnn_vae=dict(channels=8, layers=3)))
    exp = experiment.Experiment.build(cfg, (8, 8, 1))
    fam, model = exp.family, exp.model
    params = jax.jit(lambda: fam.init(model, {"params": jax.random.key(0), "noise": jax.random.key(1)},
                                      {"image": jnp.zeros((1, 8, 8, 1))}))()
    x = (np.random.default_rng(0).random((4, 8, 8, 1)) < 0.3).astype(np.float32)
    batch = {"image": jnp.asarray(x)}
    key = jax.random.key(2)

    @jax.jit
    def run(p, b):
        q = fam.proposal(model, p, b)
        lw = fam.log_weights(model, p, b, q, jax.random.fold_in(key, 0), N_IS)
        log_px = estimators.importance_log_px(estimators.inference(exp), p, b, key, N_IS, N_IS)[0]
        return q, lw, log_px, fam.terms(model, p, b, jax.random.key(3), 200)

    q, lw, log_px, many = jax.device_get(run(params, batch))
    return dict(exp=exp, params=params, x=x, key=jax.random.fold_in(key, 0), q=q, lw=np.asarray(lw, np.float64),
                log_px=np.asarray(log_px, np.float64), many=many)


def test_log_weights_match_a_direct_computation(ar_vae):
    exp, params, x = ar_vae["exp"], ar_vae["params"], ar_vae["x"]
    model = exp.model
    mu, logvar = (np.asarray(a, np.float64) for a in ar_vae["q"])
    eps = np.asarray(jax.random.normal(ar_vae["key"], (N_IS, *mu.shape)), np.float64)[:3]
    z = mu + np.exp(0.5 * logvar) * eps
    logits_of = jax.jit(lambda p, x, z: model.apply({"params": p}, x, z, method=model.logits))
    for l in range(3):
        logits = np.asarray(logits_of(params, jnp.asarray(x), jnp.asarray(z[l], jnp.float32)), np.float64)
        log_px_z = (x * log_expit(logits) + (1 - x) * log_expit(-logits)).reshape(len(x), -1).sum(-1)
        log_pz = stats.norm.logpdf(z[l]).sum(-1)
        log_q = stats.norm.logpdf(z[l], mu, np.exp(0.5 * logvar)).sum(-1)
        np.testing.assert_allclose(ar_vae["lw"][l], log_px_z + log_pz - log_q, rtol=1e-4, atol=1e-3)


def test_mean_log_weight_is_the_elbo_and_importance_sampling_lies_above(ar_vae):
    lw, log_px, many = ar_vae["lw"], ar_vae["log_px"], ar_vae["many"]
    # E_q[log w] = E_q[log p(x|z)] − KL = the ELBO of the terms (closed-form KL, recon by Monte
    # Carlo over 200 samples): agreement within the Monte Carlo error of both
    se = lw.std(0, ddof=1) / np.sqrt(N_IS)
    np.testing.assert_allclose(many["elbo"], -many["recon"] - many["kl"], rtol=1e-6)
    np.testing.assert_allclose(lw.mean(0), many["elbo"], atol=6 * se.max() + 0.05)
    # the same samples: log-mean-exp >= mean (Jensen); and above the ELBO
    assert np.all(log_px >= lw.mean(0) - 1e-4)
    assert np.all(log_px >= many["elbo"] - 6 * se)


def test_ancestral_decoding_returns_the_conditional_logits_of_its_sample(ar_vae):
    exp, params = ar_vae["exp"], ar_vae["params"]
    model = exp.model
    z = jnp.asarray(np.random.default_rng(2).normal(size=(5, 3)), jnp.float32)

    @jax.jit
    def run(p, z):
        x, logits = pixelcnn_vae.sample_logits(model, p, z, jax.random.key(11))
        return x, logits, model.apply({"params": p}, x, z, method=model.logits)

    x, logits, teacher_forced = (np.asarray(a) for a in run(params, z))
    assert logits.shape == (5, 8, 8, 1) and np.isfinite(logits).all()
    assert set(np.unique(x)) <= {0.0, 1.0} and 0 < x.mean() < 1
    np.testing.assert_allclose(logits, teacher_forced, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("field,value", [("likelihood", "gaussian"), ("pixelcnn_vae", {"kernel": 4})])
def test_bad_decoder_config_is_one_error_line(field, value):
    with pytest.raises(ConfigError, match="config.model"):
        tiny("mnist_pixelcnn_vae", model={field: value})
