"""The paper's special operations as pure jnp functions.

Everything here is plain `jax.numpy` / `jax.lax` so it can be jitted, differentiated
and tested against independent references (tests/ops_test.py).

Tower convention: activations of a split layer carry a leading *tower* axis,
``(towers, batch, height, width, channels)``, and so do their kernels,
``(towers, kh, kw, in_channels, out_channels)``. On the paper's two GPUs each
tower lived on its own device; here the tower axis is sharded over the mesh's
``model`` axis or kept whole on one device (see `alexnet_jax.parallel`).
"""

import functools
from typing import Sequence

import jax
from jax import lax
import jax.numpy as jnp

# Named LRN conventions. The paper (Section 3.3) writes
#   b = a / (k + alpha * sum_{window of n maps} a^2) ** beta,  k=2, n=5, alpha=1e-4, beta=0.75.
# cuda-convnet (the paper's own code) and Caffe divide alpha by n inside the sum
# (effective 2e-5), Caffe and PyTorch default to k=1. Caffe's bvlc_alexnet uses
# k=1 with alpha/n; PyTorch's nn.LocalResponseNorm(5) is the same formula.
LRN_CONVENTIONS = {
    'paper': dict(n=5, k=2.0, alpha=1e-4, beta=0.75, alpha_over_n=False),
    'cuda_convnet': dict(n=5, k=2.0, alpha=1e-4, beta=0.75, alpha_over_n=True),
    'caffe': dict(n=5, k=1.0, alpha=1e-4, beta=0.75, alpha_over_n=True),
    'pytorch': dict(n=5, k=1.0, alpha=1e-4, beta=0.75, alpha_over_n=True),
}


def _window_sum(x: jax.Array, n: int) -> jax.Array:
  """Sum over a window of n adjacent channels (clipped at the ends).

  Adds shifted copies of the zero-padded input: n elementwise adds that XLA
  fuses into one loop. The operator is symmetric, so it is its own transpose.
  """
  half = n // 2
  channels = x.shape[-1]
  xp = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(half, half)])
  return sum(lax.slice_in_dim(xp, i, i + channels, axis=-1) for i in range(n))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _lrn(x, n, k, alpha, beta):
  return _lrn_terms(x, n, k, alpha, beta)[0]


def _lrn_terms(x, n, k, alpha, beta):
  """(y, d, r): the output, the denominator's base d and r = d ** -beta."""
  xf = x.astype(jnp.float32)
  d = k + alpha * _window_sum(xf * xf, n)
  r = jnp.exp(-beta * jnp.log(d))  # d ** -beta, computed once.
  return (xf * r).astype(x.dtype), d, r


def _lrn_fwd(x, n, k, alpha, beta):
  # Only the input is kept for the backward pass (in its own dtype), which
  # recomputes d and r: an elementwise window sum that fuses, cheaper than
  # writing two more float32 arrays of the activations' size to memory and
  # reading them back.
  return _lrn_terms(x, n, k, alpha, beta)[0], x


def _lrn_bwd(n, k, alpha, beta, x, g):
  # y_i = x_i r_i with r = d^-beta, d_i = k + alpha sum_{j in W(i)} x_j^2:
  # dx_j = g_j r_j - 2 alpha beta x_j sum_{i in W(j)} g_i x_i r_i / d_i.
  # Written by hand because autodiff of the pow recomputes it several times;
  # this halves the cost of LRN's backward pass on CPU.
  _, d, r = _lrn_terms(x, n, k, alpha, beta)
  xf, gf = x.astype(jnp.float32), g.astype(jnp.float32)
  t = _window_sum(gf * xf * r / d, n)
  dx = gf * r - (2.0 * alpha * beta) * xf * t
  return (dx.astype(x.dtype),)


_lrn.defvjp(_lrn_fwd, _lrn_bwd)


