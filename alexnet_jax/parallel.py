"""The device mesh ('data', 'model') and how arrays are laid out on it.

`data` carries ordinary data parallelism: the batch is split over it and
gradients are summed over it. `model` carries the paper's split of the network
over two GPUs: every parameter has a leading tower axis, sharded over `model`.
With model=2 each device holds one tower and the towers talk through the
`all_gather`s of `comm.Comm.connect`; with model=1 one device holds both
towers and the same code concatenates locally. Nothing else changes between
meshes.

`mesh.scheme='one_weird_trick'` uses the `model` axis the way Krizhevsky (2014)
did instead: the convolutional layers data parallel over every device, the
fully connected layers' units split over `model`. `Scheme` is the one place
that decides what a scheme means.
"""

import contextlib
import dataclasses
import math
import os
from typing import Sequence, Tuple

from absl import logging
import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

import numpy as np

from alexnet_jax import comm as comm_lib
from alexnet_jax import errors

DATA, MODEL = 'data', 'model'


class MeshError(errors.UserError):
  """A mesh that cannot be built on the devices at hand."""


def mesh_shape(data: int, model: int, num_devices: int) -> Tuple[int, int]:
  """Resolves -1 entries of (data, model) against the device count."""
  if data == 0 or model == 0 or data < -1 or model < -1:
    raise MeshError(f'mesh.data={data}, mesh.model={model}: use positive '
                    'sizes or -1 for "all remaining devices".')
  if data == -1 and model == -1:
    raise MeshError('only one of mesh.data and mesh.model may be -1.')
  if model == -1:
    model = num_devices // data if data else 0
  if data == -1:
    data = num_devices // model
  if data < 1 or model < 1 or data * model > num_devices:
    raise MeshError(
        f'mesh {data} x {model} (data x model) needs {max(data, 1) * model} '
        f'devices but {num_devices} exist; lower mesh.data / mesh.model, or on '
        'CPU simulate devices with XLA_FLAGS=--xla_force_host_platform_'
        'device_count=N (set before jax is imported).')
  return data, model


