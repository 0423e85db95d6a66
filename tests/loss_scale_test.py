"""float16 with a dynamic loss scale: overflows skip the step, resume keeps it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import synthetic
from alexnet_jax import errors
from alexnet_jax import loss_scale as loss_scale_lib
from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import parallel
from alexnet_jax import steps as steps_lib
from alexnet_jax import train
from tests.helpers import assert_same_run
from tests.helpers import read_metrics
from tests.helpers import tiny_config


def test_scale_halves_on_overflow_and_doubles_after_period():
  s = loss_scale_lib.DynamicLossScale.create(8.0, period=2)
  seen = []
  for finite in (True, True, True, False, False, False, False, False):
    s = s.adjust(jnp.asarray(finite))
    seen.append((float(s.scale), int(s.good_steps)))
  # Doubled after 2 finite steps; halved on each overflow, never below 1.
  assert seen == [(8, 1), (16, 0), (16, 1), (8, 0), (4, 0), (2, 0), (1, 0),
                  (1, 0)]
  grads = {'w': jnp.full((3,), 4.0)}
  assert float(s.replace(scale=jnp.float32(4)).unscale(grads)['w'][0]) == 1.0
  with pytest.raises(ValueError, match='at least 1'):
    loss_scale_lib.DynamicLossScale.create(0.5)


def _float16_steps(initial, mesh_shape=(2, 1)):
  config = tiny_config()
  config.model.dtype = 'float16'
  config.loss_scale.initial = initial
  config.mesh.data, config.mesh.model = mesh_shape
  s = synthetic.setup(config, steps_per_epoch=10)
  return s.steps, s.state, s.batch, s.stats


@pytest.mark.parametrize('mesh_shape', [(2, 1), (1, 2)])
def test_an_overflow_skips_the_step_and_lowers_the_scale(mesh_shape):
  # 2**40 times the loss overflows float16's 65504 in the backward pass.
  steps, state, batch, stats = _float16_steps(2.0 ** 40, mesh_shape)
  before = jax.device_get(state)
  state, m = steps.train_step(state, batch, stats, jax.random.key(1))
  after, m = jax.device_get((state, m))
  assert m['skipped'] == 1 and m['grad_norm'] == 0
  assert m['loss_scale'] == 2.0 ** 40 and np.isfinite(m['loss'])
  assert after.loss_scale.scale == 2.0 ** 39 and after.step == 1
  jax.tree.map(np.testing.assert_array_equal,  # Nothing was applied.
               (before.params, before.opt_state),
               (after.params, after.opt_state))
  # At a scale that fits, the step is applied and the scale kept.
  steps, state, batch, stats = _float16_steps(2.0 ** 8, mesh_shape)
  before = jax.device_get(state.params)
  state, m = steps.train_step(state, batch, stats, jax.random.key(1))
  m = jax.device_get(m)
  assert m['skipped'] == 0 and m['grad_norm'] > 0
  assert float(state.loss_scale.scale) == 2.0 ** 8
  assert int(state.loss_scale.good_steps) == 1
  changed = jax.tree.map(lambda a, b: bool((a != b).any()), before,
                         jax.device_get(state.params))
  assert all(jax.tree.leaves(changed))


def test_float16_trains_like_float32():
  # The same first steps in float16 and float32: the same losses, to
  # float16's precision (the scale divides out).
  losses = {}
  for dtype in ('float32', 'float16'):
    config = tiny_config()
    config.model.dtype = dtype
    config.mesh.data = config.mesh.model = 1
    s = synthetic.setup(config, steps_per_epoch=10)
    steps, state, batch, stats = s.steps, s.state, s.batch, s.stats
    losses[dtype] = []
    for _ in range(3):
      state, m = steps.train_step(state, batch, stats, jax.random.key(1))
      losses[dtype].append(float(m['loss']))
  np.testing.assert_allclose(losses['float16'], losses['float32'], rtol=2e-2)
  assert losses['float16'][2] < losses['float16'][0]


def test_bad_loss_scale_is_refused_in_one_line():
  config = tiny_config()
  config.model.dtype = 'float16'
  config.loss_scale.period = 0
  model = model_lib.create_model(config.model)
  tx, _ = optim.create(config, steps_per_epoch=1)
  with pytest.raises(errors.ConfigError, match='period at least 1') as e:
    steps_lib.create(config, model, tx, parallel.create_mesh(1, 1))
  assert '\n' not in str(e.value)


@pytest.mark.slow
def test_float16_run_logs_skips_and_resumes_with_its_scale(digits_dir,
                                                           tmp_path):
  # A scale that overflows at first and grows every 2 steps: the run skips
  # steps, halves and doubles its scale, and a resumed run goes on from the
  # checkpoint's scale exactly as one that never stopped.
  config = tiny_config(digits_dir)
  config.model.dtype = 'float16'
  config.loss_scale.initial = 2.0 ** 20
  config.loss_scale.period = 2
  config.eval_every_epochs = 10.0
  config.checkpoint_every_steps = 4
  config.num_train_steps = 8
  straight = str(tmp_path / 'straight')
  train.train_and_evaluate(config, straight)
  records = [r for r in read_metrics(straight) if r['split'] == 'train']
  assert records[0]['skipped_steps'] >= 1, records
  # A window whose steps all overflowed has no loss (None), the others a
  # finite one, averaged over the steps applied.
  assert all((r['loss'] is None) == (r['grad_norm'] is None) for r in records)
  assert all(np.isfinite(r['loss']) for r in records if r['loss'] is not None)
  assert any(r['grad_norm'] for r in records), records  # Some applied.
  assert records[-1]['loss_scale'] < 2.0 ** 20
  resumed = str(tmp_path / 'resumed')
  config.num_train_steps = 4
  train.train_and_evaluate(config, resumed)
  config.num_train_steps = 8
  train.train_and_evaluate(config, resumed)
  assert_same_run(straight, resumed)
  again = [r for r in read_metrics(resumed) if r['split'] == 'train']
  assert [r['loss_scale'] for r in again] == [r['loss_scale'] for r in records]


def test_checkpoints_from_before_the_loss_scale_still_restore(tmp_path):
  # Written by the three-field train state of earlier versions: restored
  # into today's, with no loss scale; and their configs gain its defaults.
  from typing import Any  # pylint: disable=g-import-not-at-top
  from flax import struct  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from alexnet_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from alexnet_jax.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top

  @struct.dataclass
  class OldState:
    step: jax.Array
    params: Any
    opt_state: Any

  ckpt = Checkpointer(str(tmp_path))
  old = OldState(step=jnp.int32(3), params={'w': jnp.ones(2)},
                 opt_state={'m': jnp.full(2, 5.0)})
  ckpt.manager.save(3, args=ocp.args.Composite(
      state=ocp.args.StandardSave(old), meta=ocp.args.JsonSave({'a': 1})))
  ckpt.close()
  ckpt = Checkpointer(str(tmp_path))
  target = steps_lib.TrainState(step=jnp.int32(0), params={'w': jnp.zeros(2)},
                                opt_state={'m': jnp.zeros(2)})
  state, meta = ckpt.restore(target)
  ckpt.close()
  assert int(state.step) == 3 and state.loss_scale is None and meta == {'a': 1}
  np.testing.assert_array_equal(state.opt_state['m'], [5.0, 5.0])
  assert workdir_lib.LEGACY_DEFAULTS['loss_scale.initial'] == 2.0 ** 15