def local_response_norm(x: jax.Array,
                        n: int = 5,
                        k: float = 2.0,
                        alpha: float = 1e-4,
                        beta: float = 0.75,
                        alpha_over_n: bool = False) -> jax.Array:
  """Local response normalisation across the last (channel) axis.

  b_i = a_i / (k + alpha' * sum_{j=max(0,i-n//2)}^{min(N-1,i+n//2)} a_j^2) ** beta,
  with alpha' = alpha / n when `alpha_over_n` (cuda-convnet / Caffe / PyTorch) and
  alpha' = alpha as printed in the paper otherwise. The window is clipped at the
  ends of the channel axis, so applied to a tower's activations it never crosses
  into the other tower, as on the paper's GPUs. Computed in float32 whatever
  the input dtype; has a hand-written VJP that keeps only `x` for the
  backward pass (the denominator is recomputed there).

  Args:
    x: activations, channels last; any leading axes (tower, batch, H, W).
    n: window size (number of adjacent kernel maps), odd.
    k, alpha, beta: the formula's constants (paper: 2, 1e-4, 0.75).
    alpha_over_n: divide alpha by n (the convention of cuda-convnet and Caffe).

  Returns:
    The normalised activations, same shape and dtype as `x`.
  """
  if n % 2 != 1 or n < 1:
    raise ValueError(f'LRN window n must be odd and positive, got {n}.')
  return _lrn(x, n, float(k), float(alpha / n if alpha_over_n else alpha),
              float(beta))


