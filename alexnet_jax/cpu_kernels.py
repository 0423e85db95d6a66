"""Convolutions as cache-sized matrix products, for XLA:CPU.

XLA:CPU's own convolutions reach a fraction of the CPU's matmul rate on the
paper's layers: conv1 (11x11, stride 4, 3 input channels) forward, and every
layer's transposed convolutions (the gradients). These compute the same sums
as matmuls over stacked input windows, walking the batch in chunks whose
windows stay in cache. ops.conv2d chooses them when a computation is lowered
for CPU; accelerators keep XLA's convolutions (their vendor libraries are
fast), so nothing here is in a GPU or TPU program. tests/ops_test.py compares
values and gradients with XLA's.

Space-to-depth: each stride x stride block of pixels becomes one pixel with
stride^2 times the channels, so a strided convolution's windows are
ceil(k / stride)^2 slices of wide rows rather than k^2 slices of `cin` values
(conv1: 9 slices of 48 values instead of 121 of 3). The kernel is zero-padded
to whole strides to match; for stride 1 this is plain im2col.
"""

from typing import Optional

import jax
from jax import lax
import jax.numpy as jnp

# Bytes of stacked windows per chunk of the batch: half of a 32 MiB L3 cache,
# the best of the sizes tried for the paper's layers at batch 128 on the
# development machine (conv1: 2 images a chunk, conv2: 4, conv3-5: 8).
CHUNK_BYTES = 16 * 2 ** 20


def strided_conv(x, kernel, stride, padding, out_size, precision=None,
                 chunk_bytes: Optional[int] = None):
  """NHWC x HWIO convolution as one matmul per batch chunk of windows.

  `out_size`: the output's (height, width) (ops.output_size).
  """
  kh, kw, cin, _ = kernel.shape
  b = x.shape[0]
  h, w = out_size
  kmat = kernel_to_space_to_depth(kernel, stride)

  def one(_, xc):
    windows = stacked_windows(xc, h, w, kh, kw, stride, padding)
    return None, jnp.einsum('bhwkc,kco->bhwo', windows, kmat,
                            precision=precision,
                            preferred_element_type=jnp.float32
                            ).astype(x.dtype)

  chunk = batch_chunk(b, window_bytes(h, w, kh, kw, stride, cin), chunk_bytes)
  return over_chunks(one, None, chunk, x)[1]


