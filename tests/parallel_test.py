"""The same training on every mesh shape and scheme (8 simulated CPU devices).

Also checks the communication itself: the compiled steps exchange data between
towers at exactly the paper's points.
"""

import functools
import re

import jax
import numpy as np
import pytest

from alexnet_jax import input_pipeline
from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import parallel
from alexnet_jax import steps as steps_lib
from tests.helpers import STATS
from tests.helpers import run_steps
from tests.helpers import tiny_config


@functools.lru_cache(maxsize=None)
def reference(num_classes):
  return run_steps((1, 1), num_classes=num_classes)


# 12 classes: fc8 has 6 units per tower, split in halves over a model axis of
# 2 (one weird trick) but kept whole over 4.
@pytest.mark.parametrize('scheme,mesh_shape', [
    ('towers', (1, 2)),
    ('towers', (2, 1)),
    ('towers', (2, 2)),
    ('towers', (4, 2)),  # 8 devices: 4-way data x the paper's 2 towers.
    ('one_weird_trick', (1, 2)),  # Every fc layer's units split in two.
    ('one_weird_trick', (2, 4)),  # fc6, fc7 split in four; fc8 whole.
])
@pytest.mark.slow
def test_mesh_shapes_train_identically(scheme, mesh_shape):
  ref_losses, ref_params, ref_eval = reference(12)
  losses, params, sums = run_steps(mesh_shape, scheme=scheme, num_classes=12)
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
  state = steps_lib.create(config, model, tx, mesh).init_state(jax.random.key(0))
  kernel = state.params['conv1']['kernel']
  shards = {(s.device.id, s.index[0].start) for s in kernel.addressable_shards}
  assert len(shards) == 4
  assert {s.data.shape[0] for s in kernel.addressable_shards} == {1}


def zero_batch_setup(mesh_shape, scheme='towers'):
  """Steps, initial state, an all-zero batch and statistics on a mesh."""
  config = tiny_config()
  config.mesh.scheme = scheme
  mesh = parallel.create_mesh(*mesh_shape)
  model = model_lib.create_model(config.model)
  tx, _ = optim.create(config, 10)
  steps = steps_lib.create(config, model, tx, mesh)
  state = steps.init_state(jax.random.key(0))
  s, b = config.image_size, config.batch_size
  batch = input_pipeline.to_global(
      {'image': np.zeros((b, s, s, 3), np.uint8),
       'label': np.zeros((b,), np.int32),
       'mask': np.ones((b,), np.float32)}, mesh)
  stats = jax.device_put(STATS(s), parallel.replicated(mesh))
  return steps, state, batch, stats


COLLECTIVE = re.compile(r' (all-gather|all-reduce|reduce-scatter|all-to-all|'
                        r'collective-permute|collective-broadcast)(-start)?\(')


def replica_groups(line):
  """The device groups of one HLO collective, as a set of frozensets."""
  named = re.search(r"replica_groups=mesh\[([^\]]*)\], device_ids=\("
                    r"\[([\d,]+)\](T\(([\d,]+)\))?\) \{([^}]*)\}", line)
  if named:  # Named form: mesh[axes=sizes], device ids, reduced axes.
    axes = re.findall(r"'(\w+)'=(\d+)", named.group(1))
    dims = [int(d) for d in named.group(2).split(',')]
    ids = np.arange(np.prod(dims)).reshape(dims)
    if named.group(4):
      ids = ids.transpose([int(p) for p in named.group(4).split(',')])
    ids = ids.reshape([int(n) for _, n in axes])
    over = [i for i, (a, _) in enumerate(axes) if f"'{a}'" in named.group(5)]
    rest = [i for i in range(len(axes)) if i not in over]
    rows = ids.transpose(rest + over).reshape(
        -1, int(np.prod([ids.shape[i] for i in over])))
    return {frozenset(int(i) for i in r) for r in rows}
  text = re.search(r'replica_groups=(\S+?)(,\s|$)', line)
  if text is None:
    return None
  text = text.group(1)
  iota = re.fullmatch(r'\[(\d+),(\d+)\]<=\[([\d,]+)\](T\(([\d,]+)\))?', text)
  if iota:  # Compact form: [groups,size]<=[dims]T(perm).
    dims = [int(d) for d in iota.group(3).split(',')]
    ids = np.arange(np.prod(dims)).reshape(dims)
    if iota.group(5):
      ids = ids.transpose([int(p) for p in iota.group(5).split(',')])
    rows = ids.reshape(int(iota.group(1)), int(iota.group(2)))
  else:
    rows = [[int(i) for i in g.split(',') if i]
            for g in re.findall(r'\{([\d,]*)\}', text)]
  return {frozenset(int(i) for i in r) for r in rows}


