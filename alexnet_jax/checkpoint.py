"""Checkpoints through orbax's CheckpointManager.

Each checkpoint holds the train state (parameters, optimiser state with its
learning rate, step) and a small JSON record (schedule state, epoch, the
config), in `workdir/checkpoints/<step>/`. Writes are atomic (orbax writes a
temporary directory and renames it), so a crash mid-save leaves the earlier
checkpoints as they were; the newest `keep` are kept.
"""

import os
from typing import Any, Dict, Optional, Tuple

from absl import logging
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy


class Checkpointer:
  """Saves and restores (train state, metadata) pairs under a workdir."""

  def __init__(self, workdir: str, keep: int = 3):
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=preservation_policy.LatestN(n=max(1, keep)),
        create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, meta: Dict[str, Any]):
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                      force=True)

  def restore(self, target: Any,
              step: Optional[int] = None) -> Optional[Tuple[Any, Dict]]:
    """Restores onto `target`'s structure, shapes and shardings.

    Returns None when there is no checkpoint.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    logging.info('Restored checkpoint %s/%d', self.directory, step)
    return out['state'], out['meta']

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()
