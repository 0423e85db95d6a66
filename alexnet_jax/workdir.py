"""A run's directory (`--workdir`): its layout, and every read and write of it.

  WORKDIR/
    config.json             the config the run started with (for people)
    checkpoints/STEP/       orbax: state/ (step, params, opt_state) and meta/
                            (config, LR schedule, input position)
    checkpoints_damaged/    unreadable checkpoints, moved aside, never deleted
    metrics.jsonl           one JSON record per line (metrics_log.MetricsLog)
    tensorboard/            the same scalars as event files
    profile/                jax.profiler traces (--config.profile_steps=A:B)
    stats.npz               the input statistics the weights were trained with
    classes.json            the dataset's class names
    writer.lock             its writer and heartbeat, while a run lives (writer_lock)

Training writes it; features, ensemble, viz and fine-tuning read it, all
through this module. A checkpoint's own config (in meta/) is the authority;
`saved_config` fills keys that configs written by older code lack.
"""

import json
import os
from typing import Any, Dict, List, Optional, Tuple

from absl import logging
import jax
import ml_collections
import numpy as np

from alexnet_jax import checkpoint
from alexnet_jax import errors
from alexnet_jax import metrics_log
from alexnet_jax.datasets import stats as stats_lib

CONFIG_FILE = 'config.json'
CHECKPOINTS = checkpoint.CHECKPOINTS
METRICS_FILE = metrics_log.METRICS_FILE
TENSORBOARD = metrics_log.TENSORBOARD
STATS_FILE = 'stats.npz'
CLASSES_FILE = 'classes.json'
PROFILE = 'profile'

# Config keys a resumed run may change; anything else would change the model,
# the data or the optimisation the checkpoint belongs to.
SAFE_TO_CHANGE = (
    'lr_override', 'num_epochs', 'num_train_steps', 'stop_at_train_err',
    'profile_steps',
    'eval_every_epochs',
    'log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints',
    'eval_batch_size', 'eval_crops', 'mesh.data', 'mesh.model', 'mesh.scheme',
    'distributed.coordinator_address', 'distributed.num_processes',
    'distributed.process_id', 'distributed.timeout_seconds', 'data_dir',
    'manual_dir', 'store.dir', 'store.check_source', 'input.workers', 'input.prefetch',
    'max_image_pixels', 'model.dtype', 'model.matmul_precision', 'model.custom_vjp',
    'finetune.init_from',
    # Retired keys (the input before the prepared store).
    'cache_resized', 'shuffle_buffer')

# Keys added to the config after checkpoints first recorded it, with the value
# that reproduces what the code did before the key existed. A saved config
# without one of them means this value.
LEGACY_DEFAULTS = {
    'model.custom_vjp': True,  # The only way, before the switch.
    'loss_scale.initial': 2.0 ** 15,  # float16 came later.
    'loss_scale.period': 2000,
    'augment.pca_lighting': 0.0,  # PCA lighting came later.
    'eval_crops': 1,  # The first evaluation was the centre crop.
    'model.arch': 'alexnet',
    'model.lrn.across_towers': False,
    'model.matmul_precision': 'default',
    'mesh.scheme': 'towers',
    'lr_scaling': 'none',
    'lr_reference_batch': 128,
    'max_image_pixels': 89_478_485,
    'finetune.init_from': None,
    'finetune.copy_model': True,
    'finetune.reinit': (),
    'finetune.freeze': (),
    'distributed.coordinator_address': None,
    'distributed.num_processes': -1,
    'distributed.process_id': -1,
    'distributed.timeout_seconds': 300,
    'input.workers': 0,
    'input.prefetch': 4,
    'store.format': 'raw',
    'store.jpeg_quality': 95,
    'store.file_bytes': 1 << 30,
    'store.dir': None,
}


class WorkdirError(errors.UserError):
  """A workdir or checkpoint that cannot be used as asked."""


def prepare(workdir: str, config, overwrite: bool = False):
  """Creates the workdir (refusing one we cannot write) and config.json
  (kept if there is one, unless `overwrite`)."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write_test.{jax.process_index()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise errors.not_writable(workdir, e) from e
  path = os.path.join(workdir, CONFIG_FILE)
  if jax.process_index() == 0 and (overwrite or not os.path.exists(path)):
    with open(path, 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def profile_dir(workdir: str) -> str:
  return os.path.join(workdir, PROFILE)


def save_stats(workdir: str, stats: stats_lib.Stats,
               overwrite: bool = False):
  """The input statistics beside the checkpoints, so the workdir alone is
  enough to use the network (kept if there are some, unless `overwrite`)."""
  path = os.path.join(workdir, STATS_FILE)
  if jax.process_index() == 0 and (overwrite or not os.path.exists(path)):
    tmp = path + '.tmp.npz'
    np.savez(tmp, **stats.arrays())
    os.replace(tmp, path)


def read_stats(path: str) -> stats_lib.Stats:
  """A stats.npz of plain arrays; never unpickles (files may come from
  elsewhere)."""
  try:
    with np.load(path, allow_pickle=False) as f:
      return stats_lib.Stats.from_arrays(f)
  except (ValueError, OSError, KeyError) as e:
    raise WorkdirError(
        f'{path} is not a numpy .npz of plain arrays ({str(e)[:120]}); it '
        'was not loaded. Copy stats.npz from the training run.') from e


def save_class_names(workdir: str, names, overwrite: bool = False):
  """The dataset's class names beside the checkpoints (for the figures)."""
  path = os.path.join(workdir, CLASSES_FILE)
  if jax.process_index() or (os.path.exists(path) and not overwrite):
    return
  if not names:  # A fresh run of unnamed classes keeps no stale names.
    if os.path.exists(path):
      os.remove(path)
    return
  with open(path + '.tmp', 'w') as f:
    json.dump(names, f)
  os.replace(path + '.tmp', path)