def initialize_distributed(distributed=None) -> bool:
  """Joins a multi-process run when one is configured (before any jax use).

  The coordinator address, process count and process id come from
  `distributed` (a run's config.distributed), else from
  JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID, else from
  SLURM (`srun` sets SLURM_NTASKS, SLURM_PROCID, ...: jax.distributed finds
  them itself). Returns True when
  this is one process of several; False for an ordinary one-process run.
  """
  cfg = distributed or {}
  address = (cfg.get('coordinator_address') or
             os.environ.get('JAX_COORDINATOR_ADDRESS'))
  count = cfg.get('num_processes', -1)
  if count is None or count < 0:
    count = int(os.environ.get('JAX_NUM_PROCESSES', -1))
  index = cfg.get('process_id', -1)
  if index is None or index < 0:
    index = int(os.environ.get('JAX_PROCESS_ID', -1))
  # Under `srun` (a job step), not in the batch script that calls it.
  slurm = ('SLURM_STEP_NODELIST' in os.environ and int(os.environ.get(
      'SLURM_STEP_NUM_TASKS', os.environ.get('SLURM_NTASKS', '1'))) > 1)
  if not address and not slurm and count <= 1:
    return False
  if count == 1:
    return False
  if not slurm and (not address or count < 1 or index < 0):
    raise MeshError(
        'a multi-process run needs distributed.coordinator_address '
        '(host:port of process 0), distributed.num_processes and '
        'distributed.process_id (or JAX_COORDINATOR_ADDRESS, '
        'JAX_NUM_PROCESSES and JAX_PROCESS_ID, or a SLURM srun); got '
        f'address={address!r}, num_processes={count}, process_id={index}.')
  if index >= count > 0:
    raise MeshError(f'distributed.process_id={index} must be below '
                    f'distributed.num_processes={count}.')
  try:
    jax.distributed.initialize(
        coordinator_address=address or None,
        num_processes=count if count > 0 else None,
        process_id=index if index >= 0 else None,
        initialization_timeout=int(cfg.get('timeout_seconds', 300)))
  except (RuntimeError, ValueError) as e:
    raise MeshError(
        f'could not join the multi-process run at {address!r} as process '
        f'{index} of {count} ({str(e).splitlines()[0][:200]}); start every '
        'process with the same address and count, and process 0 first.'
    ) from e
  logging.info('Process %d of %d: %d local device(s), %d in all.',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True


def peak_memory_gb(devices) -> float:
  """The largest peak bytes in use over `devices`, in GB; None where the
  backend keeps no such count (CPU). The process's peak so far."""
  peaks = []
  for device in devices:
    try:
      stats = device.memory_stats()
    except (AttributeError, NotImplementedError, RuntimeError):
      stats = None
    if stats and 'peak_bytes_in_use' in stats:
      peaks.append(stats['peak_bytes_in_use'])
  return max(peaks) / 1e9 if peaks else None


@contextlib.contextmanager
def process_zero_first(name: str):
  """Process 0 runs the block first (e.g. preparing a dataset), then the rest.

  Keeps several processes from writing the same files at once. If process
  0's block fails, the others raise its one-line error too, at once, rather
  than waiting for the coordinator's timeout.
  """
  if jax.process_count() == 1:
    yield
    return
  if jax.process_index() != 0:
    failure = _process_zero_verdict('')
    if failure:
      raise errors.UserError(failure)
    yield
    return
  try:
    yield
  except errors.UserError as e:
    _process_zero_verdict(str(e) or type(e).__name__)
    raise
  except BaseException as e:
    _process_zero_verdict(f'process 0 failed in {name} ({type(e).__name__}: '
                          f'{str(e).splitlines()[0] if str(e) else ""}); '
                          "see process 0's log.")
    raise
  _process_zero_verdict('')


_VERDICT_BYTES = 1024


def _process_zero_verdict(message: str) -> str:
  """Process 0's message ('' for success), received by every process."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  data = message.encode()[:_VERDICT_BYTES].ljust(_VERDICT_BYTES, b'\0')
  got = multihost_utils.broadcast_one_to_all(np.frombuffer(data, np.uint8))
  return bytes(np.asarray(got, np.uint8)).rstrip(b'\0').decode(
      errors='replace')


def process_rows(mesh: Mesh, global_batch: int) -> Tuple[int, int]:
  """The rows [start, stop) of every global batch this process feeds.

  Under batch_sharding: a contiguous block when the model axis lies within a
  process; all rows of its data shard when the towers span processes.
  """
  indices = batch_sharding(mesh).addressable_devices_indices_map(
      (global_batch,))
  starts = [i[0].start or 0 for i in indices.values()]
  stops = [global_batch if i[0].stop is None else i[0].stop
           for i in indices.values()]
  start, stop = min(starts), max(stops)
  covered = np.zeros(global_batch, bool)
  for a, b in zip(starts, stops):
    covered[a:b] = True
  if not covered[start:stop].all():
    raise MeshError('this process\'s devices do not hold one contiguous block '
                    'of the batch; order the devices by process (the '
                    'default jax.devices() order does).')
  return start, stop


def create_mesh(data: int = -1, model: int = 1, devices=None) -> Mesh:
  """A ('data', 'model') mesh; -1 takes all remaining devices."""
  devices = jax.devices() if devices is None else devices
  data, model = mesh_shape(data, model, len(devices))
  return jax.make_mesh((data, model), (DATA, MODEL),
                       axis_types=(AxisType.Explicit, AxisType.Explicit),
                       devices=devices[:data * model])


SCHEMES = ('towers', 'one_weird_trick')


def check_scheme(scheme: str):
  if scheme not in SCHEMES:
    raise MeshError(f'mesh.scheme={scheme!r} is unknown; use one of {SCHEMES}.')


def _names(path):
  return [getattr(k, 'key', getattr(k, 'name', None)) for k in path]


@dataclasses.dataclass(frozen=True)
class Scheme:
  """What a parallel scheme means on a mesh, decided here and nowhere else:
  how a batch is split, how the model is sharded (its `comm.Comm`), and
  where each parameter lives.

  towers: the paper's. A batch is split over `data`; every device of a
    model group sees the group's images, and the model axis holds whole
    towers (parameters' leading tower axis on `model`). With model=1 the
    parameters are simply replicated (the same layout), so the code needs no
    collective over `model` at all.
  one_weird_trick: Krizhevsky (2014). A batch is split over every device (the
    convolutions are data parallel over the whole mesh, their parameters
    replicated); a fully connected layer's units (its last axis) are split
    over `model` when `comm.units_split` says so (the model computes by the
    same rule).
  Scalars (the optimiser's step count and learning rate) are replicated.
  """
  name: str
  mesh: Mesh

  def __post_init__(self):
    check_scheme(self.name)

  @property
  def model_size(self) -> int:
    return self.mesh.shape[MODEL]

  @property
  def batch_axes(self) -> Tuple[str, ...]:
    """The axes a batch is split over (gradients and metrics sum over them):
    `data` (towers: every device of a model group sees the group's images),
    or every axis (one weird trick: the convolutions are data parallel)."""
    return (DATA,) if self.name == 'towers' else (DATA, MODEL)

  @property
  def batch_spec(self) -> P:
    """How the steps split a batch inside shard_map."""
    axes = self.batch_axes
    return P(axes[0]) if len(axes) == 1 else P(axes)

  @property
  def batch_shards(self) -> int:
    """How many pieces a global batch is split into."""
    return int(np.prod([self.mesh.shape[a] for a in self.batch_axes]))

  def check_batches(self, **sizes: int):
    """Raises ConfigError (naming the fix) for a global batch size, given as
    {its config name: size}, that the batch shards and the processes cannot
    split evenly."""
    shards = math.lcm(self.batch_shards, jax.process_count())
    for name, size in sizes.items():
      if size % shards:
        raise errors.ConfigError(
            f'{name}={size} cannot be split evenly over the mesh\'s batch '
            f'shards ({shards}); use a multiple of {shards}.')

  def split(self, *arrays):
    """Batch arrays (laid out by batch_sharding) as the steps split them."""
    if self.batch_spec == P(DATA):
      return arrays
    sharding = NamedSharding(self.mesh, self.batch_spec)
    return tuple(jax.reshard(a, sharding) for a in arrays)

  def shard_index(self):
    """Inside shard_map: this device's index among the batch shards
    (row-major over the batch axes), for mesh-independent example ids."""
    index = 0
    for axis in self.batch_axes:
      index = index * self.mesh.shape[axis] + jax.lax.axis_index(axis)
    return index

  def shard_model(self, model):
    """The model as each device runs it inside shard_map: its `comm` set.

    A model without a `comm` attribute (the four-layer CNN) runs data
    parallel only.
    """
    size = self.model_size
    if size == 1:
      return model
    if not hasattr(model, 'comm'):
      raise errors.ConfigError(
          f'{type(model).__name__} (model.arch) runs data parallel only: '
          'set mesh.model=1.')
    if self.name == 'one_weird_trick':
      return model.clone(comm=comm_lib.Comm(fc_axis=MODEL, fc_axis_size=size))
    if model.lrn.across_towers and model.towers > 1:
      raise errors.ConfigError(
          'model.lrn.across_towers needs both towers on one device: set '
          "mesh.model=1 or mesh.scheme='one_weird_trick'.")
    # Each device holds towers // mesh.model towers.
    sharded = model.clone(comm=comm_lib.Comm(tower_axis=MODEL,
                                             tower_axis_size=size))
    try:
      sharded.local_towers  # pylint: disable=pointless-statement
    except ValueError as e:
      raise errors.ConfigError(str(e)) from e
    return sharded

  def param_spec(self, x, path, fc_layers: Sequence[str]) -> P:
    """Where one parameter (or optimiser-state leaf) lives on the mesh;
    `fc_layers`: the names of the model's fully connected layers."""
    if self.model_size == 1 or not getattr(x, 'ndim', 0):
      return P()
    if self.name == 'towers':
      return P(MODEL)
    if (any(n in fc_layers for n in _names(path)) and
        comm_lib.units_split(x.shape[-1], self.model_size)):
      return P(*([None] * (x.ndim - 1) + [MODEL]))
    return P()

  def param_specs(self, tree, fc_layers: Sequence[str]):
    """PartitionSpecs for a tree of parameters (or a whole train state)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: self.param_spec(x, path, fc_layers), tree)

  def param_sharding(self, tree, fc_layers: Sequence[str]):
    """NamedShardings for a tree of parameters (or a whole train state)."""
    return jax.tree.map(lambda spec: NamedSharding(self.mesh, spec),
                        self.param_specs(tree, fc_layers),
                        is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `data`, replicated over `model`."""
  return NamedSharding(mesh, P(DATA))


def vary(tree, axes):
  """Inside shard_map: marks each leaf as varying over `axes`.

  For parameters replicated over the batch axes, this is where their
  gradients are summed over those axes (the cast's transpose is a psum), in
  the leaf's own dtype.
  """
  def cast(x):
    missing = tuple(a for a in axes
                    if a not in jax.typeof(x).manual_axis_type.varying)
    return jax.lax.pcast(x, missing, to='varying') if missing else x
  return jax.tree.map(cast, tree)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
