"""The device mesh ('data', 'model') and how arrays are laid out on it.

`data` carries ordinary data parallelism: the batch is split over it and
gradients are summed over it. `model` carries the paper's split of the network
over two GPUs: every parameter has a leading tower axis, sharded over `model`.
With model=2 each device holds one tower and the towers talk through the
`all_gather`s in `AlexNet._connect`; with model=1 one device holds both towers
and the same code concatenates locally. Nothing else changes between meshes.
"""

from typing import Tuple

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

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


def create_mesh(data: int = -1, model: int = 1, devices=None) -> Mesh:
  """A ('data', 'model') mesh; -1 takes all remaining devices."""
  devices = jax.devices() if devices is None else devices
  data, model = mesh_shape(data, model, len(devices))
  return jax.make_mesh((data, model), (DATA, MODEL),
                       axis_types=(AxisType.Explicit, AxisType.Explicit),
                       devices=devices[:data * model])


def param_spec(mesh: Mesh, x) -> P:
  """A parameter's leading tower axis on `model`, replicated over `data`.

  With model=1 the parameters are simply replicated (the same layout), so the
  single-device-per-tower-group code needs no collective over `model` at all.
  Scalars (the optimiser's step count and learning rate) are replicated.
  """
  if mesh.shape[MODEL] > 1 and getattr(x, 'ndim', 0):
    return P(MODEL)
  return P()


def param_sharding(mesh: Mesh, tree):
  """NamedShardings for a tree of parameters (or a whole train state)."""
  return jax.tree.map(lambda x: NamedSharding(mesh, param_spec(mesh, x)), tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `data`, replicated over `model`."""
  return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
