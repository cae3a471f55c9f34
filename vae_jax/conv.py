"""2-D convolutions (NHWC inputs, HWIO kernels) with a choice of implementation, all with the
same parameters, so a checkpoint moves between them.

- ``'xla'``: ``lax.conv_general_dilated`` differentiated by JAX. XLA's transpose rules express
  the input and kernel gradients as convolutions with permuted dimension numbers (the kernel's
  in/out features swapped; batch and features swapped for the kernel gradient). On GPU, cuDNN
  runs those directly.
- ``'canonical'``: the same three convolutions, each written in the one layout XLA:CPU hands to
  its Eigen kernels (NHWC input, HWIO kernel, NHWC output), with the permutations as explicit
  transposes around it. XLA:CPU's own canonicalisation pass (``ConvCanonicalization``) inserts
  exactly these transposes, but only for convolutions in the program's entry computation: a
  gradient convolution inside a ``while`` body (a ``lax.scan`` training epoch) keeps its
  permuted dimension numbers and falls back to XLA:CPU's naive loop emitter.
- ``'subpixel'``: ``'canonical'``, with every transposed convolution (input dilation d, unit
  stride) split into its d_h·d_w output phases: each phase is a stride-1 convolution of the
  undilated input with the kernel taps that reach it, the phases interleaved by depth-to-space
  (the sub-pixel convolution of Shi et al. 2016, "Real-Time Single Image and Video
  Super-Resolution Using an Efficient Sub-Pixel Convolutional Neural Network"). Neither the
  forward pass nor the kernel gradient multiplies the dilation's zeros.
- ``'auto'``: ``'subpixel'`` on CPU, ``'xla'`` on GPU and TPU (``resolve``).

Every implementation equals ``lax.conv_general_dilated`` on the same weights within float32
rounding, forward and both gradients (``tests/test_conv.py``).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from vae_jax.config import CONV_IMPLS as IMPLS

_DN = ("NHWC", "HWIO", "NHWC")


def resolve(impl: str, platform: str | None = None) -> str:
    """'auto' -> 'subpixel' on CPU, 'xla' elsewhere; any other name passes through."""
    if impl not in IMPLS:
        raise ValueError(f"unknown convolution implementation {impl!r}; choose one of {IMPLS}")
    if impl != "auto":
        return impl
    return "subpixel" if (platform or jax.default_backend()) == "cpu" else "xla"


def _dilate(n: int, d: int) -> int:
    return 0 if n == 0 else 1 + d * (n - 1)


def _pairs(padding: Any, in_hw: Sequence[int], k_hw: Sequence[int], strides: Sequence[int],
           lhs_dilation: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Explicit (low, high) padding per spatial dimension ('SAME'/'VALID' resolved as lax does,
    on the lhs-dilated input)."""
    if isinstance(padding, str):
        shape = [_dilate(n, d) for n, d in zip(in_hw, lhs_dilation)]
        return tuple(tuple(p) for p in lax.padtype_to_pads(shape, k_hw, strides, padding))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _conv(x, w, strides, padding, lhs_dilation, precision):
    """The one convolution layout XLA:CPU runs with Eigen: NHWC × HWIO -> NHWC."""
    return lax.conv_general_dilated(x, w, strides, padding, lhs_dilation=lhs_dilation,
                                    dimension_numbers=_DN, precision=precision)


def _phases(x_hw, k_hw, padding, lhs_dilation):
    """The output phases of a stride-1 convolution of the d-dilated input, per spatial dim: for
    each phase r (outputs d·p + r), (r, first tap k0, taps, padding of the undilated x). The
    phase reads the taps k ≡ lo − r (mod d). None when the phases are uneven or one is empty."""
    per_dim = []
    for m, d, (lo, hi), k in zip(x_hw, lhs_dilation, padding, k_hw):
        o = _dilate(m, d) + lo + hi - k + 1
        if o % d:
            return None
        phases = []
        for r in range(d):
            k0 = (lo - r) % d
            taps = len(range(k0, k, d))
            if taps == 0:
                return None
            first = (r + k0 - lo) // d  # the x index tap k0 reads at p = 0
            phases.append((r, k0, taps, (-first, o // d + taps - 1 - m + first)))
        per_dim.append(phases)
    return per_dim


def _pad_hw(x, ph, pw):
    return lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*ph, 0), (*pw, 0), (0, 0, 0)))


