"""The same training on every mesh shape (4 simulated CPU devices)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import input_pipeline
from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import parallel
from alexnet_jax import train
from tests.conftest import tiny_config

STEPS = 3


def STATS(size):  # pylint: disable=invalid-name
  eigvecs, _ = np.linalg.qr(np.arange(9.0).reshape(3, 3) + np.eye(3))
  return {'mean': jnp.full((size, size, 3), 100.0),
          'eigvals': jnp.array([0.2, 0.02, 0.005]),
          'eigvecs': jnp.asarray(eigvecs, jnp.float32)}


def run_steps(mesh_shape, config=None):
  config = config or tiny_config()
  config.eval_crops = 10
  config.augment.flip = True
  config.mesh.data, config.mesh.model = mesh_shape
  mesh = parallel.create_mesh(*mesh_shape)
  model = model_lib.create_model(config.model)
  tx, _ = optim.create(config, steps_per_epoch=10)
  steps = train.Steps(config, model, tx, mesh)
  state = steps.init_state(jax.random.key(0))
  rng = np.random.RandomState(0)
  size = config.image_size
  stats = jax.device_put(STATS(size), parallel.replicated(mesh))
  losses = []
  for _ in range(STEPS):
    batch = {'image': rng.randint(0, 256, (config.batch_size, size, size, 3),
                                  dtype=np.uint8),
             'label': rng.randint(0, 10, (config.batch_size,)).astype(np.int32)}
    state, metrics = steps.train_step(
        state, input_pipeline.to_global(batch, mesh), stats, jax.random.key(1))
    losses.append(float(metrics['loss']))
  eval_batch = dict(batch, mask=np.ones((config.batch_size,), np.float32))
  sums = steps.eval_step(state.params, input_pipeline.to_global(eval_batch,
                                                                mesh), stats)
  return losses, jax.device_get(state.params), jax.device_get(sums)


@pytest.fixture(scope='module')
def reference():
  return run_steps((1, 1))


@pytest.mark.parametrize('mesh_shape', [(1, 2), (2, 1), (2, 2)])
def test_mesh_shapes_train_identically(reference, mesh_shape):
  ref_losses, ref_params, ref_eval = reference
  losses, params, sums = run_steps(mesh_shape)
  np.testing.assert_allclose(losses, ref_losses, rtol=2e-5)
  assert ref_losses[0] != ref_losses[-1]  # Training actually moved.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-6),
               params, ref_params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5),
               sums, ref_eval)


def test_towers_live_on_separate_devices():
  config = tiny_config()
  mesh = parallel.create_mesh(2, 2)
  model = model_lib.create_model(config.model)
  tx, _ = optim.create(config, 10)
  state = train.Steps(config, model, tx, mesh).init_state(jax.random.key(0))
  kernel = state.params['conv1']['kernel']
  shards = {(s.device.id, s.index[0].start) for s in kernel.addressable_shards}
  assert len(shards) == 4
  assert {s.data.shape[0] for s in kernel.addressable_shards} == {1}


def zero_batch_setup(mesh_shape):
  """Steps, initial state, an all-zero batch and statistics on a mesh."""
  config = tiny_config()
  mesh = parallel.create_mesh(*mesh_shape)
  model = model_lib.create_model(config.model)
  tx, _ = optim.create(config, 10)
  steps = train.Steps(config, model, tx, mesh)
  state = steps.init_state(jax.random.key(0))
  s, b = config.image_size, config.batch_size
  batch = input_pipeline.to_global(
      {'image': np.zeros((b, s, s, 3), np.uint8),
       'label': np.zeros((b,), np.int32),
       'mask': np.ones((b,), np.float32)}, mesh)
  stats = jax.device_put(STATS(s), parallel.replicated(mesh))
  return steps, state, batch, stats


def test_model_axis_exchanges_only_at_paper_points():
  # Forward all-gathers: conv3 input, fc6, fc7, fc8 inputs and the logits.
  steps, state, batch, stats = zero_batch_setup((1, 2))
  hlo = steps.eval_step.lower(state.params, batch, stats).compile().as_text()
  gathers = [l for l in hlo.splitlines() if ' all-gather(' in l]
  assert len(gathers) == 5, '\n'.join(gathers)


def test_mesh_errors_name_the_fix():
  with pytest.raises(parallel.MeshError, match='xla_force_host_platform'):
    parallel.create_mesh(4, 2)
  with pytest.raises(parallel.MeshError, match='only one'):
    parallel.create_mesh(-1, -1)
  assert parallel.mesh_shape(-1, 2, 4) == (2, 2)
  assert parallel.mesh_shape(1, -1, 4) == (1, 4)


def test_single_tower_layout_refuses_model_axis():
  config = tiny_config()
  config.model.layout = 'single_tower'
  with pytest.raises(ValueError, match='mesh.model'):
    run_steps((1, 2), config)


def test_train_step_makes_no_hidden_transfers():
  # Parameters never go to the host per step, and nothing is copied implicitly:
  # inputs arrive as device arrays, metrics stay on the device until logged.
  steps, state, batch, stats = zero_batch_setup((2, 2))
  batch.pop('mask')
  mesh = steps.mesh
  key = jax.device_put(jax.random.key(1), parallel.replicated(mesh))
  state, _ = steps.train_step(state, batch, stats, key)  # Compile first.
  with jax.transfer_guard('disallow'):
    for _ in range(2):
      state, metrics = steps.train_step(state, batch, stats, key)
  assert isinstance(metrics['loss'], jax.Array)
  assert float(metrics['loss']) > 0
