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
development machine; conv2's gradients use F(4x4, 5x5), about 5% more; and
conv1's forward pass is F(2x2, 3x3) of its space-to-depth form
(experiments/results/bench/command.txt).
"""

import functools
from typing import NamedTuple, Optional

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

# XLA:CPU options for the train and eval steps and feature extraction
# (jax.jit's compiler_options): without YNNPACK's fusions, XLA:CPU's default
# for dots in this jaxlib, the paper's train step ran 1.08x faster on the
# development machine, the quick start's 1.1x (XLA's own dots;
# experiments/results/bench/command.txt). Debug options that other backends'
# compilers ignore; {} restores XLA:CPU's defaults.
XLA_CPU_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type': ''}


def compiler_options() -> dict:
  """XLA_CPU_OPTIONS (read when called), less any this jaxlib lacks."""
  return {k: v for k, v in XLA_CPU_OPTIONS.items() if _known_option(k, v)}


@functools.cache
def _known_option(name: str, value) -> bool:
  # An option a jaxlib has dropped would fail every compile: leave it out.
  try:
    jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(
        np.float32(0)).compile()
  except jax.errors.JaxRuntimeError:
    return False
  return True


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


def space_to_depth(x, h, w, kh, kw, stride, padding):
  """The padded input as `(b, h - 1 + kq, w - 1 + kr, stride^2 * c)`, for an
  `h` x `w` output of a kh x kw kernel (see the module docstring)."""
  b, hin, win, cin = x.shape
  s = stride
  hs, ws = h - 1 + -(-kh // s), w - 1 + -(-kw // s)
  xp = jnp.pad(x, ((0, 0), (padding, max(0, hs * s - hin - padding)),
                   (padding, max(0, ws * s - win - padding)), (0, 0)))
  xp = xp[:, :hs * s, :ws * s]
  if s > 1:
    xp = xp.reshape(b, hs, s, ws, s, cin).transpose(0, 1, 3, 2, 4, 5)
    xp = xp.reshape(b, hs, ws, s * s * cin)
  return xp


def stacked_windows(x, h, w, kh, kw, stride, padding):
  """Every kernel offset's input window, stacked: `(b, h, w, offsets, c)`,
  gathered after space-to-depth (see the module docstring)."""
  xp = space_to_depth(x, h, w, kh, kw, stride, padding)
  return jnp.stack([lax.slice_in_dim(lax.slice_in_dim(xp, i, i + h, axis=1),
                                     j, j + w, axis=2)
                    for i in range(-(-kh // stride))
                    for j in range(-(-kw // stride))], axis=-2)


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


# Winograd's minimal filtering (Lavin & Gray, "Fast Algorithms for
# Convolutional Neural Networks", CVPR 2016). F(m x m, r x r) computes each
# m x m block of outputs from its n x n input tile (n = m + r - 1) as
# A^T [(G k G^T) * (B^T d B)] A: n^2 multiplications per input channel
# instead of the direct m^2 r^2, so the matmuls (one per tile position, over
# channels) do that much less work. The transforms are adds of whole arrays
# times constants, fused by XLA (no dots: every product of the step stays a
# layer's, at its dtype and precision). In float32 the results differ from
# direct summation by rounding only (tests/ops_test.py compares values and
# both gradients with XLA's convolutions).
#
# conv3-5 (3x3) use F(2x2, 3x3) for the forward pass and both gradients; conv2
# (5x5) uses F(4x4, 5x5) for its two gradients only (its forward pass by it
# was several times slower than XLA's convolution on the development
# machine), in float32 only (its transforms' larger constants would cost
# bfloat16 precision).


class Winograd(NamedTuple):
  """F(m x m, r x r): the transforms B^T (n x n), G (n x r) and A^T (m x n)."""
  m: int
  r: int
  bt: np.ndarray
  g: np.ndarray
  at: np.ndarray

  @property
  def n(self) -> int:
    """The input tile's side, m + r - 1."""
    return self.m + self.r - 1


# Lavin & Gray's matrices.
F2X2_3X3 = Winograd(
    2, 3, bt=np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0],
                       [0, 1, 0, -1]], np.float64),
    g=np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]),
    at=np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64))