def saved_class_names(workdir: str) -> Optional[List[str]]:
  """The class names saved with the run, or None."""
  path = os.path.join(workdir, CLASSES_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def class_names(workdir: str, num_classes: int):
  """The dataset's class names saved with the run, else 'class i'."""
  names = saved_class_names(workdir)
  if names and len(names) == num_classes:
    return names
  return [f'class {i}' for i in range(num_classes)]


def locate(path: str) -> Tuple[str, int]:
  """(workdir, step) for a workdir (newest checkpoint) or one checkpoint."""
  path = os.path.abspath(path)
  ckpts = os.path.join(path, CHECKPOINTS)
  if os.path.isdir(ckpts):
    steps = [int(d) for d in os.listdir(ckpts) if d.isdigit() and
             os.path.isdir(os.path.join(ckpts, d, checkpoint.STATE))]
    if not steps:
      raise WorkdirError(f'{ckpts} holds no checkpoint yet; train first or '
                         'pass another workdir.')
    return path, max(steps)
  parent = os.path.dirname(path)
  if (os.path.isdir(os.path.join(path, checkpoint.STATE)) and
      os.path.basename(parent) == CHECKPOINTS and
      os.path.basename(path).isdigit()):
    return os.path.dirname(parent), int(os.path.basename(path))
  raise WorkdirError(
      f'{path} is neither a workdir (with checkpoints/) nor a checkpoint '
      '(WORKDIR/checkpoints/STEP); pass the --workdir of a training run or of '
      'a pretrained import.')


def read_params(workdir: str, step: int, device=None):
  """(params, meta) of one checkpoint, the parameters alone on `device`
  (checkpoint.read_params), whatever mesh wrote it."""
  try:
    return checkpoint.read_params(
        os.path.join(workdir, CHECKPOINTS, str(step)), device)
  except checkpoint.CheckpointError as e:
    raise WorkdirError(str(e)) from e


def _flatten(d, prefix=''):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def saved_config(meta: checkpoint.Meta,
                 where: str) -> ml_collections.ConfigDict:
  """A checkpoint's config, with LEGACY_DEFAULTS where older code had no key."""
  if 'config' not in meta:
    raise WorkdirError(f'{where} records no config; it was not written by '
                       'alexnet_jax.')
  config = ml_collections.ConfigDict(meta['config'])
  for key, value in LEGACY_DEFAULTS.items():
    *parents, leaf = key.split('.')
    node = config
    for p in parents:
      if p not in node:
        node[p] = ml_collections.ConfigDict()
      node = node[p]
    if leaf not in node:
      node[leaf] = value
  return config


def config_changes(saved: Dict[str, Any],
                   now: Dict[str, Any]) -> Dict[str, Tuple]:
  """{key: (saved, now)} for every key whose value differs between two
  configs as dicts (ConfigDict.to_dict)."""
  now = _flatten(json.loads(json.dumps(now)))
  before = _flatten(saved)
  return {k: (before.get(k), now.get(k)) for k in sorted(set(now) | set(before))
          if before.get(k) != now.get(k)}


def check_config_drift(ckpt: checkpoint.Checkpointer, now: Dict[str, Any]):
  """Refuses to resume a checkpoint under a config (`now`, as a dict) that
  changes what it is."""
  for step in ckpt.all_steps():
    try:
      saved = ckpt.read_meta(step).get('config')
    except Exception:  # pylint: disable=broad-except
      continue  # Unreadable: restore() deals with damaged checkpoints.
    if saved is None:
      return
    changes = config_changes(saved, now)
    known = _flatten(saved)
    legacy = json.loads(json.dumps(LEGACY_DEFAULTS))  # Tuples as JSON lists.
    # A key the checkpoint predates is fine at the value that keeps the old
    # behaviour.
    unsafe = {k: v for k, v in changes.items() if k not in SAFE_TO_CHANGE and
              not (k not in known and k in legacy and v[1] == legacy[k])}
    for k, (a, b) in changes.items():
      if k not in unsafe:
        logging.info('Resuming with %s changed: %r -> %r', k, a, b)
    if unsafe:
      listed = ', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in unsafe.items())
      raise errors.ConfigError(
          f'the checkpoints in {ckpt.directory} were made with a different '
          f'config ({listed}); use a new --workdir for a new run. A resumed '
          f'run may change only {", ".join(SAFE_TO_CHANGE)}.')
    return
