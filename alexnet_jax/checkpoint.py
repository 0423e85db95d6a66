"""Checkpoints through orbax's CheckpointManager.

Each checkpoint holds the train state (parameters, optimiser state with its
learning rate, step) and a small JSON record (schedule state, input position,
the config), in `workdir/checkpoints/<step>/`. Writes are atomic (orbax writes
a temporary directory and renames it), so a crash mid-save leaves the earlier
checkpoints as they were; the newest `keep` are kept.

Restoring takes the newest checkpoint that reads back. One that does not
(truncated, partly deleted) is moved aside to `workdir/checkpoints_damaged/`
with a warning, never deleted, and the next older one is tried; if none can be
read, the run stops rather than silently starting from scratch.
"""

import dataclasses
import datetime
import logging as std_logging
import os
import shutil
from typing import Any, Dict, Optional, Tuple, TypedDict

from absl import logging
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy

from alexnet_jax import errors


CHECKPOINTS = 'checkpoints'  # Under the workdir (see workdir.py).
# The items of each checkpoint: the train state, and the JSON record.
STATE, META = 'state', 'meta'


class CheckpointError(errors.UserError):
  """Checkpoints that cannot be read or written."""


class Meta(TypedDict, total=False):
  """A checkpoint's JSON record (the META item), the one definition of its
  keys. Every key is optional when read: older checkpoints lack some."""
  config: Dict[str, Any]  # The run's resolved config (workdir.saved_config).
  schedule: Dict[str, Any]  # The learning-rate schedule's state (optim).
  epoch: float
  data_position: Dict[str, int]  # {'epoch', 'batch'}: where input resumes.
  store_fingerprint: Optional[str]  # The source the store was prepared from.
  store_content: Optional[str]  # Its content digest (image folders).
  reached_train_err: Optional[float]  # Set once a training target is met.
  imported: bool  # Written by `pretrained`: weights, no training yet.


def _fields(state: Any) -> Any:
  """A dataclass state as a dict of its fields that are not None, so that
  an optional field (the float16 loss scale) leaves checkpoints without it
  exactly as they were, and they restore either way."""
  if dataclasses.is_dataclass(state):
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)
            if getattr(state, f.name) is not None}
  return state


def _with_fields(target: Any, restored: Any) -> Any:
  if dataclasses.is_dataclass(target):
    return target.replace(**restored)
  return restored