def collectives(hlo, mesh):
  """{(axis name, op): count} for every collective in compiled HLO text."""
  ids = np.arange(mesh.devices.size).reshape(mesh.devices.shape)
  axes = {'model': {frozenset(r) for r in ids}, 'data': {frozenset(c) for c
                                                         in ids.T},
          'all': {frozenset(ids.ravel())}}
  counts = {}
  for line in hlo.splitlines():
    op = COLLECTIVE.search(line)
    if not op or '-done(' in line:
      continue
    groups = replica_groups(line)
    assert groups is not None, f'unparsed replica groups: {line[-300:]}'
    axis = next((a for a, g in axes.items() if groups == g), str(groups))
    if all(len(g) == 1 for g in groups):
      continue  # A group of one device moves nothing.
    key = (axis, op.group(1))
    counts[key] = counts.get(key, 0) + 1
  return counts


@pytest.mark.slow
def test_towers_exchange_only_at_paper_points():
  # The compiled train step on 2 x 2 devices. Across towers (`model`), the
  # forward all-gathers at the paper's five points (conv3's input, fc6, fc7
  # and fc8's inputs, the logits) and the backward reduce-scatters at the
  # four whose gradient flows back to the other tower (the logits are
  # replicated, so their backward is a slice). Over `data`: the gradient sum.
  # Beside them one all-reduce of scalars, the gradient norm's per-tower
  # partial sums (a metric: no activation or gradient crosses there).
  steps, state, batch, stats = zero_batch_setup((2, 2))
  batch.pop('mask')
  key = jax.random.key(1)
  hlo = steps.train_step.lower(state, batch, stats, key).compile().as_text()
  assert '__ynn_fusion' not in hlo  # cpu_kernels.XLA_CPU_OPTIONS
  counts = collectives(hlo, steps.mesh)
  model = {k: v for k, v in counts.items() if k[0] != 'data'}
  assert model == {('model', 'all-gather'): 5,
                   ('model', 'reduce-scatter'): 4,
                   ('model', 'all-reduce'): 1}, counts
  norm = [l for l in hlo.splitlines() if COLLECTIVE.search(l) and
          'all-reduce' in l and replica_groups(l) == {
              frozenset(r) for r in np.arange(4).reshape(2, 2)}]
  assert len(norm) == 1 and 'reduce_sum' in norm[0]
  shapes = norm[0].split(' = ', 1)[1].split(' all-reduce', 1)[0]
  assert set(re.findall(r'f32\[[\d,]*\]', shapes)) == {'f32[]'}, shapes
  assert set(counts) - set(model) == {('data', 'all-reduce')}, counts
  # Evaluation: the forward's five, nothing else across towers.
  eval_batch = dict(batch, mask=batch['label'].astype(np.float32) + 1)
  hlo = steps.eval_step.lower(state.params, eval_batch, stats,
                              crops=tiny_config().eval_crops
                              ).compile().as_text()
  assert '__ynn_fusion' not in hlo
  counts = collectives(hlo, steps.mesh)
  assert counts.get(('model', 'all-gather')) == 5, counts
  assert not [k for k in counts if k[0] == 'model' and k[1] != 'all-gather']


@pytest.mark.slow
def test_one_weird_trick_communication():
  # Convolutions data parallel: their gradients are summed over every
  # device. fc layers model parallel: the batch is gathered once before fc6
  # (with its example ids, for dropout), the units before fc7 and fc8; each
  # has a reduce-scatter in the backward pass.
  steps, state, batch, stats = zero_batch_setup((2, 2), 'one_weird_trick')
  batch.pop('mask')
  key = jax.random.key(1)
  hlo = steps.train_step.lower(state, batch, stats, key).compile().as_text()
  counts = collectives(hlo, steps.mesh)
  assert counts.get(('model', 'all-gather')) == 4, counts
  assert counts.get(('model', 'reduce-scatter')) == 3, counts
  assert ('all', 'all-reduce') in counts, counts