def conv_grads(stride, padding, precision, x, kernel, g,
               chunk_bytes: Optional[int] = None):
  """(input gradient, kernel gradient) of a convolution, as matmuls.

  Kernel gradient: dK[i, j] = sum_{b,h,w} x_pad[b, i + s h, j + s w] g[b, h, w],
  the input windows of every kernel offset, stacked, contracted with g in one
  matmul per chunk. Input gradient (stride 1): each output position's g times
  the kernel gives its contribution to every input position of its window,
  and the kh * kw shifted contributions are added (col2im). The same sums as
  XLA's transposed convolutions, in another order; the same matmuls over the
  whole batch at once, without chunks, were slower than XLA's.

  A strided layer's input gradient is left to XLA: only conv1 has a stride,
  and its input (the image) needs no gradient, so XLA removes it.
  """
  kh, kw, cin, cout = kernel.shape
  b, h, w, _ = g.shape
  kq, kr = -(-kh // stride), -(-kw // stride)

  def kernel_grad(acc, xc, gc):
    windows = stacked_windows(xc, h, w, kh, kw, stride, padding)
    return acc + jnp.einsum('bhwkc,bhwo->kco', windows, gc,
                            precision=precision,
                            preferred_element_type=jnp.float32), None

  dk = jnp.zeros((kq * kr, stride * stride * cin, cout), jnp.float32)
  varying = tuple(jax.typeof(g).manual_axis_type.varying)
  if varying:  # Inside shard_map the loop's sum varies as the data does.
    dk = lax.pcast(dk, varying, to='varying')
  chunk = batch_chunk(b, window_bytes(h, w, kh, kw, stride, cin), chunk_bytes)
  dk = over_chunks(kernel_grad, dk, chunk, x, g)[0]
  dk = kernel_from_space_to_depth(dk, kh, kw, stride).astype(kernel.dtype)
  if stride != 1:
    return None, dk

  hp, wp = h + kh - 1, w + kw - 1  # = the padded input's size.
  kmat = kernel.reshape(kh * kw, cin, cout)

  def input_grad(_, gc):
    cols = jnp.einsum('bhwo,kco->bhwkc', gc, kmat, precision=precision,
                      preferred_element_type=jnp.float32)
    zero = jnp.array(0, cols.dtype)
    dxp = sum(lax.pad(cols[:, :, :, i * kw + j], zero,
                      ((0, 0, 0), (i, kh - 1 - i, 0), (j, kw - 1 - j, 0),
                       (0, 0, 0)))
              for i in range(kh) for j in range(kw))
    dx = dxp[:, padding:hp - padding, padding:wp - padding]
    return None, dx.astype(x.dtype)

  chunk = batch_chunk(b, window_bytes(h, w, kh, kw, 1, cin), chunk_bytes)
  return over_chunks(input_grad, None, chunk, g)[1], dk


def stacked_windows(x, h, w, kh, kw, stride, padding):
  """Every kernel offset's input window, stacked: `(b, h, w, offsets, c)`,
  gathered after space-to-depth (see the module docstring)."""
  b, hin, win, cin = x.shape
  s = stride
  kq, kr = -(-kh // s), -(-kw // s)
  hs, ws = h - 1 + kq, w - 1 + kr  # Space-to-depth size of the input.
  xp = jnp.pad(x, ((0, 0), (padding, max(0, hs * s - hin - padding)),
                   (padding, max(0, ws * s - win - padding)), (0, 0)))
  xp = xp[:, :hs * s, :ws * s]
  if s > 1:
    xp = xp.reshape(b, hs, s, ws, s, cin).transpose(0, 1, 3, 2, 4, 5)
    xp = xp.reshape(b, hs, ws, s * s * cin)
  return jnp.stack([lax.slice_in_dim(lax.slice_in_dim(xp, i, i + h, axis=1),
                                     j, j + w, axis=2)
                    for i in range(kq) for j in range(kr)], axis=-2)


def kernel_to_space_to_depth(kernel, stride):
  """HWIO kernel -> `(offsets, stride^2 * cin, cout)`, matching the windows."""
  kh, kw, cin, cout = kernel.shape
  s = stride
  kq, kr = -(-kh // s), -(-kw // s)
  k = jnp.pad(kernel, ((0, kq * s - kh), (0, kr * s - kw), (0, 0), (0, 0)))
  k = k.reshape(kq, s, kr, s, cin, cout).transpose(0, 2, 1, 3, 4, 5)
  return k.reshape(kq * kr, s * s * cin, cout)


def kernel_from_space_to_depth(k, kh, kw, stride):
  """The inverse of `kernel_to_space_to_depth`, cropped to kh x kw."""
  s = stride
  kq, kr = -(-kh // s), -(-kw // s)
  cin, cout = k.shape[1] // (s * s), k.shape[2]
  k = k.reshape(kq, kr, s, s, cin, cout).transpose(0, 2, 1, 3, 4, 5)
  return k.reshape(kq * s, kr * s, cin, cout)[:kh, :kw]


def over_chunks(fn, carry, chunk, *arrays):
  """fn(carry, *chunks) -> (carry, y) over the batch's chunks, as a loop.

  Returns the last carry and the y's joined along the batch. A loop rather
  than one big op, so each chunk's temporaries are reused while in cache.
  """
  b = arrays[0].shape[0]
  if chunk == b:
    return fn(carry, *arrays)
  split = [a.reshape((b // chunk, chunk) + a.shape[1:]) for a in arrays]
  carry, ys = lax.scan(lambda c, xs: fn(c, *xs), carry, split)
  if ys is not None:
    ys = ys.reshape((b,) + ys.shape[2:])
  return carry, ys


def window_bytes(h, w, kh, kw, stride, cin) -> int:
  """float32 bytes of one example's stacked windows."""
  return h * w * -(-kh // stride) * -(-kw // stride) * stride ** 2 * cin * 4


def batch_chunk(batch: int, bytes_per_example: int,
                chunk_bytes: Optional[int] = None) -> int:
  """The largest divisor of `batch` whose windows fit in `chunk_bytes`
  (None: CHUNK_BYTES, read when called)."""
  chunk_bytes = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
  return max(c for c in range(1, batch + 1) if batch % c == 0 and (
      c == 1 or c * bytes_per_example <= chunk_bytes))
