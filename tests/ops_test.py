"""Each op against an independent reference, values and gradients."""

import contextlib
import io
import itertools

import jax
import jax.ad_checkpoint  # pylint: disable=unused-import
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import cpu_kernels
from alexnet_jax import ops


def jitted_grads(fn, g, *args):
  """The gradients of sum(fn(*args) * g) with respect to every arg.

  Compiled whole: run eagerly, each jax operation would be an XLA program of
  its own.
  """
  return jax.jit(jax.grad(lambda *a: (fn(*a) * g).sum(),
                          argnums=tuple(range(len(args)))))(*args)


def naive_lrn(a, n, k, alpha, beta):
  """The paper's formula, one channel at a time, in float64 numpy."""
  a = np.asarray(a, np.float64)
  out = np.empty_like(a)
  channels = a.shape[-1]
  for i in range(channels):
    lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
    s = (a[..., lo:hi + 1] ** 2).sum(-1)
    out[..., i] = a[..., i] / (k + alpha * s) ** beta
  return out


def naive_lrn_jnp(a, n, k, alpha, beta):
  """The same loop in jnp, differentiated by autodiff (gradient reference)."""
  channels = a.shape[-1]
  outs = []
  for i in range(channels):
    lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
    s = (a[..., lo:hi + 1] ** 2).sum(-1)
    outs.append(a[..., i] / (k + alpha * s) ** beta)
  return jnp.stack(outs, -1)


@pytest.mark.parametrize('convention', sorted(ops.LRN_CONVENTIONS))
def test_lrn_matches_naive_loop(convention):
  c = ops.LRN_CONVENTIONS[convention]
  # Large activations so the normaliser is far from k (alpha is small).
  x = np.random.RandomState(0).normal(0, 30, (2, 3, 4, 4, 11)).astype(np.float32)
  got = ops.local_response_norm(x, **c)
  alpha = c['alpha'] / c['n'] if c['alpha_over_n'] else c['alpha']
  want = naive_lrn(x, c['n'], c['k'], alpha, c['beta'])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert not np.allclose(want, x / c['k'] ** c['beta'], rtol=1e-3)


def test_lrn_conventions_differ_as_documented():
  x = np.random.RandomState(1).normal(0, 50, (4, 8)).astype(np.float32)
  paper = ops.local_response_norm(x, **ops.LRN_CONVENTIONS['paper'])
  caffe = ops.local_response_norm(x, **ops.LRN_CONVENTIONS['caffe'])
  # Caffe: k=1 and alpha/n = 2e-5.
  np.testing.assert_allclose(caffe, naive_lrn(x, 5, 1.0, 2e-5, 0.75),
                             rtol=1e-5)
  assert not np.allclose(paper, caffe, rtol=1e-2)


@pytest.mark.slow
@pytest.mark.parametrize('n', [1, 3, 5])
def test_lrn_gradient_matches_autodiff_of_naive(n):
  x = jnp.asarray(np.random.RandomState(2).normal(0, 40, (2, 3, 3, 7)),
                  jnp.float32)
  g = jnp.asarray(np.random.RandomState(3).normal(size=x.shape), jnp.float32)
  args = (n, 2.0, 1e-3, 0.75)
  got, = jitted_grads(lambda v: ops.local_response_norm(v, *args), g, x)
  want, = jitted_grads(lambda v: naive_lrn_jnp(v, *args), g, x)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_lrn_saves_only_its_input_for_the_backward_pass(dtype):
  x = jax.random.normal(jax.random.key(0), (2, 3, 4, 4, 16)).astype(dtype)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    jax.ad_checkpoint.print_saved_residuals(
        lambda v: ops.local_response_norm(v).astype(jnp.float32).sum(), x)
  # The input itself, in its own dtype; nothing of its size in float32.
  name = 'bf16' if dtype == jnp.bfloat16 else 'f32'
  assert out.getvalue().splitlines() == [
      f'{name}[2,3,4,4,16] from the argument v'], out.getvalue()


def test_lrn_window_stays_inside_a_tower():
  # Two towers of 4 maps: a huge activation in tower 0 must not touch tower 1.
  x = np.ones((2, 1, 4), np.float32)
  x[0, 0, 3] = 1e3
  y = np.asarray(ops.local_response_norm(jnp.asarray(x)))
  np.testing.assert_allclose(y[1], ops.local_response_norm(jnp.ones((1, 4))))