class Checkpointer:
  """Saves and restores (train state, metadata) pairs under a workdir."""

  def __init__(self, workdir: str, keep: int = 3):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, CHECKPOINTS)
    options = ocp.CheckpointManagerOptions(
        preservation_policy=preservation_policy.LatestN(n=max(1, keep)),
        create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self):
    return sorted(self.manager.all_steps(), reverse=True)

  def save(self, step: int, state: Any, meta: Meta):
    """Starts an asynchronous save; errors name the fix."""
    # orbax skips a save while the previous one is still being written; wait
    # for it instead, so every requested checkpoint is written.
    self.wait()
    try:
      saved = self.manager.save(step, args=ocp.args.Composite(**{
          STATE: ocp.args.StandardSave(_fields(state)),
          META: ocp.args.JsonSave(meta)}),
                                force=True)
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(step, e) from e
    if not saved:
      raise CheckpointError(f'orbax declined to save checkpoint {step} in '
                            f'{self.directory}; please report this.')

  def wait(self):
    """Waits for pending saves; a failed one raises CheckpointError."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(None, e) from e

  def _write_error(self, step, e):
    what = 'a checkpoint' if step is None else f'checkpoint {step}'
    return CheckpointError(
        f'could not write {what} to {self.directory} ({type(e).__name__}: '
        f'{str(e).splitlines()[0] if str(e) else ""}); free disk space or '
        'make the --workdir writable, then rerun: earlier checkpoints are '
        'intact.')

  def read_meta(self, step: int) -> Meta:
    out = self.manager.restore(step, args=ocp.args.Composite(**{
        META: ocp.args.JsonRestore()}))
    return out[META]

  def restore(self, target: Any) -> Optional[Tuple[Any, Meta]]:
    """The newest readable checkpoint, onto `target`'s shapes and shardings.

    Returns None when there is no checkpoint at all.
    """
    steps = self.all_steps()
    if not steps:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _fields(target))
    failures = []
    for step in steps:
      try:
        out = self.manager.restore(step, args=ocp.args.Composite(**{
            STATE: ocp.args.StandardRestore(abstract),
            META: ocp.args.JsonRestore()}))
      except Exception as e:  # pylint: disable=broad-except
        reason = f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'
        logging.warning('Checkpoint %s/%d cannot be read (%s); trying an '
                        'older one.', self.directory, step, reason)
        failures.append((step, reason))
        continue
      for bad, _ in failures:
        self._move_aside(bad)
      logging.info('Restored checkpoint %s/%d', self.directory, step)
      return _with_fields(target, out[STATE]), out[META]
    raise CheckpointError(
        f'none of the checkpoints in {self.directory} can be read (steps '
        f'{[s for s, _ in failures]}; newest: {failures[0][1]}); nothing was '
        'changed. Move the directory aside to start from scratch, or repair it.')

  def _move_aside(self, step: int):
    """Keeps an unreadable checkpoint out of the way, without deleting it."""
    src = os.path.join(self.directory, str(step))
    stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    dst = os.path.join(self.workdir, 'checkpoints_damaged', f'{step}-{stamp}')
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.move(src, dst)
    logging.warning('Moved unreadable checkpoint %d to %s (not deleted).',
                    step, dst)
    self.manager.reload()

  def close(self):
    self.manager.close()


def read_params(step_dir: str, device=None):
  """(params, meta) of the checkpoint in `step_dir`, the parameters alone on
  `device` (default: the first device).

  Whatever mesh wrote it: shapes come from the checkpoint's own metadata,
  placement from here; the optimiser state is not read.
  """
  sharding = jax.sharding.SingleDeviceSharding(device or jax.devices()[0])
  # orbax warns that the step-level metadata is not inside state/: harmless.
  quiet = std_logging.getLogger('absl')
  level = quiet.level
  quiet.setLevel(std_logging.ERROR)
  try:
    meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
        os.path.join(step_dir, META))
    with ocp.PyTreeCheckpointer() as reader:
      saved = reader.metadata(os.path.join(step_dir, STATE)).item_metadata
      params = saved.tree['params'] if hasattr(saved, 'tree') else saved[
          'params']
      target = {'params': jax.tree.map(lambda m: jax.ShapeDtypeStruct(
          m.shape, m.dtype, sharding=sharding), params)}
      state = reader.restore(
          os.path.join(step_dir, STATE), args=ocp.args.PyTreeRestore(
              item=target,
              restore_args=ocp.checkpoint_utils.construct_restore_args(
                  target), partial_restore=True))
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f'cannot read checkpoint {step_dir} ('
                          f'{type(e).__name__}: '
                          f'{str(e).splitlines()[0][:200]}); pass another '
                          'checkpoint.') from e
  finally:
    quiet.setLevel(level)
  return state['params'], meta


def write_imported(workdir: str, state: Any,
                   run_config: Dict[str, Any]) -> str:
  """Checkpoint 0 of an imported network (`state`: its parameters and a
  fresh optimiser state; `run_config`: its config as a dict) in a workdir
  that holds none yet; its directory."""
  ckpt = Checkpointer(workdir, keep=1)
  try:
    if ckpt.all_steps():
      raise CheckpointError(f'{ckpt.directory} already holds checkpoints; '
                            'import into a new --workdir (nothing was '
                            'changed).')
    ckpt.save(0, state, Meta(config=run_config, imported=True, schedule={},
                             epoch=0.0, data_position={'epoch': 0, 'batch': 0}))
    ckpt.wait()
  finally:
    ckpt.close()
  return ckpt.directory
