"""MLP and convolutional blocks shared by every model family.

Encoders map an image batch [B, H, W, C] to a feature vector; decoders map a vector to an image
batch with ``out_channels`` channels (the likelihood's parameters per pixel). Both are plain Flax
Linen modules, so ``init``/``apply`` give and take ordinary parameter pytrees.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import conv

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "elu": nn.elu,
    "gelu": nn.gelu,
    "swish": nn.swish,
    "leaky_relu": nn.leaky_relu,
}


def _torch_bias_init(fan_in: int):
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def dense(features: int, fan_in: int, init: str, name: str | None = None) -> nn.Dense:
    """A Dense layer; ``init='torch'`` reproduces PyTorch's nn.Linear initialisation exactly
    (kaiming_uniform(a=sqrt(5)) kernel, U(±1/sqrt(fan_in)) bias) for like-for-like comparisons."""
    if init == "torch":
        return nn.Dense(features, name=name,
                        kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                        bias_init=_torch_bias_init(fan_in))
    return nn.Dense(features, name=name)


def _conv_kwargs(init: str, fan_in: int) -> dict:
    if init == "torch":
        return dict(kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                    bias_init=_torch_bias_init(fan_in))
    return {}


class Dense(nn.Module):
    """:func:`dense` with the fan-in read off the input at call time."""

    features: int
    init: str = "lecun"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return dense(self.features, x.shape[-1], self.init)(x)


NORMS: tuple[str, ...] = ("none", "layer")


class MLP(nn.Module):
    """Hidden Dense layers, each followed by an optional LayerNorm (``norm='layer'``; Ba et al.
    2016) and the activation. ``flatten``: the input [B, ...] becomes [B, features] first;
    otherwise the layers act on the last axis of any leading shape. With ``norm='none'`` no
    normalization module exists, so the parameter tree is the plain MLP's."""

    hidden: Sequence[int]
    activation: str = "relu"
    init: str = "lecun"
    norm: str = "none"
    flatten: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.flatten:
            x = x.reshape(x.shape[0], -1)
        act = ACTIVATIONS[self.activation]
        for width in self.hidden:
            x = Dense(width, self.init)(x)
            if self.norm == "layer":
                x = nn.LayerNorm()(x)
            x = act(x)
        return x


class MLPDecoder(nn.Module):
    """Vector -> hidden layers -> image of shape ``image_hw + (out_channels,)``."""

    hidden: Sequence[int]
    image_hw: tuple[int, int]
    out_channels: int
    activation: str = "relu"
    init: str = "lecun"
    norm: str = "none"

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        h = MLP(self.hidden, self.activation, self.init, self.norm)(z)
        size = self.image_hw[0] * self.image_hw[1] * self.out_channels
        out = Dense(size, self.init)(h)
        return out.reshape(z.shape[0], *self.image_hw, self.out_channels)


# Conv trunks by input size: (channels, strides) for ModelConfig.conv_channels / conv_strides.
# 28×28 halves twice (28 → 14 → 7 → 7); 32×32 halves three times (32 → 4) and 64×64
# four times (64 → 4), so every decoder starts from a 4×4 or 7×7 map. Any channel count works.
CONV_PRESETS: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    28: ((32, 64, 128), (2, 2, 1)),
    32: ((32, 64, 128), (2, 2, 2)),
    64: ((32, 64, 128, 256), (2, 2, 2, 2)),
}


