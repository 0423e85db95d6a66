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

The 3x3 layers with 64 channels or more (conv3-5) instead use Winograd's
F(2x2, 3x3) for the forward pass and both gradients (see `winograd_conv`):
4/9 of the multiplications, 5% to 8% off the whole train step on the
development machine (experiments/results/bench/command.txt).
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

  dk = _accumulator((kq * kr, stride * stride * cin, cout), g)
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


def _accumulator(shape, g):
  """float32 zeros for a kernel gradient summed over the batch's chunks.

  Inside shard_map the loop's sum varies as the data (`g`) does.
  """
  acc = jnp.zeros(shape, jnp.float32)
  varying = tuple(jax.typeof(g).manual_axis_type.varying)
  return lax.pcast(acc, varying, to='varying') if varying else acc


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


# Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for
# Convolutional Neural Networks", CVPR 2016) for the 3x3 layers (conv3-5).
# Each 2x2 block of outputs is computed from its 4x4 input tile as
# A^T [(G k G^T) * (B^T d B)] A: 16 multiplications per input channel, not the
# direct 36, so the matmuls (one per tile position, over channels) do 4/9 of
# the work. The transforms are adds of whole arrays, fused by XLA. In float32
# the result differs from direct summation by rounding only (tests/ops_test.py
# compares values and both gradients with XLA's convolutions).

# Whether CPU programs use winograd_conv for 3x3, stride 1 layers (read when
# a step is traced; False gives the matmuls above, for comparison), and from
# how many input and output channels: the transforms cost about
# 1/cin + 1/cout of the matmuls, and they nearly double the step's compile
# time (toy nets: 8 s to 15 s), which only layers this wide repay.
WINOGRAD = True
WINOGRAD_MIN_CHANNELS = 64


def _wino_bt(d):
  """B^T d along the first of four rows of arrays."""
  return [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]


def _wino_at(m):
  """A^T m: four rows to two."""
  return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]


def _wino_a(q):
  """A q: two rows to four (the transpose of `_wino_at`)."""
  return [q[0], q[0] + q[1], q[0] - q[1], -q[1]]


def _wino_g(k):
  """G k: three rows to four."""
  return [k[0], (k[0] + k[1] + k[2]) * .5, (k[0] - k[1] + k[2]) * .5, k[2]]


def _wino_gt(z):
  """G^T z: four rows to three (the transpose of `_wino_g`)."""
  return [z[0] + (z[1] + z[2]) * .5, (z[1] - z[2]) * .5,
          (z[1] + z[2]) * .5 + z[3]]


def _transform_2d(rows, fn):
  """Applies a 1-D transform `fn` along both axes of a nested list."""
  cols = [fn([r[j] for r in rows]) for j in range(len(rows[0]))]
  return [fn([c[i] for c in cols]) for i in range(len(cols[0]))]


def _winograd_tiles(xp, th, tw):
  """(16, b, th, tw, c): B^T d B of every 4x4 tile, at stride 2, of the
  padded input `xp` (b, 2 th + 2, 2 tw + 2, c)."""
  d = [[xp[:, u:u + 2 * th:2, v:v + 2 * tw:2] for v in range(4)]
       for u in range(4)]
  v = _transform_2d(d, _wino_bt)
  return jnp.stack([v[i][j] for i in range(4) for j in range(4)])


def _winograd_kernel(kernel):
  """(16, cin, cout): G k G^T, summed in float32 (adds, not products, so
  that every product of the step is a layer's, at its dtype and precision)."""
  k = kernel.astype(jnp.float32)
  u = _transform_2d([[k[i, j] for j in range(3)] for i in range(3)], _wino_g)
  return jnp.stack([u[i][j] for i in range(4)
                    for j in range(4)]).astype(kernel.dtype)


def _winograd_sizes(h, w, padding):
  """(output height, width, tiles down, tiles across)."""
  oh, ow = h + 2 * padding - 2, w + 2 * padding - 2
  return oh, ow, -(-oh // 2), -(-ow // 2)


def _winograd_pad(x, padding, th, tw):
  """The input padded to whole tiles (the last tile's excess is zeros)."""
  h, w = x.shape[1:3]
  return jnp.pad(x, ((0, 0), (padding, 2 * th + 2 - h - padding),
                     (padding, 2 * tw + 2 - w - padding), (0, 0)))


def winograd_conv(x, kernel, padding, precision=None,
                  chunk_bytes: Optional[int] = None):
  """A 3x3, stride 1 NHWC x HWIO convolution by F(2x2, 3x3)."""
  b, h, w, cin = x.shape
  assert kernel.shape[:2] == (3, 3), kernel.shape
  oh, ow, th, tw = _winograd_sizes(h, w, padding)
  u = _winograd_kernel(kernel)

  def one(_, xc):
    v = _winograd_tiles(xc, th, tw)
    m = jnp.einsum('pbijc,pco->pbijo', v, u, precision=precision,
                   preferred_element_type=jnp.float32)
    y = _transform_2d([[m[4 * i + j] for j in range(4)] for i in range(4)],
                      _wino_at)  # y[row][col]: (b, th, tw, cout)
    y = jnp.stack([jnp.stack(r, 3) for r in y], 2)
    return None, y.reshape(y.shape[0], 2 * th, 2 * tw, -1)[
        :, :oh, :ow].astype(x.dtype)

  chunk = batch_chunk(b, 16 * th * tw * cin * 4, chunk_bytes)
  return over_chunks(one, None, chunk, _winograd_pad(x, padding, th, tw))[1]


def winograd_conv_grads(padding, precision, x, kernel, g,
                        chunk_bytes: Optional[int] = None):
  """(input gradient, kernel gradient) of `winograd_conv`, by F(2x2, 3x3).

  The input gradient is the same convolution of g with the kernel flipped and
  its channels swapped. The kernel gradient is the forward's transpose:
  dk = G^T [sum over tiles of (B^T d B) * (A dy A^T)] G, one matmul per tile
  position over the batch's tiles.
  """
  b, h, w, cin = x.shape
  cout = g.shape[3]
  oh, ow, th, tw = _winograd_sizes(h, w, padding)
  flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
  dx = winograd_conv(g, flipped, 2 - padding, precision, chunk_bytes)

  def kernel_grad(acc, xc, gc):
    v = _winograd_tiles(xc, th, tw)
    q = [[gc[:, i::2, j::2] for j in range(2)] for i in range(2)]
    dy = _transform_2d(q, _wino_a)
    dy = jnp.stack([dy[i][j] for i in range(4) for j in range(4)])
    return acc + jnp.einsum('pbijc,pbijo->pco', v, dy, precision=precision,
                            preferred_element_type=jnp.float32), None

  z = _accumulator((16, cin, cout), g)
  gp = jnp.pad(g, ((0, 0), (0, 2 * th - oh), (0, 2 * tw - ow), (0, 0)))
  chunk = batch_chunk(b, 16 * th * tw * (cin + cout) * 4, chunk_bytes)
  z = over_chunks(kernel_grad, z, chunk, _winograd_pad(x, padding, th, tw),
                  gp)[0]
  dk = _transform_2d([[z[4 * i + j] for j in range(4)] for i in range(4)],
                     _wino_gt)
  dk = jnp.stack([jnp.stack(r) for r in dk])
  return dx.astype(x.dtype), dk.astype(kernel.dtype)
