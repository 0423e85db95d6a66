"""The train step as it would run on an accelerator, checked on this CPU.

The programs are inspected as lowered (StableHLO, `.lower(...).as_text()`),
not compiled: XLA:CPU's compiler upcasts bfloat16 collectives to float32,
which would hide a bfloat16 gradient all-reduce. Lowering for 'cuda' or
'tpu' needs neither the device nor its plugin.
"""

import collections
import functools
import re

import jax
import jax.numpy as jnp
import pytest

from alexnet_jax import synthetic
from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import parallel
from alexnet_jax import steps as steps_lib
from tests.helpers import tiny_config

NUM_CLASSES = 10  # fc8: 5 units per tower, a width no other layer has.


def _steps(mesh_shape, dtype='bfloat16', scheme='towers', precision=None):
  config = tiny_config()
  config.model.dtype = dtype
  config.model.num_classes = NUM_CLASSES
  if precision:
    config.model.matmul_precision = precision
  config.mesh.data, config.mesh.model = mesh_shape
  config.mesh.scheme = scheme
  mesh = parallel.create_mesh(*mesh_shape)
  model = model_lib.create_model(config.model)
  tx, _ = optim.create(config, steps_per_epoch=10)
  steps = steps_lib.create(config, model, tx, mesh)
  state = steps.abstract_state  # Real shardings; nothing is computed.
  batch = synthetic.batch(mesh, config.batch_size, config.image_size,
                          config.model.num_classes)
  stats = synthetic.stats(mesh, config.image_size)
  return steps, (state, batch, stats, jax.random.key(1))


@functools.lru_cache(maxsize=None)
def _traced(mesh_shape, **kwargs):
  steps, args = _steps(mesh_shape, **kwargs)
  return steps.train_step.trace(*args), len(jax.tree.leaves(args[0]))


def lowered_train_step(mesh_shape, platform=None, **kwargs) -> str:
  traced, _ = _traced(mesh_shape, **kwargs)
  lowered = (traced.lower(lowering_platforms=(platform,)) if platform
             else traced.lower())
  return lowered.as_text()


def _element_types(types: str):
  return tuple(re.findall(r'tensor<(?:[0-9]+x)*([a-z][a-z0-9]*)>', types))


def collectives(text):
  """(op, operand element types, replica groups) of every collective."""
  out = []
  for m in re.finditer(
      r'"stablehlo\.(all_reduce|reduce_scatter|all_gather|all_to_all)"'
      r'\(.*?\) <\{(.*?)\}>.*?: \((.*?)\) -> ', text, re.S):
    op, attrs, types = m.groups()
    groups = re.search(r'replica_groups = dense<(.*?)> :', attrs)
    out.append((op, _element_types(types), groups and groups.group(1)))
  return out


def products(text):
  """(op, operand element types, operand shapes) of every conv and dot."""
  out = []
  for m in re.finditer(r'stablehlo\.(dot_general|convolution)[^\n]*?'
                       r': \((tensor<[^)]*)\) -> ', text):
    out.append((m.group(1), _element_types(m.group(2)),
                re.findall(r'tensor<([0-9x]*)x[a-z]', m.group(2))))
  return out


SHORT = {'bfloat16': 'bf16', 'float16': 'f16'}


@pytest.mark.slow
@pytest.mark.parametrize('mesh_shape,scheme,platform,dtype', [
    ((4, 1), 'towers', None, 'bfloat16'), ((2, 2), 'towers', None, 'bfloat16'),
    ((2, 2), 'one_weird_trick', None, 'bfloat16'),
    ((4, 1), 'towers', 'cuda', 'bfloat16'), ((2, 2), 'towers', 'tpu', 'bfloat16'),
    ((2, 2), 'towers', None, 'float16'), ((4, 1), 'towers', 'cuda', 'float16'),
    ((2, 2), 'one_weird_trick', 'cuda', 'float16')])
def test_half_precision_gradients_are_all_reduced_in_float32(
    mesh_shape, scheme, platform, dtype):
  text = lowered_train_step(mesh_shape, platform, scheme=scheme, dtype=dtype)
  reduces = [c for c in collectives(text) if c[0] == 'all_reduce']
  # 16 parameter gradients (8 layers' kernels and biases) and 3 metrics.
  assert len(reduces) >= 19, collections.Counter(reduces)
  assert all(types == ('f32',) for _, types, _ in reduces), (
      collections.Counter(reduces))


@pytest.mark.slow
@pytest.mark.parametrize('platform,dtype', [
    (None, 'bfloat16'), ('cuda', 'bfloat16'), ('cuda', 'float16')])
