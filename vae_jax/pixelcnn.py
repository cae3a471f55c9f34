"""Masked convolutions and the gated PixelCNN (van den Oord et al. 2016, "Pixel Recurrent Neural
Networks" and "Conditional Image Generation with PixelCNN Decoders"), for binary images
(Bernoulli logits per channel) and for grids of discrete codes (logits over K values).

The output at position (i, j) is a function of the inputs strictly before (i, j) in raster order
(rows top to bottom, each row left to right), so p(x) = Π_ij p(x_ij | x_<ij) is a proper
autoregressive model; the channels of one pixel are predicted independently given that context.

- :func:`raster_mask`: the k×k mask of the original PixelCNN; mask 'A' (first layer) hides the
  centre and everything after it, mask 'B' (later layers) only what comes after the centre.
  A stack of such layers has a blind spot (pixels above and to the right are never seen).
- :class:`GatedPixelCNN` removes the blind spot with two stacks. The vertical stack's k×k kernel
  covers the rows above the centre (and, after the first layer, the centre row of its own
  features, which already only depend on rows above), so its features at row i depend on input
  rows < i only and can feed the horizontal stack at the same position without a shift. The
  horizontal stack's 1×k kernel covers the current row up to the centre (the first layer
  excludes the centre). Each layer is gated, tanh(W_f ∗ x + V_f h) ⊙ σ(W_g ∗ x + V_g h), with a
  1×1 link from the vertical to the horizontal stack and a residual connection on the horizontal
  stack. The conditioning h is a vector [B, m] (a per-layer linear projection, broadcast over
  positions) or a map [B, H, W, m] (a per-layer 1×1 convolution).
- :func:`ancestral_sample`: one position at a time inside ``lax.fori_loop`` (the whole image is
  re-run at each of the H·W steps: simple and compiled once).
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import conv


def raster_mask(kh: int, kw: int, mask_type: str) -> np.ndarray:
    """[kh, kw] mask of a PixelCNN kernel: 1 at the offsets before the centre in raster order,
    and at the centre itself for mask 'B'."""
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type must be 'A' or 'B', not {mask_type!r}")
    m = np.zeros((kh, kw), np.float32)
    ci, cj = kh // 2, kw // 2
    m[:ci] = 1.0
    m[ci, :cj + (mask_type == "B")] = 1.0
    return m


def vertical_mask(k: int, include_centre_row: bool) -> np.ndarray:
    """[k, k] mask of the vertical stack: the rows above the centre (and the centre row)."""
    m = np.zeros((k, k), np.float32)
    m[:k // 2 + int(include_centre_row)] = 1.0
    return m


def horizontal_mask(k: int, include_centre: bool) -> np.ndarray:
    """[1, k] mask of the horizontal stack: the offsets left of the centre (and the centre)."""
    m = np.zeros((1, k), np.float32)
    m[0, :k // 2 + int(include_centre)] = 1.0
    return m


class MaskedConv(nn.Module):
    """A 'SAME' convolution whose kernel [kh, kw, C_in, C_out] is multiplied by ``mask`` [kh, kw]
    (the masked weights get no gradient)."""

    features: int
    mask: tuple[tuple[float, ...], ...]
    conv_impl: str = "auto"  # vae_jax.conv.IMPLS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        mask = jnp.asarray(self.mask, x.dtype)
        kh, kw = mask.shape
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (kh, kw, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        k = (kernel * mask[:, :, None, None]).astype(x.dtype)
        y = conv.conv2d(x, k, (1, 1), "SAME", impl=self.conv_impl)
        return y + bias.astype(x.dtype)


def _mask(m: np.ndarray) -> tuple[tuple[float, ...], ...]:
    return tuple(map(tuple, m.tolist()))  # hashable, as a Flax module attribute must be


def _gate(a: jax.Array) -> jax.Array:
    f, g = jnp.split(a, 2, axis=-1)
    return jnp.tanh(f) * jax.nn.sigmoid(g)


class GatedLayer(nn.Module):
    """One gated layer of both stacks; ``first``: the masks hide the centre row / pixel and the
    horizontal stack has no residual connection (its input is the image)."""

    channels: int
    kernel: int = 3
    first: bool = False
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, v: jax.Array, h: jax.Array, cond: jax.Array | None
                 ) -> tuple[jax.Array, jax.Array]:
        c2 = 2 * self.channels
        v_pre = MaskedConv(c2, _mask(vertical_mask(self.kernel, not self.first)), self.conv_impl,
                           name="vertical")(v)
        h_pre = MaskedConv(c2, _mask(horizontal_mask(self.kernel, not self.first)), self.conv_impl,
                           name="horizontal")(h)
        h_pre = h_pre + nn.Dense(c2, name="v_to_h")(v_pre)
        if cond is not None:
            cv = nn.Dense(c2, name="cond_v")(cond)
            ch = nn.Dense(c2, name="cond_h")(cond)
            if cond.ndim == 2:  # a vector: the same bias at every position
                cv, ch = cv[:, None, None], ch[:, None, None]
            v_pre, h_pre = v_pre + cv, h_pre + ch
        h_out = nn.Dense(self.channels, name="h_out")(_gate(h_pre))
        return _gate(v_pre), h_out if self.first else h + h_out


class GatedPixelCNN(nn.Module):
    """``layers`` gated layers of ``channels`` features with ``kernel``×``kernel`` vertical and
    1×``kernel`` horizontal masks, then two 1×1 layers to ``out_features`` logits per position.

    Input: an image [B, H, W, C] (binary, or any values) or, with ``num_classes`` > 0, integer
    codes [B, H, W] (one-hot encoded first). ``cond``: None, a vector [B, m] or a map
    [B, H, W, m]. Output: [B, H, W, out_features]."""

    channels: int = 32
    layers: int = 5
    kernel: int = 3
    out_features: int = 1
    num_classes: int = 0
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, cond: jax.Array | None = None) -> jax.Array:
        if self.num_classes:
            x = jax.nn.one_hot(x, self.num_classes, dtype=jnp.float32)
        v = h = x
        for i in range(self.layers):
            v, h = GatedLayer(self.channels, self.kernel, first=i == 0, conv_impl=self.conv_impl,
                              name=f"layer{i}")(v, h, cond)
        out = nn.elu(nn.Dense(self.channels, name="head")(nn.elu(h)))
        return nn.Dense(self.out_features, name="logits")(out)


def ancestral_sample(logits_fn: Callable[[jax.Array], jax.Array], key: jax.Array, x0: jax.Array,
                     draw: Callable[[jax.Array, jax.Array], jax.Array]) -> jax.Array:
    """x ~ Π_ij p(x_ij | x_<ij), one position at a time in raster order.

    ``logits_fn(x)`` -> logits [B, H, W, ...] of the whole image; ``x0`` [B, H, W, ...] the
    starting image (its values are overwritten position by position; a correct model never
    reads a position before it is drawn); ``draw(key, logits[:, i, j])`` -> the values at
    (i, j). Position t = i·W + j uses ``fold_in(key, t)``. Call under ``jax.jit``."""
    h, w = x0.shape[1], x0.shape[2]

    def body(t, x):
        i, j = t // w, t % w
        value = draw(jax.random.fold_in(key, t), logits_fn(x)[:, i, j])
        return x.at[:, i, j].set(value.astype(x.dtype))

    return jax.lax.fori_loop(0, h * w, body, x0)


def draw_bernoulli(key: jax.Array, logits: jax.Array) -> jax.Array:
    return jax.random.bernoulli(key, jax.nn.sigmoid(logits)).astype(jnp.float32)


def draw_categorical(key: jax.Array, logits: jax.Array) -> jax.Array:
    return jax.random.categorical(key, logits, axis=-1)


def categorical_log_prob(logits: jax.Array, codes: jax.Array) -> jax.Array:
    """Σ_positions log softmax(logits)[code] per example: logits [B, H, W, K], codes [B, H, W]."""
    lp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), codes[..., None], -1)[..., 0]
    return lp.reshape(lp.shape[0], -1).sum(-1)