def test_lrn_rejects_even_window():
  with pytest.raises(ValueError, match='odd'):
    ops.local_response_norm(jnp.ones((1, 4)), n=4)


def grouped_reference(x, kernel, stride, padding):
  """lax's grouped convolution (feature_group_count) on the merged towers."""
  towers = kernel.shape[0]
  if x.ndim == 5:  # Per-tower inputs: channels tower-major.
    xin = ops.merge_towers(x)
    groups = towers
  else:  # Shared input: every tower reads all of it.
    xin = jnp.concatenate([x] * towers, axis=-1)
    groups = towers
  k = jnp.concatenate([kernel[t] for t in range(towers)], axis=-1)
  y = lax.conv_general_dilated(
      xin, k, (stride, stride), ((padding, padding),) * 2,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups)
  return jnp.stack(jnp.split(y, towers, axis=-1))


@pytest.mark.slow
@pytest.mark.parametrize('shared,stride,padding',
                         list(itertools.product([False, True], [1, 4], [0, 2])))
def test_per_tower_conv_matches_grouped_conv(shared, stride, padding):
  rng = np.random.RandomState(4)
  towers, cin, cout = 2, 3, 5
  shape = (4, 13, 13, cin) if shared else (towers, 4, 13, 13, cin)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  k = jnp.asarray(rng.normal(size=(towers, 5, 5, cin, cout)), jnp.float32)
  got = jax.jit(ops.per_tower_conv, static_argnums=(2, 3))(
      x, k, stride, padding)
  want = jax.jit(grouped_reference, static_argnums=(2, 3))(
      x, k, stride, padding)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  g = jnp.asarray(rng.normal(size=got.shape), jnp.float32)
  got_grads = jitted_grads(
      lambda a, b: ops.per_tower_conv(a, b, stride, padding), g, x, k)
  want_grads = jitted_grads(
      lambda a, b: grouped_reference(a, b, stride, padding), g, x, k)
  for a, b in zip(got_grads, want_grads):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


def naive_pool(x, window, stride):
  x = np.asarray(x)
  h = (x.shape[-3] - window) // stride + 1
  w = (x.shape[-2] - window) // stride + 1
  out = np.empty(x.shape[:-3] + (h, w, x.shape[-1]), x.dtype)
  for i in range(h):
    for j in range(w):
      patch = x[..., i * stride:i * stride + window,
                j * stride:j * stride + window, :]
      out[..., i, j, :] = patch.max(axis=(-3, -2))
  return out


def slices_pool(x, window, stride):
  """Max over the window's shifted strided slices (gradient reference)."""
  h = (x.shape[-3] - window) // stride + 1
  w = (x.shape[-2] - window) // stride + 1
  parts = [x[..., i:i + stride * (h - 1) + 1:stride,
             j:j + stride * (w - 1) + 1:stride, :]
           for i in range(window) for j in range(window)]
  return jnp.max(jnp.stack(parts), axis=0)


@pytest.mark.slow
@pytest.mark.parametrize('window,stride', [(3, 2), (2, 2)])
def test_max_pool_matches_naive(window, stride):
  rng = np.random.RandomState(5)
  x = jnp.asarray(rng.normal(size=(2, 3, 13, 13, 4)), jnp.float32)
  y = jax.jit(ops.max_pool, static_argnums=(1, 2))(x, window, stride)
  np.testing.assert_array_equal(y, naive_pool(x, window, stride))
  assert y.shape[-3:-1] == (6, 6)
  g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
  got, = jitted_grads(lambda v: ops.max_pool(v, window, stride), g, x)
  want, = jitted_grads(lambda v: slices_pool(v, window, stride), g, x)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_overlapping_pool_sizes_match_paper():
  # 224 input, conv1 padding 2 -> 55 -> 27 -> 13 -> 6 (the paper's Figure 2).
  assert tuple(ops.feature_sizes(224, 2, 3, 2)) == (55, 27, 13, 6)
  assert tuple(ops.feature_sizes(227, 0, 3, 2)) == (55, 27, 13, 6)


