"""Convolution implementations (vae_jax.conv): each equals lax.conv_general_dilated on the same
weights, forward and both gradients; the parameter trees do not depend on the implementation;
inside a scanned epoch every convolution of 'subpixel' keeps the layout XLA:CPU runs with Eigen."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from conftest import replace, tiny
from vae_jax import config as config_lib
from vae_jax import conv, experiment, networks, pixelcnn

IMPLS = ("canonical", "subpixel")

# (x shape, kernel shape, strides, padding, input dilation): the layers the networks build and
# the cases around them (odd sizes, uneven padding, VALID, a transposed conv whose output phases
# are uneven, which 'subpixel' computes on the dilated input instead)
CASES = [
    ((3, 28, 28, 1), (4, 4, 1, 8), (2, 2), "SAME", (1, 1)),
    ((3, 14, 14, 8), (3, 3, 8, 6), (1, 1), "SAME", (1, 1)),
    ((3, 9, 11, 2), (3, 3, 2, 4), (2, 2), "SAME", (1, 1)),
    ((3, 9, 11, 2), (5, 3, 2, 4), (2, 1), "VALID", (1, 1)),
    ((3, 7, 7, 6), (4, 4, 6, 5), (1, 1), ((2, 2), (2, 2)), (2, 2)),  # ConvTranspose k4 s2 SAME
    ((2, 4, 5, 3), (3, 3, 3, 4), (1, 1), ((1, 1), (1, 1)), (1, 1)),
    ((2, 5, 6, 3), (3, 3, 3, 4), (1, 1), ((1, 1), (1, 1)), (2, 2)),  # 9×11 output: uneven phases
    ((2, 5, 6, 3), (4, 4, 3, 2), (1, 1), ((3, 3), (3, 3)), (2, 2)),  # ConvTranspose k4 s2 VALID
    ((2, 6, 6, 3), (3, 3, 3, 2), (1, 1), ((1, 2), (1, 2)), (3, 3)),  # dilation 3
]


def _reference(x, w, strides, padding, dilation):
    return lax.conv_general_dilated(x, w, strides, padding, lhs_dilation=dilation,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    precision=lax.Precision.HIGHEST)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-s{c[2]}-{c[3]}-d{c[4]}")
def test_conv_equals_lax_forward_and_gradients(impl, case):
    xs, ws, strides, padding, dilation = case
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=xs), jnp.float32)
    w = jnp.asarray(rng.normal(size=ws), jnp.float32)
    y_ref, vjp_ref = jax.vjp(lambda a, b: _reference(a, b, strides, padding, dilation), x, w)
    ct = jnp.asarray(rng.normal(size=y_ref.shape), jnp.float32)
    f = jax.jit(lambda a, b: conv.conv2d(a, b, strides, padding, dilation, impl))
    y, vjp = jax.vjp(f, x, w)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-4)
    for got, want in zip(vjp(ct), vjp_ref(ct)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kernel,stride,padding", [(4, 2, "SAME"), (3, 1, "SAME"), (4, 2, "VALID")])
def test_conv_transpose_module_equals_flax(impl, kernel, stride, padding):
    """vae_jax.conv.ConvTranspose has flax's parameters (names, shapes, initial values) and
    output, so a checkpoint moves between implementations."""
    x = jax.random.normal(jax.random.key(1), (2, 7, 7, 5))
    ref = nn.ConvTranspose(3, (kernel, kernel), strides=(stride, stride), padding=padding)
    ours = conv.ConvTranspose(3, (kernel, kernel), strides=(stride, stride), padding=padding, impl=impl)
    p_ref, p = ref.init(jax.random.key(0), x), ours.init(jax.random.key(0), x)
    jax.tree.map(np.testing.assert_array_equal, p, p_ref)

    def loss(mod):
        return lambda params, x: jnp.sum(jnp.sin(mod.apply(params, x)))

    np.testing.assert_allclose(ours.apply(p, x), ref.apply(p, x), rtol=1e-5, atol=1e-5)
    g, g_ref = jax.grad(loss(ours), argnums=(0, 1))(p, x), jax.grad(loss(ref), argnums=(0, 1))(p, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g, g_ref)


@pytest.mark.parametrize("head", ["conv", "transpose"])
def test_networks_share_parameters_and_outputs_across_implementations(head):
    """Encoder and decoder: the same parameter tree (same initial values) for every
    implementation, and outputs and gradients equal to the 'xla' ones within float32 rounding."""
    x = jax.random.uniform(jax.random.key(0), (4, 16, 16, 1))
    outs, grads, trees = {}, {}, {}
    for impl in ("xla",) + IMPLS:
        enc = networks.ConvEncoder((4, 8), (2, 2), dense=(16,), conv_impl=impl)
        dec = networks.ConvDecoder((4, 8), (2, 2), (16, 16), 1, dense=(16,), head=head, conv_impl=impl)
        # Module.init by name: the networks' `init` field (the initialiser's name) shadows it
        pe = nn.Module.init(enc, jax.random.key(1), x)
        pd = nn.Module.init(dec, jax.random.key(2), enc.apply(pe, x))
        trees[impl] = (pe, pd)

        def loss(params):
            return jnp.sum(jnp.tanh(dec.apply(params[1], enc.apply(params[0], x))))

        outs[impl] = dec.apply(pd, enc.apply(pe, x))
        grads[impl] = jax.grad(loss)(trees[impl])
    for impl in IMPLS:
        jax.tree.map(np.testing.assert_array_equal, trees[impl], trees["xla"])
        np.testing.assert_allclose(outs[impl], outs["xla"], rtol=1e-5, atol=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                     grads[impl], grads["xla"])


def test_masked_conv_of_the_pixelcnn_follows_the_implementation():
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    mask = pixelcnn._mask(pixelcnn.vertical_mask(3, True))
    ref, ours = pixelcnn.MaskedConv(4, mask, "xla"), pixelcnn.MaskedConv(4, mask, "subpixel")
    p = ref.init(jax.random.key(1), x)
    jax.tree.map(np.testing.assert_array_equal, ours.init(jax.random.key(1), x), p)
    g_ref = jax.grad(lambda p: jnp.sum(ref.apply(p, x) ** 2))(p)
    g = jax.grad(lambda p: jnp.sum(ours.apply(p, x) ** 2))(p)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g, g_ref)
    # the masked taps get no gradient under either implementation
    hidden = np.asarray(pixelcnn.vertical_mask(3, True)) == 0
    assert np.all(np.asarray(g["params"]["kernel"])[hidden] == 0)


def test_auto_picks_by_platform_and_bad_names_are_refused():
    assert conv.resolve("auto", "cpu") == "subpixel"
    assert conv.resolve("auto", "gpu") == conv.resolve("auto", "tpu") == "xla"
    assert conv.resolve("canonical", "gpu") == "canonical"
    with pytest.raises(config_lib.ConfigError, match="model.conv_impl"):
        tiny("fashion_conv", model=dict(conv_impl="cudnn"))


def _conv_dim_labels(hlo: str) -> list[str]:
    return re.findall(r"convolution\(.*?dim_labels=([a-z0-9_>-]+)", hlo)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's convolution emitter")
def test_scanned_epoch_keeps_every_convolution_in_the_eigen_layout():
    """XLA:CPU runs a convolution with Eigen only in the layout NHWC × HWIO -> NHWC; its own pass
    that transposes other layouts into it visits the entry computation only, so a gradient
    convolution inside the scanned epoch's loop would fall back to a naive loop. With 'subpixel'
    every convolution of the compiled epoch, loop body included, has that layout. (On 28×28
    images: XLA swaps a convolution's operands, whatever the implementation, when its window is
    larger than its input, as on the 2×2 maps of the 8×8 digits.)"""
    cfg = tiny("fashion_conv", model=dict(conv_impl="subpixel"))
    exp = experiment.Experiment.build(cfg, (28, 28, 1))
    state = jax.eval_shape(exp.init_state)
    images = jax.ShapeDtypeStruct((300, 28, 28, 1), jnp.float32)
    labels = jax.ShapeDtypeStruct((300,), jnp.int32)
    hlo = jax.jit(exp.train_epoch).lower(state, experiment.hyperparams(cfg), images, labels,
                                         jnp.int32(0), exp.data_key()).compile().as_text()
    assert "while" in hlo
    labels_found = _conv_dim_labels(hlo)
    assert len(labels_found) >= 12  # forward, input and kernel gradients of the encoder and decoder
    assert set(labels_found) == {"b01f_01io->b01f"}


def test_training_step_matches_across_implementations():
    """One training step of the conv VAE: the same loss and parameters (to float32 rounding)
    whichever implementation computes the convolutions."""
    results = {}
    for impl in ("xla",) + IMPLS:
        cfg = tiny("fashion_conv", model=dict(conv_impl=impl))
        ds = experiment.load_data(cfg)
        exp = experiment.Experiment.build(cfg, ds.image_shape)
        state = jax.jit(exp.init_state)()
        new, m = jax.jit(exp.train_step)(state, {"image": jnp.asarray(ds.train_images[:100])},
                                         experiment.hyperparams(cfg))
        results[impl] = (float(m["loss"]), new.params)
    for impl in IMPLS:
        assert results[impl][0] == pytest.approx(results["xla"][0], rel=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                     results[impl][1], results["xla"][1])


def test_a_checkpoint_moves_between_implementations(tmp_path):
    """A run trained with 'xla' evaluates under 'subpixel' (the setting is evaluation-free) to
    the same test ELBO within float32 rounding."""
    from vae_jax import evaluate, train

    cfg = tiny("fashion_conv", model=dict(conv_impl="xla"), train=dict(num_epochs=1))
    summary = train.train_and_evaluate(cfg, str(tmp_path))
    out = evaluate.evaluate_workdir(replace(cfg, model=dict(conv_impl="subpixel")), str(tmp_path))
    assert out["step"] == summary["step"]
    assert out["elbo"] == pytest.approx(summary["elbo"], rel=1e-5)

