"""Where the towers talk: every collective over the mesh's `model` axis.

The model calls these at the paper's "GPUs talk" points and knows nothing of
meshes; `parallel.Scheme` decides which `Comm` a device gets. Outside
`shard_map` (or with one device on the axis) every call is local: a
concatenate, or nothing.

  towers           `tower_axis`: the model axis holds whole towers, each
                   device `towers // tower_axis_size` of them.
  one_weird_trick  `fc_axis`: each device holds a slice of every fully
                   connected layer's units (when they divide evenly,
                   `units_split`) and computes it for the whole `fc_axis`
                   group's batch; the convolutions are data parallel.
"""

import dataclasses
from typing import Optional

from jax import lax

from alexnet_jax import ops


def units_split(units: int, axis_size: int) -> bool:
  """Whether a fully connected layer's `units` (per tower) are split over a
  model axis of `axis_size` devices (the one-weird-trick scheme).

  Only when they divide evenly: fc8 of a 10-class net on 4 devices stays
  whole and is computed, replicated, on each of them. `parallel.Scheme`
  places the parameters by the same rule.
  """
  return axis_size > 1 and units % axis_size == 0


@dataclasses.dataclass(frozen=True)
class Comm:
  """How this device's part of the network meets the others' (a hashable
  value, so a Flax module holds it as an attribute)."""
  tower_axis: Optional[str] = None
  tower_axis_size: int = 1
  fc_axis: Optional[str] = None
  fc_axis_size: int = 1

  @property
  def towers_spread(self) -> bool:
    return self.tower_axis is not None and self.tower_axis_size > 1

  @property
  def fc_parallel(self) -> bool:
    return self.fc_axis is not None and self.fc_axis_size > 1

  def local_towers(self, towers: int, layout: str) -> int:
    """The towers each device holds (the divisibility rule)."""
    if towers % self.tower_axis_size:
      raise ValueError(
          f'layout {layout!r} has {towers} tower(s), which cannot be spread '
          f'over a model axis of {self.tower_axis_size} devices; set '
          f'mesh.model to 1' + (' or 2.' if towers == 2 else '.'))
    return towers // self.tower_axis_size

  def tower_index(self, t: int, local_towers: int):
    """Global index of local tower t (for mesh-independent dropout masks)."""
    if self.towers_spread:
      return lax.axis_index(self.tower_axis) * local_towers + t
    return t

  def connect(self, x, replicated: bool = False):
    """Every tower's maps, merged on channels: where the paper's GPUs talk.

    `(local_towers, B, ..., C)` -> `(B, ..., towers * C)`. With the towers on
    different devices this is an `all_gather` over the model axis (its
    backward a reduce-scatter); with all towers here, a local concatenate.
    `replicated` (the logits) marks the result as identical on every device of
    the model axis, so the loss needs no further collective and the backward
    pass just slices the cotangent.
    """
    if self.towers_spread:
      x = lax.all_gather(x, self.tower_axis, axis=0, tiled=True,
                         to='invarying' if replicated else 'varying')
    return ops.merge_towers(x)

  def fc_units(self, units: int) -> int:
    """The units of a fully connected layer of `units` held here."""
    if self.fc_axis is not None and units_split(units, self.fc_axis_size):
      return units // self.fc_axis_size
    return units

  def gather_rows(self, x):
    """All of the `fc_axis` group's rows (one weird trick's fc input)."""
    if not self.fc_parallel:
      return x
    return lax.all_gather(x, self.fc_axis, axis=0, tiled=True)

  def gather_units(self, x, units: int):
    """A layer's `units` whole again, where they were split over `fc_axis`."""
    if self.fc_units(units) == units:
      return x
    return lax.all_gather(x, self.fc_axis, axis=x.ndim - 1, tiled=True)

  def own_rows(self, x, local_batch: int):
    """This device's rows of the `fc_axis` group's batch (back to data
    parallelism at the logits)."""
    if not self.fc_parallel:
      return x
    return lax.dynamic_slice_in_dim(
        x, lax.axis_index(self.fc_axis) * local_batch, local_batch)

  def logits(self, x, units: int, local_batch: int):
    """fc8's output as the loss reads it: every tower's, replicated over the
    model axis (towers), or, back to data parallelism, this device's rows
    of the group's whole logits (one weird trick)."""
    if self.fc_parallel:
      return self.own_rows(self.connect(self.gather_units(x, units)),
                           local_batch)
    return self.connect(x, replicated=True)

  def own_units(self, x, local: int):
    """This device's `local` units of a full-width array (a dropout mask)."""
    if x.shape[-1] == local:
      return x
    return lax.dynamic_slice_in_dim(
        x, lax.axis_index(self.fc_axis) * local, local, axis=-1)