def test_mesh_errors_name_the_fix():
  with pytest.raises(parallel.MeshError, match='xla_force_host_platform'):
    parallel.create_mesh(4, 4)
  with pytest.raises(parallel.MeshError, match='only one'):
    parallel.create_mesh(-1, -1)
  assert parallel.mesh_shape(-1, 2, 4) == (2, 2)
  assert parallel.mesh_shape(1, -1, 4) == (1, 4)


def test_the_scheme_decides_the_batch_split_and_the_models_comm():
  from alexnet_jax import errors  # pylint: disable=g-import-not-at-top
  from alexnet_jax import four_layer_cnn  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  mesh = parallel.create_mesh(2, 2)
  towers = parallel.Scheme('towers', mesh)
  trick = parallel.Scheme('one_weird_trick', mesh)
  assert (towers.batch_spec, towers.batch_axes, towers.batch_shards) == (
      P('data'), ('data',), 2)
  assert (trick.batch_spec, trick.batch_axes, trick.batch_shards) == (
      P(('data', 'model')), ('data', 'model'), 4)
  net = model_lib.create_model(tiny_config().model)
  assert towers.shard_model(net).comm.tower_axis == 'model'
  assert towers.shard_model(net).local_towers == 1
  assert trick.shard_model(net).comm.fc_axis_size == 2
  assert parallel.Scheme('towers', parallel.create_mesh(4, 1)).shard_model(
      net) is net
  with pytest.raises(errors.ConfigError, match='data parallel only'):
    towers.shard_model(four_layer_cnn.FourLayerCNN(num_classes=10))
  with pytest.raises(parallel.MeshError, match='unknown'):
    parallel.Scheme('pipeline', mesh)
  # Placement: the tower axis on `model`, or an fc layer's units (only when
  # they divide evenly), scalars replicated.
  kernel = np.zeros((2, 8, 6))
  path = (jax.tree_util.DictKey('fc8'), jax.tree_util.DictKey('kernel'))
  assert towers.param_spec(kernel, path, net.fc_layers) == P('model')
  assert trick.param_spec(kernel, path, net.fc_layers) == P(None, None,
                                                             'model')
  assert trick.param_spec(np.zeros((2, 8, 5)), path, net.fc_layers) == P()
  assert trick.param_spec(kernel, path, ()) == P()
  assert towers.param_spec(np.zeros(()), path, net.fc_layers) == P()
  assert net.fc_layers == ('fc6', 'fc7', 'fc8')


def test_single_tower_layout_refuses_model_axis():
  config = tiny_config()
  config.model.layout = 'single_tower'
  with pytest.raises(ValueError, match='mesh.model'):
    run_steps((1, 2), config)


@pytest.mark.slow
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


def test_distributed_settings(monkeypatch):
  config = tiny_config()
  for var in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID',
              'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_STEP_NUM_TASKS'):
    monkeypatch.delenv(var, raising=False)
  assert not parallel.initialize_distributed(config.distributed)  # One process.
  # A SLURM batch script (not a step run by srun) is one process too.
  monkeypatch.setenv('SLURM_NTASKS', '8')
  assert not parallel.initialize_distributed(config.distributed)
  config.distributed.coordinator_address = 'localhost:1234'
  with pytest.raises(parallel.MeshError, match='num_processes'):
    parallel.initialize_distributed(config.distributed)
  config.distributed.num_processes = 2
  config.distributed.process_id = 2
  with pytest.raises(parallel.MeshError, match='below'):
    parallel.initialize_distributed(config.distributed)
  monkeypatch.setenv('JAX_PROCESS_ID', '5')  # The config wins.
  config.distributed.process_id = 7
  with pytest.raises(parallel.MeshError, match='process_id=7'):
    parallel.initialize_distributed(config.distributed)


def test_a_batch_that_does_not_split_over_the_shards_is_refused():
  from alexnet_jax import errors  # pylint: disable=g-import-not-at-top
  mesh = parallel.create_mesh(2, 2)
  parallel.Scheme('towers', mesh).check_batches(batch_size=6,
                                                eval_batch_size=6)
  # one_weird_trick: over all 4 devices.
  with pytest.raises(errors.ConfigError, match='batch_size=6 .* multiple of 4'):
    parallel.Scheme('one_weird_trick', mesh).check_batches(batch_size=8,
                                                           eval_batch_size=6)