class ConvEncoder(nn.Module):
    """Conv layers (4×4 kernels for stride 2, 3×3 for stride 1) -> flattened features, then
    the ``dense`` layers (each with the activation).

    A common MNIST recipe is channels (32, 64, 128) with strides (2, 2, 1) on 28×28 inputs; the
    64×64 disentanglement network (Burgess et al. 2018, Locatello et al. 2019) is channels
    (32, 32, 64, 64), strides 2, dense (256,).
    """

    channels: Sequence[int]
    strides: Sequence[int]
    activation: str = "relu"
    init: str = "lecun"
    dense: Sequence[int] = ()
    conv_impl: str = "auto"  # vae_jax.conv.IMPLS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        for ch, s in zip(self.channels, self.strides):
            k = 4 if s == 2 else 3
            x = act(nn.Conv(ch, (k, k), strides=(s, s), padding="SAME",
                            conv_general_dilated=conv.conv_general_dilated(self.conv_impl),
                            **_conv_kwargs(self.init, k * k * x.shape[-1]))(x))
        x = x.reshape(x.shape[0], -1)
        for width in self.dense:
            x = act(Dense(width, self.init)(x))
        return x


class ConvDecoder(nn.Module):
    """Mirror of :class:`ConvEncoder`: the ``dense`` layers in reverse, Dense to a small
    feature map (or, for an input that is already a map [B, h, w, D] at the encoder's output
    size, a 3×3 conv), transposed convs up to ``image_hw``, then a 3×3 conv to ``out_channels``
    (``head='conv'``), or with ``head='transpose'`` the last transposed conv gives the
    ``out_channels`` directly (Burgess et al. 2018 / Locatello et al. 2019)."""

    channels: Sequence[int]  # the encoder's channels; used in reverse
    strides: Sequence[int]
    image_hw: tuple[int, int]
    out_channels: int
    activation: str = "relu"
    init: str = "lecun"
    dense: Sequence[int] = ()
    head: str = "conv"
    conv_impl: str = "auto"  # vae_jax.conv.IMPLS

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        impl = conv.conv_general_dilated(self.conv_impl)
        down = 2 ** sum(1 for s in self.strides if s == 2)
        h, w = self.image_hw
        if h % down or w % down:
            raise ValueError(f"image size {h}x{w} is not divisible by the conv downsampling {down}")
        ch = list(reversed(self.channels))
        if z.ndim == 4:
            x = act(nn.Conv(ch[0], (3, 3), padding="SAME", conv_general_dilated=impl,
                            **_conv_kwargs(self.init, 9 * z.shape[-1]))(z))
        else:
            for width in reversed(tuple(self.dense)):
                z = act(Dense(width, self.init)(z))
            x = act(Dense((h // down) * (w // down) * ch[0], self.init)(z))
            x = x.reshape(z.shape[0], h // down, w // down, ch[0])
        last = self.out_channels if self.head == "transpose" else ch[-1]
        for i, (out_ch, s) in enumerate(zip(ch[1:] + [last], reversed(self.strides))):
            k = 4 if s == 2 else 3
            x = conv.ConvTranspose(out_ch, (k, k), strides=(s, s), padding="SAME", impl=self.conv_impl,
                                   **_conv_kwargs(self.init, k * k * x.shape[-1]))(x)
            if self.head == "transpose" and i == len(ch) - 1:
                return x
            x = act(x)
        return nn.Conv(self.out_channels, (3, 3), padding="SAME", conv_general_dilated=impl,
                       **_conv_kwargs(self.init, 9 * x.shape[-1]))(x)


class Discriminator(nn.Module):
    """An MLP classifier: Dense layers with LeakyReLU (slope 0.2), then ``classes`` logits
    (FactorVAE's discriminator, Kim & Mnih 2018: 6 layers of 1000 units)."""

    hidden: Sequence[int]
    classes: int = 2

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden:
            x = nn.leaky_relu(nn.Dense(width)(x), 0.2)
        return nn.Dense(self.classes)(x)


def discriminator_of(params) -> Discriminator:
    """The :class:`Discriminator` whose parameters are ``params`` (widths read off the kernels)."""
    layers = sorted(params, key=lambda n: int(n.rsplit("_", 1)[-1]))
    widths = [params[n]["kernel"].shape[1] for n in layers]
    return Discriminator(tuple(widths[:-1]), widths[-1])