def _lax_conv(x, kernel, stride, padding, precision=None):
  return lax.conv_general_dilated(
      x, kernel, window_strides=(stride, stride),
      padding=((padding, padding), (padding, padding)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, kernel, stride, padding, precision):
  return _conv_fwd(x, kernel, stride, padding, precision)[0]


def _conv_fwd(x, kernel, stride, padding, precision):
  # The platform is chosen when the computation is lowered, not when it is
  # traced (lax.platform_dependent): a step traced on a CPU host but lowered
  # for an accelerator gets XLA's convolution, and only the chosen branch
  # is in the compiled program.
  xla = functools.partial(_lax_conv, stride=stride, padding=padding,
                          precision=precision)
  if stride == 1:
    return xla(x, kernel), (x, kernel)
  cpu = functools.partial(_strided_conv_as_matmul, stride=stride,
                          padding=padding, precision=precision)
  return lax.platform_dependent(x, kernel, cpu=cpu, default=xla), (x, kernel)


def _strided_conv_as_matmul(x, kernel, stride, padding, precision=None):
  """A strided convolution as matmuls over space-to-depth windows, on CPU.

  XLA:CPU's own convolution reaches about a third of the matmul peak on
  conv1 (11x11, stride 4, 3 input channels); this is the same sum as one
  matmul per batch chunk (`_windows`), 1.4x faster for conv1's two towers
  at batch 128 on a 2-core x86 CPU.
  """
  kh, kw, cin, _ = kernel.shape
  b, hin, win, _ = x.shape
  h, w = (output_size(hin, kh, stride, padding),
          output_size(win, kw, stride, padding))
  kmat = _kernel_to_space_to_depth(kernel, stride)

  def one(_, xc):
    windows = _windows(xc, h, w, kh, kw, stride, padding)
    return None, jnp.einsum('bhwkc,kco->bhwo', windows, kmat,
                            precision=precision,
                            preferred_element_type=jnp.float32
                            ).astype(x.dtype)

  chunk = _batch_chunk(b, _window_bytes(h, w, kh, kw, stride, cin))
  return _over_chunks(one, None, chunk, x)[1]


def _conv_bwd(stride, padding, precision, res, g):
  x, kernel = res
  return lax.platform_dependent(
      x, kernel, g,
      cpu=functools.partial(_cpu_conv_grads, stride, padding, precision),
      default=functools.partial(_xla_conv_grads, stride, padding, precision))


def _xla_conv_grads(stride, padding, precision, x, kernel, g):
  """XLA's transposed convolutions (vendor libraries on accelerators)."""
  return jax.vjp(lambda v, k: _lax_conv(v, k, stride, padding, precision),
                 x, kernel)[1](g)


def _cpu_conv_grads(stride, padding, precision, x, kernel, g):
  """Both gradients as matrix products over chunks of the batch, on CPU.

  Kernel gradient: dK[i, j] = sum_{b,h,w} x_pad[b, i + s h, j + s w] g[b, h, w],
  the input windows of every kernel offset, stacked, contracted with g in one
  matmul (`_windows`). Input gradient (stride 1): each output position's
  g times the kernel gives its contribution to every input position of its
  window, and the kh * kw shifted contributions are added (col2im). Both are
  the sums XLA's transposed convolutions compute, in another order (the ops
  tests compare them). On XLA:CPU they are much faster (the paper's shapes,
  batch 128, one tower, on a 2-core x86 CPU: conv1's kernel gradient 659 ->
  189 ms, conv2's 545 -> 276 ms and its input gradient 383 -> 232 ms) because
  the batch is walked in chunks whose stacked windows stay in the CPU's cache
  (`_batch_chunk`); the same matmuls over the whole batch were slower than
  XLA's. Accelerators keep XLA's own gradients (`_xla_conv_grads`).
  """
  kh, kw, cin, cout = kernel.shape
  b, h, w, _ = g.shape
  kq, kr = -(-kh // stride), -(-kw // stride)

  def kernel_grad(acc, xc, gc):
    windows = _windows(xc, h, w, kh, kw, stride, padding)
    return acc + jnp.einsum('bhwkc,bhwo->kco', windows, gc,
                            precision=precision,
                            preferred_element_type=jnp.float32), None

  dk = jnp.zeros((kq * kr, stride * stride * cin, cout), jnp.float32)
  varying = tuple(jax.typeof(g).manual_axis_type.varying)
  if varying:  # Inside shard_map the loop's sum varies as the data does.
    dk = lax.pcast(dk, varying, to='varying')
  chunk = _batch_chunk(b, _window_bytes(h, w, kh, kw, stride, cin))
  dk = _over_chunks(kernel_grad, dk, chunk, x, g)[0]
  dk = _kernel_from_space_to_depth(dk, kh, kw, stride).astype(kernel.dtype)
  if stride != 1:
    # Only conv1 has a stride, and its input (the image) needs no gradient:
    # XLA removes this unused transposed convolution.
    return _xla_conv_grads(stride, padding, precision, x, kernel, g)[0], dk

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

  chunk = _batch_chunk(b, _window_bytes(h, w, kh, kw, 1, cin))
  return _over_chunks(input_grad, None, chunk, g)[1], dk


def _windows(x, h, w, kh, kw, stride, padding):
  """Every kernel offset's input window, stacked: `(b, h, w, offsets, c)`.

  Gathered after a space-to-depth rearrangement (each stride x stride block of
  pixels becomes one pixel with stride^2 times the channels), so a strided
  convolution's windows are ceil(kh / stride)^2 slices of wide rows rather
  than kh * kw slices of `cin` values: for conv1 (11x11, stride 4, 3
  channels) 9 slices of 48 instead of 121 of 3, about 2x faster to gather.
  The kernel is zero-padded to whole strides to match
  (`_kernel_to_space_to_depth`); for stride 1 this is plain im2col.
  """
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


def _kernel_to_space_to_depth(kernel, stride):
  """HWIO kernel -> `(offsets, stride^2 * cin, cout)`, matching `_windows`."""
  kh, kw, cin, cout = kernel.shape
  s = stride
  kq, kr = -(-kh // s), -(-kw // s)
  k = jnp.pad(kernel, ((0, kq * s - kh), (0, kr * s - kw), (0, 0), (0, 0)))
  k = k.reshape(kq, s, kr, s, cin, cout).transpose(0, 2, 1, 3, 4, 5)
  return k.reshape(kq * kr, s * s * cin, cout)


def _kernel_from_space_to_depth(k, kh, kw, stride):
  """The inverse of `_kernel_to_space_to_depth`, cropped to kh x kw."""
  s = stride
  kq, kr = -(-kh // s), -(-kw // s)
  cin, cout = k.shape[1] // (s * s), k.shape[2]
  k = k.reshape(kq, kr, s, s, cin, cout).transpose(0, 2, 1, 3, 4, 5)
  return k.reshape(kq * s, kr * s, cin, cout)[:kh, :kw]


def _over_chunks(fn, carry, chunk, *arrays):
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


# Per-chunk bytes of the stacked windows: half of this machine's 32 MiB L3
# cache, measured best for the paper's layers at batch 128 (conv1: 2 images a
# chunk, conv2: 4, conv3-5: 8).
_CHUNK_BYTES = 16 * 2 ** 20


def _window_bytes(h, w, kh, kw, stride, cin) -> int:
  """float32 bytes of one example's stacked windows (`_windows`)."""
  return h * w * -(-kh // stride) * -(-kw // stride) * stride ** 2 * cin * 4


def _batch_chunk(batch: int, bytes_per_example: int) -> int:
  """The largest divisor of `batch` whose windows fit in `_CHUNK_BYTES`."""
  return max(c for c in range(1, batch + 1) if batch % c == 0 and (
      c == 1 or c * bytes_per_example <= _CHUNK_BYTES))


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1,
           padding: int = 0, precision=None) -> jax.Array:
  """NHWC x HWIO convolution with symmetric integer padding.

  On CPU both gradients, and the forward pass of a strided convolution, are
  computed as matrix products over batch chunks of stacked input windows
  (`_conv_fwd`, `_conv_bwd`): the same sums, faster there than XLA:CPU's
  convolutions. Elsewhere all three are XLA's convolutions. The choice is
  made for the platform the computation is lowered for.
  `precision`: a `lax.Precision` or its name (None: the backend's default).
  """
  kernel = kernel.astype(x.dtype)
  # Inside shard_map the kernel is replicated over axes the data varies on:
  # mark it varying there, so the custom VJP's kernel gradient (a sum over
  # this shard only) is summed over those axes by the transpose of the cast.
  missing = tuple(jax.typeof(x).manual_axis_type.varying -
                  jax.typeof(kernel).manual_axis_type.varying)
  if missing:
    kernel = lax.pcast(kernel, missing, to='varying')
  return _conv(x, kernel, stride, padding, _precision(precision))


def _precision(precision):
  return None if precision is None else lax.Precision(precision)


def per_tower_conv(x: jax.Array, kernel: jax.Array, stride: int = 1,
                   padding: int = 0, precision=None) -> jax.Array:
  """Runs each tower as its own convolution.

  Mathematically this is a grouped convolution (`feature_group_count` = towers),
  but XLA:CPU runs a grouped convolution, and `vmap` over towers which lowers to
  one, about 3.4x slower than separate convolutions (measured on the
  development machine; JAX issue #13800). A Python loop over the (static,
  small) tower axis gives XLA one ordinary convolution per tower; towers that
  read the same input are one convolution with their kernels side by side.

  Args:
    x: either per-tower inputs `(towers, B, H, W, C)` (the tower reads only its
      own maps, e.g. conv2, conv4, conv5) or one shared input `(B, H, W, C)`
      that every tower reads in full (conv1's image, conv3's gathered maps).
    kernel: `(towers, kh, kw, C, out_per_tower)`.
    stride, padding: as in the paper's layer table.
    precision: see `conv2d`.

  Returns:
    `(towers, B, H', W', out_per_tower)`.
  """
  towers = kernel.shape[0]
  shared = x.ndim == 4
  if not shared and x.shape[0] != towers:
    raise ValueError(f'input has {x.shape[0]} towers, kernel has {towers}')
  if shared:
    # One convolution with every tower's kernels side by side: the input's
    # windows are gathered once, and wider matmuls run faster.
    merged = jnp.concatenate([kernel[t] for t in range(towers)], axis=-1)
    y = conv2d(x, merged, stride, padding, precision)
    return jnp.stack(jnp.split(y, towers, axis=-1))
  return jnp.stack([conv2d(x[t], kernel[t], stride, padding, precision)
                    for t in range(towers)])


def _pool_windows(x, window, stride, out_h, out_w):
  """The window's elements in row-major order, each `(..., out_h, out_w, C)`."""
  lead = x.ndim - 3
  return [lax.slice_in_dim(lax.slice_in_dim(
      x, i, i + (out_h - 1) * stride + 1, stride, axis=lead),
                           j, j + (out_w - 1) * stride + 1, stride,
                           axis=lead + 1)
          for i in range(window) for j in range(window)]


def _reduce_window_max(x, window, stride):
  lead = x.ndim - 3
  return lax.reduce_window(
      x, -jnp.inf, lax.max,
      window_dimensions=(1,) * lead + (window, window, 1),
      window_strides=(1,) * lead + (stride, stride, 1),
      padding='VALID')


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, stride, in_size):
  del in_size
  return _reduce_window_max(x, window, stride)


def _max_pool_fwd(x, window, stride, in_size):
  """The pooled maps, and which window element each maximum came from.

  The first maximum in row-major order, as XLA's select-and-scatter (what
  autodiff of reduce_window produces) routes the gradient. Only this int8
  index is kept for the backward pass, not the input.
  """
  del in_size
  y = _reduce_window_max(x, window, stride)
  lead = x.ndim - 3
  cands = _pool_windows(x, window, stride, y.shape[lead], y.shape[lead + 1])
  n = window * window
  dtype = jnp.int8 if n < 127 else jnp.int32
  first = jnp.full(y.shape, n, dtype)  # n: no element (never, for real maps).
  for k in reversed(range(n)):
    first = jnp.where(cands[k] == y, jnp.asarray(k, dtype), first)
  return y, first


def _max_pool_bwd(window, stride, in_size, first, g):
  """Each window's gradient to its first maximum, written block by block.

  Input pixel (s u + a, s v + b) receives from the windows (u - q1, v - q2)
  whose element (s q1 + a, s q2 + b) it is. The input is computed as
  stride x stride blocks: a few shifted copies of g and `first`, compared and
  summed in one elementwise loop that XLA fuses, then reshaped. (Padding each
  window element's gradient into place and adding, or XLA's select-and-
  scatter, were 2x and 4x slower on CPU.)
  """
  s = stride
  lead = g.ndim - 3
  (hin, win), (oh, ow) = in_size, g.shape[lead:lead + 2]
  q = -(-window // s)  # Windows overlapping one block, per axis.
  u, v = max(oh - 1 + q, -(-hin // s)), max(ow - 1 + q, -(-win // s))
  spatial = [(0, 0)] * lead + [(q - 1, u - oh), (q - 1, v - ow), (0, 0)]
  gp = jnp.pad(g, spatial)
  fp = jnp.pad(first, spatial, constant_values=window * window)
  blocks = g.shape[:lead] + (u, 1, v, 1, g.shape[-1])
  a = jnp.arange(s).reshape((1,) * lead + (1, s, 1, 1, 1))
  b = jnp.arange(s).reshape((1,) * lead + (1, 1, 1, s, 1))
  zero = jnp.array(0, g.dtype)
  dx = None
  for q1 in range(q):
    for q2 in range(q):
      def shifted(t):
        t = lax.slice_in_dim(t, q - 1 - q1, q - 1 - q1 + u, axis=lead)
        t = lax.slice_in_dim(t, q - 1 - q2, q - 1 - q2 + v, axis=lead + 1)
        return t.reshape(blocks)
      i, j = s * q1 + a, s * q2 + b
      hit = ((i < window) & (j < window) &
             (shifted(fp).astype(jnp.int32) == i * window + j))
      term = jnp.where(hit, shifted(gp), zero)
      dx = term if dx is None else dx + term
  dx = dx.reshape(g.shape[:lead] + (u * s, v * s, g.shape[-1]))
  return (dx[..., :hin, :win, :],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x: jax.Array, window: int = 3, stride: int = 2) -> jax.Array:
  """Max pooling over the two spatial axes just before the channel axis.

  window=3, stride=2 is the paper's overlapping pooling (Section 3.4);
  window=2, stride=2 the traditional non-overlapping one it is compared with.
  Any leading axes (tower, batch) are kept. No padding, as in the paper.
  """
  lead = x.ndim - 3
  return _max_pool(x, window, stride, (x.shape[lead], x.shape[lead + 1]))


def merge_towers(x: jax.Array) -> jax.Array:
  """`(towers, B, ..., C)` -> `(B, ..., towers * C)`, tower-major channels."""
  towers = x.shape[0]
  return jnp.concatenate([x[t] for t in range(towers)], axis=-1)


def output_size(size: int, window: int, stride: int, padding: int = 0) -> int:
  """Spatial size after a VALID-with-padding window op."""
  return (size + 2 * padding - window) // stride + 1


def feature_sizes(input_size: int, conv1_padding: int, pool_window: int,
                  pool_stride: int) -> Sequence[int]:
  """Spatial sizes after conv1, pool1, pool2 and pool5."""
  c1 = output_size(input_size, 11, 4, conv1_padding)
  p1 = output_size(c1, pool_window, pool_stride)
  p2 = output_size(p1, pool_window, pool_stride)
  p5 = output_size(p2, pool_window, pool_stride)
  return c1, p1, p2, p5