def test_half_precision_convolutions_and_dots(platform, dtype):
  # On CPU the convolution gradients are dots (the CPU kernels); lowered for
  # a GPU they are XLA's transposed convolutions: half precision either way.
  half = (SHORT[dtype],) * 2
  prods = products(lowered_train_step((4, 1), platform, dtype=dtype))
  convs = [p for p in prods if p[0] == 'convolution']
  assert convs and all(t == half for _, t, _ in convs), convs
  # Every dot is half precision but fc8's backward pass, whose cotangent is
  # the float32 logits' (fc8 has 5 units per tower; no other layer does).
  dots = [p for p in prods if p[0] == 'dot_general']
  f32 = [p for p in dots if p[1] != half]
  assert len(dots) > len(f32) > 0
  assert all(any('5' in s.split('x') for s in shapes)
             for _, _, shapes in f32), f32


@pytest.mark.parametrize('dtype', ['bfloat16', 'float16'])
def test_half_precision_keeps_loss_params_and_optimizer_state_float32(dtype):
  steps, args = _steps((2, 1), dtype=dtype)
  state, metrics = steps.train_step.trace(*args).out_info
  floats = [x for x in jax.tree.leaves(state) if
            jnp.issubdtype(x.dtype, jnp.floating)]
  assert floats and all(x.dtype == jnp.float32 for x in floats)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(metrics))
  # float16 alone keeps a loss scale in the state (float32) and reports it.
  assert (state.loss_scale is not None) == (dtype == 'float16')
  assert ('loss_scale' in metrics) == (dtype == 'float16')
  # The logits are accumulated and returned in float32.
  model = steps.model
  params = args[0].params
  logits = jax.eval_shape(model.apply, {'params': params},
                          jnp.zeros((2, 64, 64, 3), model_lib.DTYPES[dtype]))
  assert logits.dtype == jnp.float32
  text = jax.jit(lambda p, x: model.apply({'params': p}, x)).lower(
      params, jnp.zeros((2, 64, 64, 3), jnp.float32)).as_text()
  fc8 = [l for l in text.splitlines() if 'stablehlo.dot_general' in l][-1]
  # Half-precision inputs, float32 accumulation and output.
  h = SHORT[dtype]
  assert re.search(rf': \(tensor<[0-9x]*{h}>, tensor<[0-9x]*{h}>\) -> '
                   r'tensor<[0-9x]*x5x[0-9x]*f32>$', fc8), fc8


@pytest.mark.parametrize('precision,expected', [
    ('default', 'DEFAULT'), ('highest', 'HIGHEST')])
def test_matmul_precision_reaches_every_product(precision, expected):
  text = lowered_train_step((1, 1), dtype='float32', precision=precision)
  configs = re.findall(r'precision(?:_config)? = \[([^\]]*)\]', text)
  # Every convolution and dot of the forward and backward passes.
  assert len(configs) >= 20
  assert all(c.count(expected) == 2 for c in configs), collections.Counter(
      configs)


def test_unknown_matmul_precision_is_refused():
  config = tiny_config()
  config.model.matmul_precision = 'tf32'
  with pytest.raises(ValueError, match='matmul_precision'):
    model_lib.create_model(config.model)


@pytest.mark.parametrize('platform', ['cuda', 'tpu'])
def test_accelerator_lowering_has_no_cpu_kernels(platform):
  text = lowered_train_step((2, 2), platform=platform)
  assert 'stablehlo.while' not in text  # The CPU kernels' batch loops.
  assert 'callback' not in text  # No host round trips.
  assert 'select_and_scatter' not in text  # The max-pool's hand-made VJP.
  # The whole state's buffers are donated: one alias per state leaf.
  donated = len(re.findall(r'tf\.aliasing_output = \d+|jax\.buffer_donor',
                           text))
  assert donated == _traced((2, 2))[1] > 0


def test_cpu_lowering_uses_the_cpu_kernels():
  # The same step lowered for this CPU: the chunked convolution gradients'
  # loops are there, so the choice above is made by the platform.
  assert 'stablehlo.while' in lowered_train_step((2, 2), platform='cpu')


def test_tests_keep_the_cpu_as_default_platform(monkeypatch):
  # With a GPU plugin installed the suite still builds its meshes from the
  # simulated CPU devices; the accelerator comes second (conftest.py).
  from tests import conftest  # pylint: disable=g-import-not-at-top
  assert jax.default_backend() == 'cpu' and len(jax.devices()) == 8
  monkeypatch.setattr(conftest, '_has_module', lambda name: False)
  assert conftest.platforms_for_tests({}) == 'cpu'
  assert conftest.platforms_for_tests({'JAX_PLATFORMS': 'cuda'}) == 'cuda'
  monkeypatch.setattr(conftest, '_has_module',
                      lambda name: name == 'jax_plugins.xla_cuda12')
  assert conftest.platforms_for_tests({}) == 'cpu,cuda'
