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
    jac = jax.jacrev(lambda a: apply(a[None])[0])(x)  # [H, W, Co, H, W, Ci]
    h, w = x.shape[:2]
    return np.abs(np.asarray(jac)).reshape(h * w, -1, h * w, x.shape[-1]).sum((1, 3)) > 0


class _OneStack(nn.Module):
    """The original PixelCNN: a mask-A layer, then mask-B layers."""

    @nn.compact
    def __call__(self, x):
        x = pixelcnn.MaskedConv(4, pixelcnn._mask(pixelcnn.raster_mask(3, 3, "A")))(x)
        for _ in range(4):
            x = pixelcnn.MaskedConv(4, pixelcnn._mask(pixelcnn.raster_mask(3, 3, "B")))(jnp.tanh(x))
        return x


H = W = 5
PAST = np.tril(np.ones((H * W, H * W), bool), -1)  # [t, s]: s strictly before t in raster order


@pytest.mark.parametrize("cond", [None, "vector", "map"])
def test_gated_pixelcnn_sees_exactly_the_past(cond):
    """Output (i, j) depends on every input pixel before it (no blind spot: 5 layers of 3×3
    cover a 5×5 image) and on no pixel at or after it, whatever the conditioning."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(H, W, 2)), jnp.float32)
    c = {None: None, "vector": jnp.ones((1, 3)), "map": jnp.asarray(rng.normal(size=(1, H, W, 3)), jnp.float32)}[cond]
    net = pixelcnn.GatedPixelCNN(channels=4, layers=5, kernel=3, out_features=3)
    params = net.init(jax.random.key(0), x[None], c)
    dep = _dependence(lambda a: net.apply(params, a, c), x)
    np.testing.assert_array_equal(dep, PAST)


def test_one_stack_pixelcnn_never_sees_the_future_but_has_a_blind_spot():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(H, W, 1)), jnp.float32)
    net = _OneStack()
    params = net.init(jax.random.key(1), x[None])
    dep = _dependence(lambda a: net.apply(params, a), x)
    assert not (dep & ~PAST).any()  # nothing at or after the pixel itself
    # the blind spot (van den Oord et al. 2016): pixel (2, 2) never sees (1, 4), up and right
    assert PAST[2 * W + 2, 1 * W + 4] and not dep[2 * W + 2, 1 * W + 4]


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


@pytest.fixture(scope="module")
def ar_vae():
    cfg = tiny("mnist_pixelcnn_vae", model=dict(latent_dim=3, pixelcnn_vae=dict(channels=8, layers=3)))
    exp = experiment.Experiment.build(cfg, (8, 8, 1))
    params = exp.init_state().params
    x = np.asarray(experiment.load_data(cfg).test_images[:4], np.float32)
    x = (np.random.default_rng(0).random(x.shape) < x).astype(np.float32)  # binarized
    return exp, params, {"image": jnp.asarray(x)}


def test_log_weights_match_a_direct_computation(ar_vae):
    exp, params, batch = ar_vae
    fam, model = exp.family, exp.model
    q = fam.proposal(model, params, batch)
    key = jax.random.key(7)
    lw = np.asarray(fam.log_weights(model, params, batch, q, key, 3))  # [3, B]
    mu, logvar = (np.asarray(a, np.float64) for a in q)
    eps = np.asarray(jax.random.normal(key, (3, *mu.shape)), np.float64)
    z = mu + np.exp(0.5 * logvar) * eps
    x = np.asarray(batch["image"], np.float64)
    for l in range(3):
        logits = np.asarray(model.apply({"params": params}, batch["image"], jnp.asarray(z[l], jnp.float32),
                                        method=model.logits), np.float64)
        log_px_z = (x * log_expit(logits) + (1 - x) * log_expit(-logits)).reshape(len(x), -1).sum(-1)
        log_pz = stats.norm.logpdf(z[l]).sum(-1)
        log_q = stats.norm.logpdf(z[l], mu, np.exp(0.5 * logvar)).sum(-1)
        np.testing.assert_allclose(lw[l], log_px_z + log_pz - log_q, rtol=1e-4, atol=1e-3)


def test_mean_log_weight_is_the_elbo_and_importance_sampling_lies_above(ar_vae):
    exp, params, batch = ar_vae
    fam, model = exp.family, exp.model
    n = 1000
    lw = np.asarray(fam.log_weights(model, params, batch, fam.proposal(model, params, batch),
                                    jax.random.key(2), n), np.float64)
    # E_q[log w] = E_q[log p(x|z)] − KL = the ELBO of the terms (closed-form KL, recon by Monte
    # Carlo over 500 samples): agreement within the Monte Carlo error of both
    se = lw.std(0, ddof=1) / np.sqrt(n)
    many = fam.terms(model, params, batch, jax.random.key(3), 500)
    np.testing.assert_allclose(np.asarray(many["elbo"]), -np.asarray(many["recon"]) - np.asarray(many["kl"]),
                               rtol=1e-6)
    np.testing.assert_allclose(lw.mean(0), np.asarray(many["elbo"]), atol=6 * se.max() + 0.05)
    log_px = np.asarray(jax.jit(lambda p, b, k: estimators.importance_log_px(
        estimators.inference(exp), p, b, k, n, 100))(params, batch, jax.random.key(2))[0])
    # the same samples: log-mean-exp >= mean (Jensen); and above the ELBO
    assert np.all(log_px >= lw.mean(0) - 1e-4)
    assert np.all(log_px >= np.asarray(many["elbo"]) - 6 * se)


def test_decode_is_an_ancestral_sample_with_its_conditional_logits(ar_vae):
    exp, params, _ = ar_vae
    fam, model = exp.family, exp.model
    z = jnp.asarray(np.random.default_rng(2).normal(size=(5, 3)), jnp.float32)
    logits = np.asarray(jax.jit(lambda p, z: fam.decode(model, p, z))(params, z))
    assert logits.shape == (5, 8, 8, 1) and np.isfinite(logits).all()
    from vae_jax.models import pixelcnn_vae
    x, again = jax.jit(lambda p, z, k: pixelcnn_vae.sample_logits(model, p, z, k))(
        params, z, jax.random.key(11))
    x = np.asarray(x)
    assert set(np.unique(x)) <= {0.0, 1.0}
    # the returned logits are the model's teacher-forced logits on the sample itself
    np.testing.assert_allclose(np.asarray(again), np.asarray(model.apply(
        {"params": params}, jnp.asarray(x), z, method=model.logits)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("field,value", [("likelihood", "gaussian"), ("pixelcnn_vae", {"kernel": 4})])
def test_bad_decoder_config_is_one_error_line(field, value):
    with pytest.raises(ConfigError, match="config.model"):
        tiny("mnist_pixelcnn_vae", model={field: value})
