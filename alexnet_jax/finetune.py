"""Fine-tuning: start a run from another run's (or an import's) weights.

`config.finetune.init_from` names a workdir or checkpoint. With `copy_model`
the new run adopts the source's model settings, image size and normalisation
(`source`), so its weights fit; layers in `reinit` start afresh and layers in
`freeze` are never updated (the optimiser zeroes them: optim.create).
"""

import os
from typing import Any, Dict, Optional, Sequence, Tuple

from absl import logging
import jax
import ml_collections
import numpy as np

from alexnet_jax import errors
from alexnet_jax import model as model_lib
from alexnet_jax import workdir as workdir_lib

# What a copied model keeps of the new run's settings: the initialisation (for
# re-initialised layers) and how to compute (dtype, matmul_precision), which do
# not change what the weights mean.
_OWN_MODEL_KEYS = ('init', 'dtype', 'matmul_precision')


def _refuse_unknown(named, layers):
  unknown = [l for l in named if l not in layers]
  if unknown:
    raise errors.ConfigError(
        f'finetune.reinit / finetune.freeze name unknown layer(s) {unknown}; '
        f'use {layers}.')


def source(config) -> Tuple[ml_collections.ConfigDict,
                             Optional[Dict[str, Any]]]:
  """Reads `finetune.init_from` and adopts its model (copy_model).

  Returns the run's config (a new one when the source's model is adopted;
  the caller's is left as it is) and None when training from scratch, else
  {'params', 'stats', 'path'}, the parameters on the host.
  """
  ft = config.finetune
  if not ft.init_from:
    return config, None
  named = tuple(ft.reinit) + tuple(ft.freeze)
  # Names no architecture has are refused before the source is read; the
  # adopted network's own layers are known once it is.
  _refuse_unknown(named, tuple(dict.fromkeys(
      l for a in model_lib.ARCHS.values() for l in a.layers)))
  try:
    workdir, step = workdir_lib.locate(ft.init_from)
    params, meta = workdir_lib.read_params(workdir, step,
                                           jax.devices('cpu')[0])
    saved = workdir_lib.saved_config(meta, f'{workdir} step {step}')
  except errors.UserError as e:
    raise errors.ConfigError(f'finetune.init_from: {e}') from e
  # The layers of the network that trains: the source's, when it is adopted.
  try:
    layers = model_lib.arch(saved.model if ft.copy_model else
                            config.model).layers
  except ValueError as e:
    raise errors.ConfigError(str(e)) from e
  _refuse_unknown(named, layers)
  output = layers[-1]  # The classifier: a new class count re-initialises it.
  stats = None
  if (ft.copy_model and output not in ft.reinit and
      saved.model.num_classes != config.model.num_classes):
    raise errors.ConfigError(
        f'finetune: {workdir} has {saved.model.num_classes} classes, '
        f'model.num_classes={config.model.num_classes}; add {output!r} to '
        'finetune.reinit for a new class count.')
  if ft.copy_model:
    config = config.copy_and_resolve_references()
    keep_classes = config.model.num_classes
    for key, value in saved.model.items():
      if key not in config.model or key in _OWN_MODEL_KEYS:
        continue
      if isinstance(config.model[key], ml_collections.ConfigDict):
        config.model[key].update(value.to_dict())
      else:  # JSON gave lists where the config holds tuples.
        config.model[key] = tuple(value) if isinstance(value, list) else value
    if output in ft.reinit:
      config.model.num_classes = keep_classes
    config.image_size = saved.image_size
    config.augment.mean = saved.augment.mean
    config.augment.scale = saved.augment.scale
    stats_path = os.path.join(workdir, workdir_lib.STATS_FILE)
    if os.path.exists(stats_path):
      try:
        stats = workdir_lib.read_stats(stats_path)
      except errors.UserError as e:
        raise errors.ConfigError(f'finetune.init_from: {e}') from e
  logging.info('Fine-tuning from %s (step %d): re-initialising %s, freezing '
               '%s.', workdir, step, list(ft.reinit) or 'nothing',
               list(ft.freeze) or 'nothing')
  return config, {'params': jax.device_get(params), 'stats': stats,
                  'path': workdir}


def params(reinit: Sequence[str], src, fresh, shardings):
  """The source's parameters, fresh ones for the layers in `reinit`."""
  out = {}
  for name, layer in fresh.items():
    if name in reinit:
      out[name] = layer
      continue
    theirs = src['params'].get(name)
    shapes = jax.tree.map(np.shape, theirs)
    if shapes != jax.tree.map(np.shape, layer):
      raise errors.ConfigError(
          f'finetune: layer {name} of {src["path"]} has shapes {shapes}, '
          f'this model {jax.tree.map(np.shape, layer)}; add {name!r} to '
          'finetune.reinit (e.g. fc8 for a new class count) or match the '
          'model.')
    out[name] = jax.device_put(theirs, shardings[name])
  return out