def _subpixel(x, w, phases, lhs_dilation, precision):
    """The transposed convolution's output: one stride-1 convolution per phase, interleaved."""
    d_h, d_w = lhs_dilation
    rows = []
    for _, k0h, _, ph in phases[0]:
        cols = [_conv(_pad_hw(x, ph, pw), w[k0h::d_h, k0w::d_w], (1, 1), "VALID", (1, 1), precision)
                for _, k0w, _, pw in phases[1]]
        rows.append(jnp.stack(cols, axis=3))  # [N, P, Q, d_w, O]
    y = jnp.stack(rows, axis=2)  # [N, P, d_h, Q, d_w, O]
    return y.reshape(x.shape[0], y.shape[1] * d_h, y.shape[3] * d_w, w.shape[-1])


def _subpixel_kernel_grad(x, g, k_hw, phases, lhs_dilation, precision):
    """dL/dw of the transposed convolution: each phase's taps get the canonical kernel gradient
    of that phase's stride-1 convolution."""
    d_h, d_w = lhs_dilation
    dw = jnp.zeros((*k_hw, x.shape[-1], g.shape[-1]), x.dtype)
    for rh, k0h, th, ph in phases[0]:
        for rw, k0w, tw, pw in phases[1]:
            sub = _kernel_grad_conv(_pad_hw(x, ph, pw), g[:, rh::d_h, rw::d_w], (th, tw), (1, 1),
                                    ((0, 0), (0, 0)), (1, 1), precision)
            dw = dw.at[k0h::d_h, k0w::d_w].set(sub)
    return dw


def _input_grad(g, w, x_hw, strides, padding, lhs_dilation, precision):
    """dL/dx as one canonical convolution of the output gradient with the spatially reversed,
    in/out-swapped kernel (JAX's transpose rule for the lhs, laid out as NHWC/HWIO)."""
    kh, kw = w.shape[:2]
    pads = []
    for n, k, lo_hi, s, d, o in zip(x_hw, (kh, kw), padding, strides, lhs_dilation, g.shape[1:3]):
        before = k - lo_hi[0] - 1
        after = _dilate(n, d) + k - 1 - _dilate(o, s) - before
        pads.append((before, after))
    w_t = jnp.transpose(w[::-1, ::-1], (0, 1, 3, 2))
    return _conv(g, w_t, tuple(lhs_dilation), pads, tuple(strides), precision)


def _kernel_grad_conv(x, g, k_hw, strides, padding, lhs_dilation, precision):
    """dL/dw as one canonical convolution: the batch becomes the contracted feature axis
    ([C, H, W, N] * [H', W', N, O] -> [C, kh, kw, O]), transposed to HWIO."""
    pads = []
    for n, k, lo_hi, s, d, o in zip(x.shape[1:3], k_hw, padding, strides, lhs_dilation, g.shape[1:3]):
        lo = lo_hi[0]
        pads.append((lo, _dilate(o, s) - _dilate(n, d) + k - lo - 1))
    dw = lax.conv_general_dilated(jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(g, (1, 2, 0, 3)),
                                  (1, 1), pads, lhs_dilation=tuple(lhs_dilation),
                                  rhs_dilation=tuple(strides), dimension_numbers=_DN,
                                  precision=precision)
    return jnp.transpose(dw, (1, 2, 0, 3))


def _phases_of(impl: str, x_hw, k_hw, strides, padding, lhs_dilation):
    """The output phases when 'subpixel' splits this convolution (a transposed one: input
    dilation, unit strides), else None."""
    if impl != "subpixel" or strides != (1, 1) or all(d == 1 for d in lhs_dilation):
        return None
    return _phases(x_hw, k_hw, padding, lhs_dilation)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _custom(x, w, strides, padding, lhs_dilation, precision, impl):
    return _custom_fwd(x, w, strides, padding, lhs_dilation, precision, impl)[0]


def _custom_fwd(x, w, strides, padding, lhs_dilation, precision, impl):
    phases = _phases_of(impl, x.shape[1:3], w.shape[:2], strides, padding, lhs_dilation)
    if phases is not None:
        return _subpixel(x, w, phases, lhs_dilation, precision), (x, w)
    return _conv(x, w, strides, padding, lhs_dilation, precision), (x, w)