@pytest.mark.slow
@pytest.mark.parametrize('window,stride',
                         [(3, 2), (2, 2), (3, 1), (3, 3), (2, 3), (5, 2)])
def test_max_pool_gradient_matches_xla_with_ties(window, stride):
  # Few distinct values: most windows have tied maxima. The hand-written
  # backward must route to the same (first, row-major) element as autodiff of
  # lax.reduce_window (XLA's select-and-scatter).
  rng = np.random.RandomState(6)
  # 12 columns: with some strides the last ones are in no window.
  x = jnp.asarray(rng.randint(0, 3, size=(2, 2, 11, 12, 3)), jnp.float32)
  pooled = jax.eval_shape(lambda v: ops.max_pool(v, window, stride), x)
  g = jnp.asarray(rng.normal(size=pooled.shape), jnp.float32)

  def xla_pool(v):
    return lax.reduce_window(v, -jnp.inf, lax.max, (1, 1, window, window, 1),
                             (1, 1, stride, stride, 1), 'VALID')

  got, = jitted_grads(lambda v: ops.max_pool(v, window, stride), g, x)
  want, = jitted_grads(xla_pool, g, x)
  np.testing.assert_array_equal(got != 0, want != 0)  # Same routing...
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # ...and sums.


def xla_conv(x, kernel, stride, padding):
  """XLA's own convolution, the reference for every CPU kernel."""
  return lax.conv_general_dilated(
      x, kernel, (stride, stride), ((padding, padding),) * 2,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def assert_conv2d_matches(x, kernel, stride, padding, g, y, want):
  """ops.conv2d, jitted (so lowered for CPU): its values and both gradients
  (of the sum of its output times g) are XLA's `y` and `want`."""
  got_y = jax.jit(ops.conv2d, static_argnums=(2, 3))(x, kernel, stride,
                                                       padding)
  got = jitted_grads(lambda v, kk: ops.conv2d(v, kk, stride, padding), g, x,
                     kernel)
  np.testing.assert_allclose(got_y, y, rtol=1e-5, atol=1e-4)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('chunked', [False, True])
@pytest.mark.parametrize('size', [5, 3])  # Matmuls; Winograd (cpu_kernels).
def test_conv_kernel_gradient_inside_shard_map(monkeypatch, chunked, size):
  # The custom VJP's kernel gradient must be summed over the data shards,
  # also when each shard walks its batch in chunks (a loop).
  monkeypatch.setattr(cpu_kernels, 'WINOGRAD_MIN_CHANNELS', {3: 1})
  if chunked:
    monkeypatch.setattr(cpu_kernels, 'CHUNK_BYTES', 1)
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from alexnet_jax import parallel  # pylint: disable=g-import-not-at-top
  mesh = parallel.create_mesh(4, 1)
  rng = np.random.RandomState(7)
  x = jnp.asarray(rng.normal(size=(8, 9, 9, 3)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(size, size, 3, 4)), jnp.float32)
  pad = size // 2

  def loss(k, x):
    return jax.shard_map(
        lambda k, x: jax.lax.psum(jnp.sin(ops.conv2d(x, k, 1, pad)).sum(),
                                  'data'),
        mesh=mesh, in_specs=(P(), P('data')), out_specs=P())(k, x)

  got = jax.jit(jax.grad(loss))(
      jax.device_put(k, NamedSharding(mesh, P())),
      jax.device_put(x, NamedSharding(mesh, P('data'))))
  want = jax.jit(jax.grad(lambda k: jnp.sin(xla_conv(x, k, 1, pad)).sum()))(k)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('hw,padding,chunk', [
    ((13, 13), 1, None),  # conv3-5's maps: tiles past the edge.
    ((8, 7), 1, 1),       # Even and odd, one example a chunk.
    ((9, 6), 0, 2),
    ((6, 9), 2, 3)])
def test_winograd_matches_xla(monkeypatch, hw, padding, chunk):
  # F(2x2, 3x3): the forward pass and both gradients equal XLA's
  # convolution up to float32 rounding, directly and as ops.conv2d uses them.
  monkeypatch.setattr(cpu_kernels, 'WINOGRAD_MIN_CHANNELS', {3: 1})
  rng = np.random.RandomState(10)
  x = jnp.asarray(rng.normal(size=(6,) + hw + (5,)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(3, 3, 5, 4)), jnp.float32)

  y = xla_conv(x, k, 1, padding)
  g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
  want = jitted_grads(lambda v, kk: xla_conv(v, kk, 1, padding), g, x, k)
  chunk_bytes = None if chunk is None else 1 if chunk == 1 else (
      chunk * 16 * (hw[0] // 2 + 2) * (hw[1] // 2 + 2) * 5 * 4)
  got_y = jax.jit(lambda v, kk: cpu_kernels.winograd_conv(
      v, kk, padding, chunk_bytes=chunk_bytes))(x, k)
  got = jax.jit(lambda v, kk, gg: cpu_kernels.winograd_conv_grads(
      padding, None, v, kk, gg, chunk_bytes))(x, k, g)
  np.testing.assert_allclose(got_y, y, rtol=1e-5, atol=1e-4)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
  assert_conv2d_matches(x, k, 1, padding, g, y, want)


@pytest.mark.parametrize('m,r', [(2, 3), (4, 5), (4, 3)])
def test_toom_cook_transforms_correlate(m, r):
  # y = A^T [(G k) * (B^T d)]: the m outputs of a 1-D correlation of an
  # n-sample tile with an r-tap kernel, as F(m, r) is built (and Lavin's).
  rng = np.random.RandomState(m * r)
  d, k = rng.normal(size=m + r - 1), rng.normal(size=r)
  want = np.correlate(d, k, 'valid')
  wino = cpu_kernels.toom_cook(m, r)
  np.testing.assert_allclose(wino.at @ ((wino.g @ k) * (wino.bt @ d)), want,
                             rtol=1e-12, atol=1e-12)
  if (m, r) == (2, 3):
    lavin = cpu_kernels.F2X2_3X3
    np.testing.assert_allclose(
        lavin.at @ ((lavin.g @ k) * (lavin.bt @ d)), want, rtol=1e-12)


@pytest.mark.slow
def test_winograd_5x5_gradients_match_xla(monkeypatch):
  # F(4x4, 5x5) for a 5x5 layer's two gradients (conv2): XLA's values up to
  # float32 rounding (its transforms' constants make that about 1e-5).
  monkeypatch.setattr(cpu_kernels, 'WINOGRAD_MIN_CHANNELS', {5: 1})
  # conv2's padding; odd and even sizes, tiles past the edge; 2 examples a
  # chunk when called directly (compiling F(4x4, 5x5) takes seconds: one case).
  hw, padding, chunk = (11, 10), 2, 2
  rng = np.random.RandomState(11)
  x = jnp.asarray(rng.normal(size=(4,) + hw + (3,)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(5, 5, 3, 4)), jnp.float32)

  y, vjp = jax.vjp(lambda v, kk: xla_conv(v, kk, 1, padding), x, k)
  g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
  want = vjp(g)
  # Through ops.conv2d (jitted, so lowered for CPU) and directly, chunked.
  got = jitted_grads(lambda v, kk: ops.conv2d(v, kk, 1, padding), g, x, k)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())
  th = -(-(hw[0] + 2 * padding - 4) // 4)
  tw = -(-(hw[1] + 2 * padding - 4) // 4)
  chunk_bytes = chunk * 64 * th * tw * 7 * 4
  got = jax.jit(lambda v, kk, gg: cpu_kernels.winograd_conv_grads(
      padding, None, v, kk, gg, chunk_bytes, cpu_kernels.F4X4_5X5))(x, k, g)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


@pytest.mark.parametrize('size,padding,chunk', [
    (35, 2, None),  # conv1's padding for 224 pixels; tiles past the edge.
    (39, 0, 1)])    # Caffe's 227 pixels; one example a chunk.
def test_winograd_strided_forward_matches_xla(monkeypatch, size, padding,
                                              chunk):
  # conv1 (11x11, stride 4): the forward pass is F(2x2, 3x3) of its
  # space-to-depth form, the kernel gradient stays the matmuls; values and
  # gradients equal XLA's, directly and through ops.conv2d.
  monkeypatch.setattr(cpu_kernels, 'WINOGRAD_MIN_CHANNELS', {11: 1})
  rng = np.random.RandomState(12)
  x = jnp.asarray(rng.normal(size=(3, size, size, 3)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(11, 11, 3, 5)), jnp.float32)
  assert cpu_kernels.winograd_for(k, 4, padding, gradients=False) is (
      cpu_kernels.F2X2_3X3)
  assert cpu_kernels.winograd_for(k, 4, padding, gradients=True) is None

  y, vjp = jax.vjp(lambda v, kk: xla_conv(v, kk, 4, padding), x, k)
  got_y = jax.jit(lambda v, kk: cpu_kernels.winograd_conv(
      v, kk, padding, chunk_bytes=chunk, stride=4))(x, k)
  np.testing.assert_allclose(got_y, y, rtol=1e-5, atol=1e-4)
  g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
  want = vjp(g)
  assert_conv2d_matches(x, k, 4, padding, g, y, want)


def test_winograd_is_what_cpu_programs_run(monkeypatch):
  # ops.conv2d's wide 3x3 layers go through winograd_conv on CPU (the
  # switch cpu_kernels.WINOGRAD), and XLA's convolution is out of the program.
  x = jnp.ones((2, 6, 6, 64))
  k = jnp.ones((3, 3, 64, 64))
  calls = []
  monkeypatch.setattr(cpu_kernels, 'winograd_conv', lambda *a, **kw: (
      calls.append(1) or jnp.zeros((2, 6, 6, 64))))
  compiled = lambda k: jax.jit(lambda a, b: ops.conv2d(a, b, 1, 1)).lower(
      x, k).compile().as_text()  # A new function each time: traced anew.
  assert 'convolution' not in compiled(k) and calls == [1]
  # Narrower than WINOGRAD_MIN_CHANNELS (toy nets), or switched off: XLA's.
  assert 'convolution' in compiled(k[..., :63]) and calls == [1]
  # A 5x5 layer (conv2): Winograd's F(4x4, 5x5) for its gradients only, from
  # 48 channels, in float32 only.
  x5, k5 = jnp.ones((2, 9, 9, 48)), jnp.ones((5, 5, 48, 48))
  monkeypatch.setattr(cpu_kernels, 'winograd_conv_grads', lambda *a, **kw: (
      calls.append(kw['wino'].r) or (jnp.zeros_like(a[2]),
                                     jnp.zeros_like(a[3]))))
  grads = lambda x, k: jax.jit(jax.grad(
      lambda a, b: jnp.sin(ops.conv2d(a, b, 1, 2)).sum(), argnums=(0, 1))
                               ).lower(x, k)
  grads(x5, k5)
  assert calls == [1, 5]
  grads(x5[..., :47], k5[:, :, :47])
  grads(x5.astype(jnp.bfloat16), k5.astype(jnp.bfloat16))
  assert calls == [1, 5]
  # conv1 (11x11, stride 4): its forward pass by F(2x2, 3x3) of its
  # space-to-depth form (48 input channels there), from 48 output channels.
  strided = []
  monkeypatch.setattr(cpu_kernels, 'winograd_conv', lambda *a, **kw: (
      strided.append(kw['stride']) or jnp.zeros((2, 8, 8, a[1].shape[3]))))
  x1, k1 = jnp.ones((2, 35, 35, 3)), jnp.ones((11, 11, 3, 48))
  forward1 = lambda k: jax.jit(lambda a, b: ops.conv2d(a, b, 4, 2)).lower(
      x1, k)
  forward1(k1)
  assert strided == [4]
  forward1(k1[..., :47])
  assert strided == [4]
  monkeypatch.setattr(cpu_kernels, 'WINOGRAD', False)
  assert 'convolution' in compiled(k)
  grads(x5, k5)
  forward1(k1)
  assert calls == [1, 5] and strided == [4]


def test_xla_cpu_options_take_dots_off_ynnpack(monkeypatch):
  # The steps' compiler options (cpu_kernels.XLA_CPU_OPTIONS): XLA:CPU's own
  # dots instead of its default YNNPACK fusions; an option this jaxlib lacks
  # is left out rather than failing every compile.
  a = jnp.ones((64, 64))
  compiled = lambda **kw: jax.jit(lambda v: jnp.tanh(v @ v), **kw).lower(
      a).compile().as_text()
  assert '__ynn_fusion' in compiled()
  assert '__ynn_fusion' not in compiled(
      compiler_options=cpu_kernels.compiler_options())
  monkeypatch.setattr(cpu_kernels, 'XLA_CPU_OPTIONS', dict(
      cpu_kernels.XLA_CPU_OPTIONS, xla_cpu_no_such_option=''))
  assert cpu_kernels.compiler_options() == {
      'xla_cpu_experimental_ynn_fusion_type': ''}


@pytest.mark.parametrize('stride,padding,chunk',
                         [(1, 2, 1), (1, 1, 2), (1, 0, 4), (4, 2, 2),
                          (4, 0, 6)])
def test_conv_gradients_match_xla_in_batch_chunks(monkeypatch, stride,
                                                  padding, chunk):
  # On CPU both gradients (and a strided forward) are matmuls over chunks of
  # the batch, sized by cpu_kernels.CHUNK_BYTES; shrink it so a batch of 6 is walked in
  # small steps (4 does not divide 6: the largest divisor below it, 3).
  rng = np.random.RandomState(8)
  x = jnp.asarray(rng.normal(size=(6, 13, 11, 3)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(5, 3, 3, 4)), jnp.float32)

  y = xla_conv(x, k, stride, padding)
  per_example = cpu_kernels.window_bytes(y.shape[1], y.shape[2], 5, 3,
                                         stride, 3)
  monkeypatch.setattr(cpu_kernels, 'CHUNK_BYTES', chunk * per_example)
  assert cpu_kernels.batch_chunk(6, per_example) == (3 if chunk == 4 else
                                                     chunk)
  np.testing.assert_allclose(jax.jit(ops.conv2d, static_argnums=(2, 3))(
      x, k, stride, padding), y, rtol=1e-4, atol=1e-4)
  g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
  got = jitted_grads(lambda v, kk: ops.conv2d(v, kk, stride, padding), g, x, k)
  want = jitted_grads(lambda v, kk: xla_conv(v, kk, stride, padding), g, x, k)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize('stride,padding,size', [(1, 2, 5), (4, 2, 5),
                                                 (1, 1, 3)])
def test_conv_bfloat16_gradients_keep_dtype(monkeypatch, stride, padding,
                                           size):
  # bfloat16 compute (model.dtype): the CPU matmul paths accumulate in
  # float32 and hand back bfloat16, close to the float32 gradients.
  monkeypatch.setattr(cpu_kernels, 'WINOGRAD_MIN_CHANNELS', {3: 1})
  rng = np.random.RandomState(9)
  x = jnp.asarray(rng.normal(size=(4, 19, 19, 3)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(size, size, 3, 4)), jnp.float32)

  @jax.jit
  def grads(v, kk):
    return jax.grad(lambda a, b: (jnp.sin(ops.conv2d(a, b, stride, padding))
                                  .astype(jnp.float32).sum()),
                    argnums=(0, 1))(v, kk)

  got = grads(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16))
  want = grads(x, k)
  for a, b in zip(got, want):
    assert a.dtype == jnp.bfloat16
    np.testing.assert_allclose(a.astype(jnp.float32), b, rtol=0.05,
                               atol=0.05 * float(jnp.abs(b).max()))


def test_custom_vjp_off_is_autodiff_of_the_same_ops():
  # model.custom_vjp=False: the same values and gradients, through autodiff
  # (XLA's select-and-scatter for pooling), kept for timing on accelerators.
  x = jnp.asarray(np.random.RandomState(4).normal(0, 30, (2, 9, 9, 8)),
                  jnp.float32)
  for fn in (lambda v, c: ops.local_response_norm(v, custom_vjp=c),
             lambda v, c: ops.max_pool(v, 3, 2, custom_vjp=c)):
    g = jnp.ones(jax.eval_shape(lambda v: fn(v, True), x).shape)
    on, = jitted_grads(lambda v: fn(v, True), g, x)
    off, = jitted_grads(lambda v: fn(v, False), g, x)
    np.testing.assert_allclose(on, off, rtol=1e-5, atol=1e-6)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    jax.ad_checkpoint.print_saved_residuals(
        lambda v: ops.max_pool(v, custom_vjp=False).sum(), x)
  assert 'int8' not in out.getvalue()  # Not the hand-written backward.
