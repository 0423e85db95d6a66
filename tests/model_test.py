"""The model's structure against the paper (Section 3.5 and Figure 2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import model as model_lib
from alexnet_jax import ops
from alexnet_jax import steps as steps_lib
from alexnet_jax.configs import default
from tests.helpers import tiny_config


def paper_model(**overrides):
  return model_lib.create_model(default.get_config().model, **overrides)


def test_paper_parameter_count_is_exact():
  shapes = model_lib.param_shapes(paper_model())
  assert model_lib.count_params(shapes) == 60_965_224


def test_every_layer_per_tower_matches_paper():
  shapes = jax.tree.map(lambda s: s.shape, model_lib.param_shapes(paper_model()))
  want = {
      'conv1': (2, 11, 11, 3, 48),    # 96 kernels 11x11x3, 48 per tower.
      'conv2': (2, 5, 5, 48, 128),    # 256 kernels 5x5x48: own tower only.
      'conv3': (2, 3, 3, 256, 192),   # 384 kernels 3x3x256: both towers.
      'conv4': (2, 3, 3, 192, 192),   # 384 kernels 3x3x192.
      'conv5': (2, 3, 3, 192, 128),   # 256 kernels 3x3x192.
      'fc6': (2, 6 * 6 * 256, 2048),  # 4096, reads all of pool5.
      'fc7': (2, 4096, 2048),
      'fc8': (2, 4096, 500),          # 1000-way.
  }
  for name, kernel in want.items():
    assert shapes[name]['kernel'] == kernel, name
    assert shapes[name]['bias'] == (2, kernel[-1]), name


@pytest.mark.parametrize('size', [224, 227])
def test_activation_sizes(size):
  net = paper_model(input_size=size)
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  params = model_lib.param_shapes(net)
  logits, feats = jax.eval_shape(
      lambda p, x: net.apply({'params': p}, x, capture=True), params, x)
  assert logits.shape == (2, 1000)
  assert feats['conv1'].shape == (2, 2, 55, 55, 48)
  assert feats['conv2'].shape == (2, 2, 27, 27, 128)
  assert feats['conv3'].shape == (2, 2, 13, 13, 192)
  assert feats['conv5'].shape == (2, 2, 13, 13, 128)
  assert feats['pool5'].shape == (2, 2, 6, 6, 128)
  assert feats['fc7'].shape == (2, 2, 2048)


def test_conv1_padding_follows_input_size():
  assert paper_model(input_size=224).padding1 == 2
  assert paper_model(input_size=227).padding1 == 0
  assert paper_model(input_size=227, conv1_padding=1).padding1 == 1


def test_layouts():
  half = jax.tree.map(lambda s: s.shape,
                      model_lib.param_shapes(paper_model(layout='one_tower_half')))
  # The paper's one-GPU net: half the kernels in conv1-4, conv5 and fc full.
  assert half['conv1']['kernel'] == (1, 11, 11, 3, 48)
  assert half['conv4']['kernel'] == (1, 3, 3, 192, 192)
  assert half['conv5']['kernel'] == (1, 3, 3, 192, 256)
  assert half['fc6']['kernel'] == (1, 9216, 4096)
  single = jax.tree.map(lambda s: s.shape,
                        model_lib.param_shapes(paper_model(layout='single_tower')))
  assert single['conv2']['kernel'] == (1, 5, 5, 96, 256)
  assert single['conv3']['kernel'] == (1, 3, 3, 256, 384)
  tv = model_lib.param_shapes(paper_model(
      layout='single_tower', conv_features=(64, 192, 384, 256, 256)))
  assert tv['conv1']['kernel'].shape == (1, 11, 11, 3, 64)
  with pytest.raises(ValueError, match='layout'):
    paper_model(layout='three_towers').towers  # pylint: disable=expression-not-assigned


def small(**kw):
  kw = dict(dict(num_classes=7, input_size=67, width=1 / 8, fc_features=64),
            **kw)
  return paper_model(**kw)


def init(net, seed=0):
  return model_lib.init_params(net, jax.random.key(seed))


@pytest.mark.slow
def test_run_once_unoptimised_on_cpu_matches_the_optimised_build():
  # Initialisations are compiled unoptimised on CPU (model.run_once): the
  # same draws as the optimised build, to the last bit or so.
  def draws(key):
    k1, k2 = jax.random.split(key)
    return (jax.nn.initializers.normal(0.01)(k1, (2, 11, 11, 3, 8)),
            jax.nn.initializers.he_normal()(k2, (64, 32)))

  fast = model_lib.run_once(jax.jit(draws), jax.random.key(3),
                            platform='cpu')
  slow = jax.jit(draws)(jax.random.key(3))
  for a, b in zip(fast, slow):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
    assert float(jnp.std(a)) > 0


@pytest.mark.slow
def test_paper_init():
  params = init(paper_model())
  for name in model_lib.CONV_LAYERS + model_lib.FC_LAYERS:
    k, b = np.asarray(params[name]['kernel']), np.asarray(params[name]['bias'])
    assert abs(k.std() - 0.01) < 0.001, name
    want_bias = 1.0 if name in ('conv2', 'conv4', 'conv5', 'fc6', 'fc7') else 0
    np.testing.assert_array_equal(b, want_bias)


@pytest.mark.slow
def test_caffe_and_he_init():
  caffe = init(small(init_scheme='caffe', width=1.0, fc_features=4096))
  assert float(caffe['conv2']['bias'][0, 0]) == pytest.approx(0.1)
  assert float(caffe['conv1']['bias'][0, 0]) == 0.0
  assert abs(float(caffe['fc6']['kernel'].std()) - 0.005) < 5e-4
  he = init(small(init_scheme='he', width=1.0))
  fan_in = 5 * 5 * 48
  assert abs(float(he['conv2']['kernel'].std()) - np.sqrt(2 / fan_in)) < 2e-3
  assert float(jnp.abs(he['fc6']['bias']).max()) == 0.0


@pytest.mark.slow
def test_odd_class_count_is_padded_then_sliced():
  net = small(num_classes=7)
  params = init(net)
  assert params['fc8']['kernel'].shape[-1] == 4
  assert net.apply({'params': params}, jnp.ones((3, 67, 67, 3))).shape == (3, 7)


@pytest.mark.slow
def test_dropout_only_in_training_and_per_example():
  net = small(init_scheme='he')
  params = init(net)
  x = jax.random.normal(jax.random.key(1), (4, 67, 67, 3))
  a = net.apply({'params': params}, x)
  b = net.apply({'params': params}, x)
  np.testing.assert_array_equal(a, b)
  rngs = {'dropout': jax.random.key(2)}
  t1 = net.apply({'params': params}, x, train=True, rngs=rngs)
  assert not np.allclose(t1, a)
  # Masks depend on the example's id, not its position in the batch.
  t2 = net.apply({'params': params}, x[2:], train=True, rngs=rngs,
                 example_ids=jnp.arange(2, 4))
  np.testing.assert_allclose(t1[2:], t2, rtol=1e-5, atol=1e-5)
  no_drop = small(init_scheme='he', dropout_rate=0.0)
  np.testing.assert_allclose(
      no_drop.apply({'params': params}, x, train=True, rngs=rngs), a,
      rtol=1e-6)


@pytest.mark.slow
def test_switches_change_the_function():
  params = init(small(init_scheme='he'))
  x = jax.random.normal(jax.random.key(1), (2, 67, 67, 3)) * 50
  base = small(init_scheme='he').apply({'params': params}, x)
  for kw in [dict(activation='tanh'), dict(lrn=ops.LRN(enabled=False)),
             dict(lrn=ops.LRN(k=1.0, alpha_over_n=True))]:
    out = small(init_scheme='he', **kw).apply({'params': params}, x)
    assert not np.allclose(out, base, rtol=1e-4), kw
  pooled = small(init_scheme='he', pool_window=2)
  assert pooled.apply({'params': init(pooled)}, x).shape == (2, 7)


def test_towers_only_talk_at_the_paper_points():
  # Perturbing tower 1's conv2 kernel must not change tower 0's conv2 output,
  # but must change tower 0's conv3 output (conv3 reads both towers).
  net = small(init_scheme='he')
  params = init(net)
  x = jax.random.normal(jax.random.key(3), (2, 67, 67, 3))
  _, f1 = net.apply({'params': params}, x, capture=True)
  p2 = jax.tree.map(lambda v: v, params)
  p2['conv2'] = dict(p2['conv2'],
                     kernel=p2['conv2']['kernel'].at[1].multiply(2.0))
  _, f2 = net.apply({'params': p2}, x, capture=True)
  np.testing.assert_array_equal(f1['conv2'][0], f2['conv2'][0])
  assert not np.allclose(f1['conv2'][1], f2['conv2'][1])
  assert not np.allclose(f1['conv3'][0], f2['conv3'][0])


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params():
  net = small(init_scheme='he', dtype=jnp.bfloat16)
  params = init(net)
  assert params['conv1']['kernel'].dtype == jnp.float32
  out = net.apply({'params': params}, jnp.ones((2, 67, 67, 3)))
  assert out.dtype == jnp.float32
  ref = small(init_scheme='he').apply({'params': params}, jnp.ones((2, 67, 67, 3)))
  np.testing.assert_allclose(out, ref, rtol=0.1, atol=0.1)


@pytest.mark.slow
def test_lrn_across_towers():
  # Caffe's bvlc_alexnet normalises across both towers' maps; the paper
  # within each. Only the channels near the towers' border differ.
  from alexnet_jax import errors, optim, parallel  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  model = model_lib.create_model(config.model)
  config.model.lrn.across_towers = True
  across = model_lib.create_model(config.model)
  x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3)) * 100
  params = init(model, seed=1)
  _, a = jax.jit(lambda p: model.apply({'params': p}, x, capture=True))(params)
  _, b = jax.jit(lambda p: across.apply({'params': p}, x,
                                        capture=True))(params)
  np.testing.assert_allclose(a['conv1'], b['conv1'])  # Before the first LRN.
  assert not np.allclose(a['conv2'], b['conv2'])
  tx, _ = optim.create(config, 10)
  with pytest.raises(errors.ConfigError, match='mesh.model=1'):
    steps_lib.create(config, across, tx, parallel.create_mesh(1, 2))


def figure1_model(**overrides):
  from alexnet_jax.configs import figure1_cifar10  # pylint: disable=g-import-not-at-top
  return model_lib.create_model(figure1_cifar10.get_config().model,
                                **overrides)


@pytest.mark.slow
def test_four_layer_cnn_is_cuda_convnets_19pct_net():
  net = figure1_model()
  shapes = jax.tree.map(lambda s: s.shape, model_lib.param_shapes(net))
  assert shapes == {
      'conv1': {'kernel': (5, 5, 3, 32), 'bias': (32,)},
      'conv2': {'kernel': (5, 5, 32, 32), 'bias': (32,)},
      'conv3': {'kernel': (5, 5, 32, 64), 'bias': (64,)},
      'fc': {'kernel': (4 * 4 * 64, 10), 'bias': (10,)}}
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  params = init(net, seed=1)
  logits, feats = net.apply({'params': params}, x, capture=True)
  assert logits.shape == (2, 10)
  # cuda-convnet's pooling sizes: 32 -> 16 -> 8 -> 4.
  assert [feats[k].shape[1:] for k in ('conv1', 'conv2', 'conv3')] == [
      (16, 16, 32), (8, 8, 32), (4, 4, 64)]
  # layers-19pct.cfg's initW: 1e-4 for conv1, 0.01 elsewhere; biases 0.
  assert abs(float(params['conv1']['kernel'].std()) - 1e-4) < 1e-5
  assert abs(float(params['conv3']['kernel'].std()) - 0.01) < 1e-3
  assert all(float(jnp.abs(params[k]['bias']).max()) == 0 for k in params)
  he = init(figure1_model(init_scheme='he'), seed=1)
  assert abs(float(he['conv2']['kernel'].std()) -
             np.sqrt(2 / (25 * 32))) < 0.01


def test_four_layer_cnn_average_pool_ignores_the_edge_pad():
  net = figure1_model(activation='relu')
  x = jnp.ones((1, 32, 32, 3))
  params = init(net, seed=1)
  # Weights that pass the input straight through: a constant image stays
  # constant through every pool only if the edge windows divide by the real
  # pixels (a padded zero would dim the last row and column).
  ident = lambda cin, cout: jnp.zeros((5, 5, cin, cout)).at[2, 2, 0, 0].set(1.)
  params = jax.tree.map(jnp.zeros_like, params)
  params['conv1']['kernel'] = ident(3, 32)
  params['conv2']['kernel'] = ident(32, 32)
  params['conv3']['kernel'] = ident(32, 64)
  _, feats = net.apply({'params': params}, x, capture=True)
  np.testing.assert_allclose(feats['conv3'][0, :, :, 0], 1.0, rtol=1e-6)


def test_four_layer_cnn_activation_switch_and_errors():
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  relu, tanh = figure1_model(), figure1_model(activation='tanh')
  params = init(relu, seed=1)
  a = relu.apply({'params': params}, x)
  b = tanh.apply({'params': params}, x)
  assert not np.allclose(a, b)
  from alexnet_jax.configs import figure1_cifar10  # pylint: disable=g-import-not-at-top
  config = figure1_cifar10.get_config().model
  config.init = 'caffe'
  with pytest.raises(ValueError, match='four-layer CNN'):
    model_lib.create_model(config)
  config.init, config.arch = 'paper', 'vgg'
  with pytest.raises(ValueError, match="model.arch='vgg' is unknown"):
    model_lib.create_model(config)


@pytest.mark.slow
def test_model_custom_vjp_switch_keeps_the_loss_and_gradients():
  config = tiny_config().model
  size = config.input_size
  x = jax.random.normal(jax.random.key(0), (2, size, size, 3)) * 50
  grads = []
  for custom in (True, False):
    config.custom_vjp = custom
    net = model_lib.create_model(config)
    assert net.custom_vjp == custom
    params = init(net, seed=1)
    grads.append(jax.grad(lambda p: net.apply({'params': p}, x).sum())(params))
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5)


@pytest.mark.parametrize('config_name', ['default', 'figure1_cifar10'])
def test_each_registry_entry_names_its_own_layers(config_name):
  # features and finetune ask the registry: its names are the parameters'
  # and the captured activations' own.
  import importlib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(
      f'alexnet_jax.configs.{config_name}').get_config()
  if config_name == 'default':
    config = tiny_config()
  entry = model_lib.arch(config.model)
  net = model_lib.create_model(config.model)
  images = model_lib.example_images(net)
  params = jax.eval_shape(net.init, jax.random.key(0), images)['params']
  # (eval_shape returns dicts with sorted keys.)
  assert sorted(params) == sorted(entry.layers)
  _, feats = jax.eval_shape(
      lambda p: net.apply({'params': p}, images, capture=True), params)
  assert sorted(feats) == sorted(entry.features + ('logits',))
  config.model.arch = 'vgg'
  with pytest.raises(ValueError, match="model.arch='vgg' is unknown"):
    model_lib.arch(config.model)