def _custom_bwd(strides, padding, lhs_dilation, precision, impl, res, g):
    x, w = res
    g = g.astype(x.dtype)
    dx = _input_grad(g, w, x.shape[1:3], strides, padding, lhs_dilation, precision)
    phases = _phases_of(impl, x.shape[1:3], w.shape[:2], strides, padding, lhs_dilation)
    if phases is not None:
        dw = _subpixel_kernel_grad(x, g, w.shape[:2], phases, lhs_dilation, precision)
    else:
        dw = _kernel_grad_conv(x, g, w.shape[:2], strides, padding, lhs_dilation, precision)
    return dx.astype(x.dtype), dw.astype(w.dtype)


_custom.defvjp(_custom_fwd, _custom_bwd)


def conv2d(x: jax.Array, w: jax.Array, strides: Sequence[int] = (1, 1), padding: Any = "SAME",
           lhs_dilation: Sequence[int] = (1, 1), impl: str = "auto", precision: Any = None
           ) -> jax.Array:
    """A convolution of x [N, H, W, C] with w [kh, kw, C, O] by ``impl`` (module docstring);
    ``lhs_dilation`` > 1 is a transposed convolution's input dilation."""
    impl = resolve(impl)
    strides, lhs_dilation = tuple(strides), tuple(lhs_dilation)
    if impl == "xla":
        return _conv(x, w, strides, padding, lhs_dilation, precision)
    pads = _pairs(padding, x.shape[1:3], w.shape[:2], strides, lhs_dilation)
    return _custom(x, w, strides, pads, lhs_dilation, precision, impl)


def conv_general_dilated(impl: str):
    """A drop-in for ``lax.conv_general_dilated`` as Flax's ``nn.Conv`` calls it (NHWC/HWIO, no
    kernel dilation, one feature group), computed by ``impl``."""

    def fn(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
           dimension_numbers=None, feature_group_count=1, precision=None, **kw):
        plain = (rhs_dilation is None or all(d == 1 for d in rhs_dilation)) and feature_group_count == 1
        dn = dimension_numbers
        nhwc = dn is None or (getattr(dn, "lhs_spec", None), dn.rhs_spec, dn.out_spec) == (
            (0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
        if lhs.ndim != 4 or not plain or not nhwc or kw.get("preferred_element_type") is not None:
            return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                            rhs_dilation, dimension_numbers, feature_group_count,
                                            precision=precision, **kw)
        return conv2d(lhs, rhs, window_strides, padding, lhs_dilation or (1, 1), impl, precision)

    return fn


def _transpose_padding(k: int, s: int, padding: str) -> tuple[int, int]:
    """``lax.conv_transpose``'s padding of the dilated input for 'SAME' / 'VALID'."""
    if padding == "SAME":
        pad_len = k + s - 2
        pad_a = k - 1 if s > k - 1 else -(-pad_len // 2)
    else:
        pad_len = k + s - 2 + max(k - s, 0)
        pad_a = k - 1
    return pad_a, pad_len - pad_a


class ConvTranspose(nn.ConvTranspose):
    """``flax.linen.ConvTranspose`` ('SAME'/'VALID' padding, no kernel dilation, kernel not
    flipped) computed by ``impl``: ``lax.conv_transpose``'s convolution of the stride-dilated
    input, with the same parameters and name in the tree."""

    impl: str = "auto"

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        if (resolve(self.impl) == "xla" or self.transpose_kernel or inputs.ndim != 4
                or self.padding not in ("SAME", "VALID") or self.kernel_dilation not in (None, 1, (1, 1))):
            return super().__call__(inputs)
        kh, kw = self.kernel_size
        strides = self.strides or (1, 1)
        sh, sw = (strides, strides) if isinstance(strides, int) else strides
        kernel = self.param("kernel", self.kernel_init, (kh, kw, inputs.shape[-1], self.features),
                            self.param_dtype)
        bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
                if self.use_bias else None)
        inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        pads = (_transpose_padding(kh, sh, self.padding), _transpose_padding(kw, sw, self.padding))
        y = conv2d(inputs, kernel, (1, 1), pads, (sh, sw), self.impl, self.precision)
        return y if bias is None else y + bias
