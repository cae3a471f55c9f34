"""Spatial VQ-VAE and its PixelCNN prior (the second stage): quantization per position against a
numpy brute force, straight-through gradients on a code map, resuming each stage, and the prior's
bits per code against a hand computation."""

from __future__ import annotations

import json
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import Stop, replace, stop_after, tiny
from vae_jax import checkpoint, code_prior, experiment, train
from vae_jax.config import ConfigError
from vae_jax.models import vqvae


def _cfg(**kw):
    """The shipped spatial config on 8×8 digits: strides (2, 2, 1) -> a 2×2 grid of codes."""
    return tiny("mnist_vqvae_spatial", model=dict(vqvae=dict(
        num_codes=6, code_dim=3, prior_channels=8, prior_layers=2, prior_epochs=2,
        prior_batch_size=50, **kw)), train=dict(num_epochs=2))


@pytest.fixture(scope="module")
def spatial():
    cfg = _cfg()
    exp = experiment.Experiment.build(cfg, (8, 8, 1))
    params = exp.init_state().params
    x = np.asarray(experiment.load_data(cfg).test_images[:5], np.float32) * 2.0 - 1.0  # symmetric
    return exp, params, jnp.asarray(x)


def test_each_position_gets_its_nearest_code(spatial):
    exp, params, x = spatial
    model = exp.model
    z_e = np.asarray(model.apply({"params": params}, x, method=model.encode_continuous))
    idx = np.asarray(model.apply({"params": params}, x, method=model.encode_indices))
    assert z_e.shape == (5, 2, 2, 3) and idx.shape == (5, 2, 2)
    cb = np.asarray(params["codebook"], np.float64)
    for b, i, j in np.ndindex(5, 2, 2):  # brute force, position by position
        assert idx[b, i, j] == np.argmin([np.sum((z_e[b, i, j] - c) ** 2) for c in cb])
    out = model.apply({"params": params}, x)
    np.testing.assert_array_equal(out["idx"], idx)
    np.testing.assert_allclose(out["e"], cb[idx], atol=1e-6)
    # decode takes the grid of indices, its flattening, the code vectors or their flattening
    a = model.apply({"params": params}, jnp.asarray(idx), method=model.decode)
    for z in (jnp.asarray(idx.reshape(5, -1)), jnp.asarray(cb[idx], jnp.float32),
              jnp.asarray(cb[idx].reshape(5, -1), jnp.float32)):
        np.testing.assert_allclose(model.apply({"params": params}, z, method=model.decode), a, atol=1e-5)
    np.testing.assert_allclose(out["params"], a, atol=1e-5)


def test_straight_through_on_a_code_map_and_the_encoder_learns_from_the_decoder(spatial):
    exp, params, x = spatial
    rng = np.random.default_rng(0)
    z_e = jnp.asarray(rng.normal(size=(2, 3, 3, 4)), jnp.float32)
    cb = jnp.asarray(rng.normal(size=(7, 4)), jnp.float32)
    w = jnp.asarray(rng.normal(size=z_e.shape), jnp.float32)
    f = lambda z: jnp.sum(jnp.sin(z * w) * z)  # noqa: E731
    e = vqvae.quantize(z_e, cb)[1]
    np.testing.assert_allclose(jax.grad(lambda z: f(vqvae.quantize(z, cb)[0]))(z_e), jax.grad(f)(e),
                               rtol=1e-5, atol=1e-6)
    # the reconstruction term alone reaches the encoder through the quantizer
    t = jax.grad(lambda p: jnp.mean(exp.family.terms(exp.model, p, {"image": x}, None, 1)["recon"]))(params)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(t["encoder"]))
    terms = exp.family.terms(exp.model, params, {"image": x}, None, 1)
    assert terms["kl_per_dim"].shape == (5, 4)
    np.testing.assert_allclose(terms["kl"], 4 * math.log(6), rtol=1e-6)


def test_bits_per_code_by_hand():
    """With every weight zero the gated layers output 0 and the logits are the last bias b at
    every position, so −log₂ p(c) per code is −log₂ softmax(b)[c]."""
    cfg = _cfg()
    net = code_prior.build(cfg)
    params = net.init(jax.random.key(0), jnp.zeros((1, 3, 3), jnp.int32))["params"]
    params = jax.tree.map(jnp.zeros_like, params)
    b = np.array([0.5, -1.0, 2.0, 0.0, 0.3, -0.2], np.float32)
    params["logits"]["bias"] = jnp.asarray(b)
    codes = np.random.default_rng(0).integers(0, 6, size=(7, 3, 3)).astype(np.int32)
    p = np.exp(b - b.max()) / np.exp(b - b.max()).sum()
    want = -np.mean(np.log2(p[codes]))
    assert code_prior.bits_per_code(net, params, codes, batch_size=3) == pytest.approx(want, rel=1e-5)


def _leaves(folder, target):
    ck = checkpoint.Checkpointer(str(folder))
    step, state = ck.restore_latest(target)
    ck.close()
    return step, [np.asarray(a) for a in jax.tree.leaves(state)]


def test_the_prior_stage_resumes_and_matches_an_uninterrupted_run(tmp_path):
    # stage 1 is the ordinary training loop, whose resume tests/test_train.py covers
    cfg = _cfg()
    a = tmp_path / "straight"
    train.train_and_evaluate(cfg, str(a))

    with pytest.raises(ConfigError, match="--mode prior"):  # stage 2 needs a spatial VQ-VAE
        code_prior.train_prior(replace(cfg, model=dict(vqvae=dict(spatial=False))), str(a))
    with pytest.raises(checkpoint.CheckpointError, match="stage 1 has not finished"):
        code_prior.train_prior(cfg, str(tmp_path / "nothing"))

    per_epoch = len(experiment.load_data(cfg).train_images) // 50
    target = jax.eval_shape(lambda: code_prior.init_state(cfg, (2, 2)))
    c = tmp_path / "prior_resumed"
    shutil.copytree(a, c)  # the same finished stage 1
    sa = code_prior.train_prior(cfg, str(a))
    with pytest.raises(Stop):
        code_prior.train_prior(cfg, str(c), on_epoch_end=stop_after(1))
    assert _leaves(c / "prior", target)[0] == per_epoch  # one epoch of the prior saved
    sc = code_prior.train_prior(cfg, str(c))  # stage 2 resumes from its epoch 1
    (pa, la), (pc, lc) = (_leaves(d / "prior", target) for d in (a, c))
    assert pa == pc == 2 * per_epoch
    for u, v in zip(la, lc):
        np.testing.assert_array_equal(u, v)
    assert sa["test_bits_per_code"] == sc["test_bits_per_code"]
    assert 0 < sa["test_bits_per_code"] < sa["uniform_bits_per_code"] == pytest.approx(math.log2(6))
    rows = [json.loads(line) for line in (c / "prior" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "test"] == [per_epoch, 2 * per_epoch]  # once each
    assert (a / "prior" / "figures" / "samples_prior_vs_uniform.png").exists()