def toom_cook(m: int, r: int,
              points=(0, 1, -1, 2, -2, .5, -.5)) -> Winograd:
  """F(m, r) from polynomial evaluation at n - 1 points and infinity.

  With E_k the n x k matrix evaluating a degree k - 1 polynomial at the
  points (its last row, infinity, picks the leading coefficient), the product
  of two polynomials is E_n^-1 [(E_m a) * (E_r b)]; correlation, its
  transpose, is A^T = E_m^T, G = E_r, B^T = E_n^-T.
  """
  n = m + r - 1
  assert len(points) >= n - 1, (m, r)

  def evaluation(k):
    return np.array([[float(p) ** j for j in range(k)] for p in points[:n - 1]]
                    + [[0.] * (k - 1) + [1.]])

  bt = np.linalg.inv(evaluation(n)).T
  bt[np.abs(bt) < 1e-12] = 0.
  return Winograd(m, r, bt=bt, g=evaluation(r), at=evaluation(m).T)


F4X4_5X5 = toom_cook(4, 5)

# Whether CPU programs use Winograd (read when a step is traced; False gives
# the matmuls above, for comparison), and from how many input and output
# channels: the transforms cost about 1/cin + 1/cout of the matmuls, and they
# nearly double a step's compile time (toy nets: 8 s to 15 s), which only
# layers this wide repay (conv2 has 48 input channels a tower, conv3-5 192 or
# more).
# conv1 (11x11, stride 4) is, after space-to-depth, a 3x3 convolution with 48
# input channels: its forward pass by F(2x2, 3x3) (key 11: the layer's own
# kernel size), not its kernel gradient (about 1.25x slower that way than the
# matmul on the development machine).
WINOGRAD = True
WINOGRAD_MIN_CHANNELS = {3: 64, 5: 48, 11: 48}


def winograd_for(kernel, stride: int, padding: int,
                 gradients: bool) -> Optional[Winograd]:
  """The Winograd algorithm a CPU program uses for this layer's forward pass
  (or, with `gradients`, its two gradients), or None. A strided layer's is
  for its space-to-depth form (`winograd_conv`)."""
  kh, kw, cin, cout = kernel.shape
  floor = WINOGRAD_MIN_CHANNELS.get(kh)
  if not WINOGRAD or floor is None or kh != kw:
    return None
  if stride > 1:
    if gradients or -(-kh // stride) != 3 or min(
        stride * stride * cin, cout) < floor:
      return None
    return F2X2_3X3
  if min(cin, cout) < floor or padding > kh - 1:
    return None
  if kh == 3:
    return F2X2_3X3
  if kh == 5 and gradients and kernel.dtype == jnp.float32:
    return F4X4_5X5
  return None


def _apply(matrix, rows):
  """matrix @ rows, for a list of arrays: sums of rows times constants."""
  out = []
  for coeffs in matrix:
    total = None
    for c, row in zip(coeffs, rows):
      if c == 0:
        continue
      term = row if abs(c) == 1 else row * float(abs(c))
      if total is None:
        total = term if c > 0 else -term
      else:
        total = total + term if c > 0 else total - term
    out.append(total)
  return out


def _transform_2d(rows, matrix):
  """matrix @ rows @ matrix^T, for a nested list of arrays."""
  cols = [_apply(matrix, [r[j] for r in rows]) for j in range(len(rows[0]))]
  return [_apply(matrix, [c[i] for c in cols]) for i in range(len(cols[0]))]


def _flat(nested):
  return jnp.stack([a for row in nested for a in row])


def _winograd_tiles(wino, xp, th, tw):
  """(n^2, b, th, tw, c): B^T d B of every n x n tile, at stride m, of the
  padded input `xp` (b, m th + r - 1, m tw + r - 1, c)."""
  m, n = wino.m, wino.n
  d = [[xp[:, u:u + m * th:m, v:v + m * tw:m] for v in range(n)]
       for u in range(n)]
  return _flat(_transform_2d(d, wino.bt))


def _winograd_kernel(wino, kernel):
  """(n^2, cin, cout): G k G^T, summed in float32."""
  k = kernel.astype(jnp.float32)
  u = _transform_2d([[k[i, j] for j in range(wino.r)] for i in range(wino.r)],
                    wino.g)
  return _flat(u).astype(kernel.dtype)


