"""The paper's special operations: LRN, per-tower convolution, overlapping
pooling, and the sizes they produce.

Plain `jax.numpy` / `jax.lax`, jitted, differentiated and tested against
independent references (tests/ops_test.py). Three have hand-written
gradients, each saying why; on CPU the convolution's are matrix products
from cpu_kernels.py, chosen when the computation is lowered for CPU.

Tower convention: activations of a split layer carry a leading *tower* axis,
``(towers, batch, height, width, channels)``, and so do their kernels,
``(towers, kh, kw, in_channels, out_channels)``. On the paper's two GPUs each
tower lived on its own device; here the tower axis is sharded over the mesh's
``model`` axis or kept whole on one device (see `alexnet_jax.parallel`).
"""

import dataclasses
import functools
from typing import Sequence

import jax
from jax import lax
import jax.numpy as jnp

from alexnet_jax import cpu_kernels

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


@dataclasses.dataclass(frozen=True)
class LRN:
  """A network's local response normalisation: the `model.lrn` config keys.

  `enabled` and `across_towers` say where it runs (model.py): with
  across_towers False each tower normalises its own maps (the paper: each
  GPU's); True runs the window across both towers' maps (Caffe's
  bvlc_alexnet, whose norm layers see all 96 / 256 channels). The rest are
  `local_response_norm`'s arguments (paper: n=5, k=2, alpha=1e-4, beta=0.75).
  """
  enabled: bool = True
  n: int = 5
  k: float = 2.0
  alpha: float = 1e-4
  beta: float = 0.75
  alpha_over_n: bool = False
  across_towers: bool = False

  def __call__(self, x: jax.Array, custom_vjp: bool = True) -> jax.Array:
    return local_response_norm(x, self.n, self.k, self.alpha, self.beta,
                               self.alpha_over_n, custom_vjp)


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
  # Written by hand on every backend: autodiff of the pow recomputes it
  # several times and keeps d and r (two float32 arrays of the activations'
  # size) for the backward pass; this keeps only x and does one pow.
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
                        alpha_over_n: bool = False,
                        custom_vjp: bool = True) -> jax.Array:
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
    custom_vjp: the hand-written VJP (True) or JAX's autodiff of the same
      formula (False: `model.custom_vjp`, for timing one against the other).

  Returns:
    The normalised activations, same shape and dtype as `x`.
  """
  if n % 2 != 1 or n < 1:
    raise ValueError(f'LRN window n must be odd and positive, got {n}.')
  args = (n, float(k), float(alpha / n if alpha_over_n else alpha),
          float(beta))
  if not custom_vjp:
    return _lrn_terms(x, *args)[0]
  return _lrn(x, *args)


def _lax_conv(x, kernel, stride, padding, precision=None):
  return lax.conv_general_dilated(
      x, kernel, window_strides=(stride, stride),
      padding=((padding, padding), (padding, padding)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, kernel, stride, padding, precision):
  return _conv_fwd(x, kernel, stride, padding, precision)[0]


def _conv_fwd(x, kernel, stride, padding, precision):
  # A custom VJP only so that CPU programs can use cpu_kernels (XLA:CPU's
  # strided and transposed convolutions are slow, and Winograd does 4/9 of
  # a 3x3 layer's multiplications); on accelerators both directions are
  # XLA's own convolutions. The platform is chosen when the
  # computation is lowered, not when it is traced (lax.platform_dependent): a
  # step traced on a CPU host but lowered for an accelerator gets XLA's
  # convolution, and only the chosen branch is in the compiled program.
  xla = functools.partial(_lax_conv, stride=stride, padding=padding,
                          precision=precision)
  wino = cpu_kernels.winograd_for(kernel, stride, padding, gradients=False)
  if wino:
    cpu = functools.partial(cpu_kernels.winograd_conv, padding=padding,
                            precision=precision, wino=wino, stride=stride)
    return lax.platform_dependent(x, kernel, cpu=cpu, default=xla), (x, kernel)
  if stride == 1:
    return xla(x, kernel), (x, kernel)
  out_size = (output_size(x.shape[1], kernel.shape[0], stride, padding),
              output_size(x.shape[2], kernel.shape[1], stride, padding))
  cpu = functools.partial(cpu_kernels.strided_conv, stride=stride,
                          padding=padding, out_size=out_size,
                          precision=precision)
  return lax.platform_dependent(x, kernel, cpu=cpu, default=xla), (x, kernel)


def _conv_bwd(stride, padding, precision, res, g):
  x, kernel = res
  return lax.platform_dependent(
      x, kernel, g,
      cpu=functools.partial(_cpu_conv_grads, stride, padding, precision),
      default=functools.partial(_xla_conv_grads, stride, padding, precision))


def _cpu_conv_grads(stride, padding, precision, x, kernel, g):
  wino = cpu_kernels.winograd_for(kernel, stride, padding, gradients=True)
  if wino:
    return cpu_kernels.winograd_conv_grads(padding, precision, x, kernel, g,
                                           wino=wino)
  dx, dk = cpu_kernels.conv_grads(stride, padding, precision, x, kernel, g)
  if dx is None:  # Strided (conv1): XLA's, which XLA drops (see conv_grads).
    dx = _xla_conv_grads(stride, padding, precision, x, kernel, g)[0]
  return dx, dk


def _xla_conv_grads(stride, padding, precision, x, kernel, g):
  """XLA's transposed convolutions (vendor libraries on accelerators)."""
  return jax.vjp(lambda v, k: _lax_conv(v, k, stride, padding, precision),
                 x, kernel)[1](g)


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1,
           padding: int = 0, precision=None) -> jax.Array:
  """NHWC x HWIO convolution with symmetric integer padding.

  On CPU both gradients, and the forward pass of a strided convolution, are
  matrix products over batch chunks of stacked input windows (cpu_kernels);
  a wide 3x3 layer (conv3-5) is Winograd's F(2x2, 3x3) in all three, a
  wide 5x5 layer's gradients (conv2) are F(4x4, 5x5), and conv1's forward
  pass is F(2x2, 3x3) of its space-to-depth form: the same sums, faster
  there than XLA:CPU's convolutions. Elsewhere all three are XLA's
  convolutions. The choice is made for the platform the
  computation is lowered for.
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
  one, several times slower than separate convolutions (JAX issue #13800). A
  Python loop over the (static, small) tower axis gives XLA one ordinary
  convolution per tower on every backend; towers that read the same input are
  one convolution with their kernels side by side.

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
  summed in one elementwise loop that XLA fuses, then reshaped.

  Why by hand, on every backend: autodiff of reduce_window gives XLA's
  select-and-scatter, which keeps the whole input for the backward pass and
  is slow on CPU; on GPUs it scatters with atomic adds, whose order (and so
  the sum's rounding) can change from run to run. This keeps an int8 index
  and uses only slices, compares and adds, so it is deterministic everywhere.
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


def max_pool(x: jax.Array, window: int = 3, stride: int = 2,
             custom_vjp: bool = True) -> jax.Array:
  """Max pooling over the two spatial axes just before the channel axis.

  window=3, stride=2 is the paper's overlapping pooling (Section 3.4);
  window=2, stride=2 the traditional non-overlapping one it is compared with.
  Any leading axes (tower, batch) are kept. No padding, as in the paper.
  `custom_vjp` False differentiates XLA's reduce_window instead (its
  select-and-scatter: atomic adds on GPUs, so not deterministic there).
  """
  if not custom_vjp:
    return _reduce_window_max(x, window, stride)
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