def _winograd_sizes(wino, h, w, padding):
  """(output height, width, tiles down, tiles across)."""
  oh, ow = h + 2 * padding - wino.r + 1, w + 2 * padding - wino.r + 1
  return oh, ow, -(-oh // wino.m), -(-ow // wino.m)


def _winograd_pad(wino, x, padding, th, tw):
  """The input padded to whole tiles (the last tile's excess is zeros)."""
  h, w = x.shape[1:3]
  extra = wino.r - 1 - padding
  return jnp.pad(x, ((0, 0), (padding, wino.m * th + extra - h),
                     (padding, wino.m * tw + extra - w), (0, 0)))


def winograd_conv(x, kernel, padding, precision=None,
                  chunk_bytes: Optional[int] = None, wino=F2X2_3X3,
                  stride: int = 1):
  """An NHWC x HWIO convolution by Winograd's F(m x m, r x r).

  With a stride, its space-to-depth form (module docstring): a stride 1
  convolution of the kernel zero-padded to whole strides, r = ceil(k / stride).
  """
  if stride > 1:
    kh, kw, cin, cout = kernel.shape
    h = (x.shape[1] + 2 * padding - kh) // stride + 1
    w = (x.shape[2] + 2 * padding - kw) // stride + 1
    x = space_to_depth(x, h, w, kh, kw, stride, padding)
    kernel = kernel_to_space_to_depth(kernel, stride).reshape(
        -(-kh // stride), -(-kw // stride), stride * stride * cin, cout)
    padding = 0
  b, h, w, cin = x.shape
  m, n = wino.m, wino.n
  assert kernel.shape[:2] == (wino.r, wino.r), kernel.shape
  oh, ow, th, tw = _winograd_sizes(wino, h, w, padding)
  u = _winograd_kernel(wino, kernel)

  def one(_, xc):
    v = _winograd_tiles(wino, xc, th, tw)
    z = jnp.einsum('pbijc,pco->pbijo', v, u, precision=precision,
                   preferred_element_type=jnp.float32)
    y = _transform_2d([[z[n * i + j] for j in range(n)] for i in range(n)],
                      wino.at)  # y[row][col]: (b, th, tw, cout)
    y = jnp.stack([jnp.stack(r, 3) for r in y], 2)
    return None, y.reshape(y.shape[0], m * th, m * tw, -1)[
        :, :oh, :ow].astype(x.dtype)

  chunk = batch_chunk(b, n * n * th * tw * cin * 4, chunk_bytes)
  return over_chunks(one, None, chunk,
                     _winograd_pad(wino, x, padding, th, tw))[1]


def winograd_conv_grads(padding, precision, x, kernel, g,
                        chunk_bytes: Optional[int] = None, wino=F2X2_3X3):
  """(input gradient, kernel gradient) of a stride 1 convolution, by
  Winograd's F(m x m, r x r).

  The input gradient is the same convolution of g with the kernel flipped and
  its channels swapped. The kernel gradient is the forward's transpose:
  dk = G^T [sum over tiles of (B^T d B) * (A dy A^T)] G, one matmul per tile
  position over the batch's tiles.
  """
  b, h, w, cin = x.shape
  cout = g.shape[3]
  m, n = wino.m, wino.n
  oh, ow, th, tw = _winograd_sizes(wino, h, w, padding)
  flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
  dx = winograd_conv(g, flipped, wino.r - 1 - padding, precision, chunk_bytes,
                     wino)

  def kernel_grad(acc, xc, gc):
    v = _winograd_tiles(wino, xc, th, tw)
    q = [[gc[:, i::m, j::m] for j in range(m)] for i in range(m)]
    dy = _flat(_transform_2d(q, wino.at.T))
    return acc + jnp.einsum('pbijc,pbijo->pco', v, dy, precision=precision,
                            preferred_element_type=jnp.float32), None

  z = _accumulator((n * n, cin, cout), g)
  gp = jnp.pad(g, ((0, 0), (0, m * th - oh), (0, m * tw - ow), (0, 0)))
  chunk = batch_chunk(b, n * n * th * tw * (cin + cout) * 4, chunk_bytes)
  z = over_chunks(kernel_grad, z, chunk,
                  _winograd_pad(wino, x, padding, th, tw), gp)[0]
  dk = _transform_2d([[z[n * i + j] for j in range(n)] for i in range(n)],
                     wino.g.T)
  dk = jnp.stack([jnp.stack(r) for r in dk])
  return dx.astype(x.dtype), dk.astype(kernel.dtype)
