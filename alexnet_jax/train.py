"""Train state, the sharded train / eval steps, and `train_and_evaluate`.

The forward pass (augmentation, model, loss) runs under `jax.shard_map` over the
('data', 'model') mesh; gradients are taken through it, so JAX inserts the
transposed collectives (sums over `data`, and over `model` where the towers
talk) itself. The optimiser update then runs under the same `jit` on the
sharded parameters, with the state's buffers donated.
"""

import contextlib
import functools
import json
import math
import os
import signal
import threading
import time
from typing import Any, Dict, Optional, Tuple

from absl import logging
import flax
from flax import struct
import jax
from jax.sharding import PartitionSpec as P
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from alexnet_jax import augment
from alexnet_jax import checkpoint
from alexnet_jax import errors
from alexnet_jax import input_pipeline
from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import parallel
from alexnet_jax.datasets import stats as stats_lib
from alexnet_jax.datasets import store as store_lib
from alexnet_jax.parallel import DATA, MODEL
from configs import default as default_config


@struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def validate_config(config: ml_collections.ConfigDict):
  """Raises ConfigError (one line naming the fix) for impossible values."""
  def need(ok, msg):
    if not ok:
      raise errors.ConfigError(msg)
  need(config.batch_size > 0, f'batch_size={config.batch_size} must be > 0.')
  need(config.eval_batch_size > 0,
       f'eval_batch_size={config.eval_batch_size} must be > 0.')
  need(config.learning_rate > 0,
       f'learning_rate={config.learning_rate} must be > 0 (paper: 0.01).')
  need(config.num_epochs > 0 or config.num_train_steps > 0,
       'set num_epochs > 0 or num_train_steps > 0.')
  need(config.eval_every_epochs > 0,
       f'eval_every_epochs={config.eval_every_epochs} must be > 0.')
  need(config.log_every_steps > 0 and config.checkpoint_every_steps > 0,
       'log_every_steps and checkpoint_every_steps must be > 0.')
  need(0 <= config.model.dropout_rate < 1,
       f'model.dropout_rate={config.model.dropout_rate} must be in [0, 1).')
  need(config.model.num_classes > 0, 'model.num_classes must be > 0.')
  need(config.model.width > 0, 'model.width must be > 0.')
  need(config.augment.mean in ('per_pixel', 'none'),
       f"augment.mean={config.augment.mean!r}: use 'per_pixel' or 'none'.")
  need(config.augment.pca_lighting >= 0,
       'augment.pca_lighting is a standard deviation: use >= 0 (paper 0.1).')
  need(config.mesh.get('scheme', 'towers') in parallel.SCHEMES,
       f'mesh.scheme={config.mesh.get("scheme")!r}: use one of '
       f'{parallel.SCHEMES}.')
  need(config.eval_crops in (1, 10),
       f'eval_crops={config.eval_crops}: use 1 (centre) or 10 (paper).')
  need(config.model.input_size <= config.image_size,
       f'model.input_size={config.model.input_size} (the crop) is larger than '
       f'image_size={config.image_size}; lower model.input_size or raise '
       'image_size.')
  try:
    model_lib.create_model(config.model)
    optim.create(config, steps_per_epoch=1)
  except ValueError as e:
    raise errors.ConfigError(str(e)) from e


def finetune_source(config) -> Optional[Dict[str, Any]]:
  """Reads `finetune.init_from` and adopts its model (copy_model).

  Returns None when training from scratch, else {'params', 'config',
  'stats', 'path'}, the parameters on the host.
  """
  ft = config.get('finetune')
  if not ft or not ft.init_from:
    return None
  from alexnet_jax import features  # pylint: disable=g-import-not-at-top
  unknown = [l for l in tuple(ft.reinit) + tuple(ft.freeze)
             if l not in model_lib.CONV_LAYERS + model_lib.FC_LAYERS]
  if unknown:
    raise errors.ConfigError(
        f'finetune.reinit / finetune.freeze name unknown layer(s) {unknown}; '
        f'use {model_lib.CONV_LAYERS + model_lib.FC_LAYERS}.')
  try:
    workdir, step = features.locate(ft.init_from)
    params, meta = features.read_checkpoint(workdir, step,
                                            jax.devices('cpu')[0])
  except errors.UserError as e:
    raise errors.ConfigError(f'finetune.init_from: {e}') from e
  saved = ml_collections.ConfigDict(meta['config'])
  stats = None
  if (ft.copy_model and 'fc8' not in ft.reinit and
      saved.model.num_classes != config.model.num_classes):
    raise errors.ConfigError(
        f'finetune: {workdir} has {saved.model.num_classes} classes, '
        f'model.num_classes={config.model.num_classes}; add \'fc8\' to '
        'finetune.reinit for a new class count.')
  if ft.copy_model:
    keep_classes = config.model.num_classes
    for key, value in saved.model.items():
      # Ours: init (for reinit layers) and how to compute (dtype,
      # matmul_precision): they do not change what the weights mean.
      if key not in config.model or key in ('init', 'dtype',
                                            'matmul_precision'):
        continue
      if isinstance(config.model[key], ml_collections.ConfigDict):
        config.model[key].update(value.to_dict())
      else:  # JSON gave lists where the config holds tuples.
        config.model[key] = tuple(value) if isinstance(value, list) else value
    if 'fc8' in ft.reinit:
      config.model.num_classes = keep_classes
    config.image_size = saved.image_size
    config.augment.mean = saved.augment.mean
    config.augment.scale = saved.augment.scale
    stats_path = os.path.join(workdir, features.STATS_FILE)
    if os.path.exists(stats_path):
      try:
        stats = features.read_stats(stats_path)
      except errors.UserError as e:
        raise errors.ConfigError(f'finetune.init_from: {e}') from e
      stats = {k: stats[k] for k in ('mean', 'eigvals', 'eigvecs')}
  logging.info('Fine-tuning from %s (step %d): re-initialising %s, freezing '
               '%s.', workdir, step, list(ft.reinit) or 'nothing',
               list(ft.freeze) or 'nothing')
  return {'params': jax.device_get(params), 'stats': stats, 'path': workdir}


def finetune_params(config, source, fresh, shardings):
  """The source's parameters, fresh ones for re-initialised layers."""
  out = {}
  for name, layer in fresh.items():
    if name in config.finetune.reinit:
      out[name] = layer
      continue
    theirs = source['params'].get(name)
    shapes = jax.tree.map(np.shape, theirs)
    if shapes != jax.tree.map(np.shape, layer):
      raise errors.ConfigError(
          f'finetune: layer {name} of {source["path"]} has shapes {shapes}, '
          f'this model {jax.tree.map(np.shape, layer)}; add {name!r} to '
          'finetune.reinit (e.g. fc8 for a new class count) or match the '
          'model.')
    out[name] = jax.device_put(theirs, shardings[name])
  return out


def _topk_correct(logits, labels, k):
  k = min(k, logits.shape[-1])
  topk = jax.lax.top_k(logits, k)[1]
  return (topk == labels[:, None]).any(-1).astype(jnp.float32)


class Steps:
  """Builds the jitted, sharded train and eval steps for a mesh."""

  def __init__(self, config, model: model_lib.AlexNet, tx, mesh):
    self.config = config
    self.mesh = mesh
    self.tx = tx
    self.model = model
    self.scheme = config.mesh.get('scheme', 'towers')
    parallel.check_scheme(self.scheme)
    model_size = mesh.shape[MODEL]
    # The axes a batch is split over inside shard_map, and this device's
    # position along them (for mesh-independent example ids).
    self.batch_spec = parallel.step_batch_spec(self.scheme)
    self.batch_axes = self.batch_spec[0] if isinstance(
        self.batch_spec[0], tuple) else (self.batch_spec[0],)
    if model_size > 1 and not isinstance(model, model_lib.AlexNet):
      raise errors.ConfigError(
          f'model.arch={config.model.arch!r} runs data parallel only: set '
          'mesh.model=1.')
    if model_size > 1 and self.scheme == 'towers':
      if model.lrn_across_towers and model.towers > 1:
        raise errors.ConfigError(
            'model.lrn.across_towers needs both towers on one device: set '
            "mesh.model=1 or mesh.scheme='one_weird_trick'.")
      # Each device holds towers // mesh.model towers.
      self.sharded_model = model.clone(tower_axis=MODEL,
                                       tower_axis_size=model_size)
      try:
        self.sharded_model.local_towers  # pylint: disable=pointless-statement
      except ValueError as e:
        raise errors.ConfigError(str(e)) from e
    elif model_size > 1:
      self.sharded_model = model.clone(fc_axis=MODEL, fc_axis_size=model_size)
    else:
      self.sharded_model = model

  def _split(self, *arrays):
    """The batch arrays laid out as the steps split them (a local slice)."""
    if self.batch_spec == P(DATA):
      return arrays
    sharding = jax.sharding.NamedSharding(self.mesh, self.batch_spec)
    return tuple(jax.reshard(a, sharding) for a in arrays)

  def _shard_index(self):
    """This device's index among the batch shards (row-major over axes)."""
    index = 0
    for axis in self.batch_axes:
      index = index * self.mesh.shape[axis] + jax.lax.axis_index(axis)
    return index

  def init_state(self, key) -> TrainState:
    """Initialises the state directly in its sharded layout."""
    size = self.model.input_size
    dummy = jnp.zeros((1, size, size, 3), jnp.float32)

    def init(key):
      params = self.model.init(key, dummy)['params']
      return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                        opt_state=self.tx.init(params))

    abstract = jax.eval_shape(init, key)
    self.state_sharding = parallel.param_sharding(self.mesh, abstract,
                                                  self.scheme)
    return jax.jit(init, out_shardings=self.state_sharding)(key)

  def _param_specs(self, params):
    return parallel.param_specs(self.mesh, params, self.scheme)

  @functools.cached_property
  def train_step(self):
    config, mesh = self.config, self.mesh
    global_batch = config.batch_size

    def local_loss(params, images, labels, stats, step, key):
      # Parameters meet the data varying over the batch axes, in float32:
      # the transpose of this cast is the data-parallel gradient psum, so it
      # sums float32 gradients even when the model computes in bfloat16
      # (cast after it).
      params = parallel.vary(params, self.batch_axes)
      b = images.shape[0]
      ids = step * global_batch + self._shard_index() * b + jnp.arange(b)
      aug_key, drop_key = jax.random.split(jax.random.fold_in(key, step))
      x = augment.train_views(images, aug_key, ids, stats, config)
      logits = self.sharded_model.apply(
          {'params': params}, x, train=True, example_ids=ids,
          rngs={'dropout': drop_key})
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      axes = self.batch_axes
      loss = jax.lax.psum(ce.sum(), axes) / global_batch
      err1 = jax.lax.psum(b - _topk_correct(logits, labels, 1).sum(), axes)
      err5 = jax.lax.psum(b - _topk_correct(logits, labels, 5).sum(), axes)
      return loss, dict(loss=loss, top1_err=err1 / global_batch,
                        top5_err=err5 / global_batch)

    frozen = frozenset(config.finetune.get('freeze', ()) if config.get(
        'finetune') else ())

    def step_fn(state: TrainState, batch, stats, key):
      def loss_fn(params):
        # Frozen layers: no gradient computed, no update applied.
        params = {k: jax.lax.stop_gradient(v) if k in frozen else v
                  for k, v in params.items()}
        return jax.shard_map(
            local_loss, mesh=mesh,
            in_specs=(self._param_specs(params), self.batch_spec,
                      self.batch_spec, P(), P(), P()),
            out_specs=(P(), P()),
        )(params, *self._split(batch['image'], batch['label']), stats,
          state.step, key)

      grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
      updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
      updates = {k: jax.tree.map(jnp.zeros_like, v) if k in frozen else v
                 for k, v in updates.items()}
      params = optax.apply_updates(state.params, updates)
      metrics['lr'] = optim.get_learning_rate(state.opt_state)
      return TrainState(step=state.step + 1, params=params,
                        opt_state=opt_state), metrics

    return jax.jit(step_fn, donate_argnums=(0,),
                   out_shardings=(self.state_sharding,
                                  parallel.replicated(mesh)))

  @functools.cached_property
  def eval_step(self):
    config, mesh = self.config, self.mesh

    def local_eval(params, images, labels, mask, stats):
      views = augment.eval_views(images, stats, config)  # (V, b, h, w, 3)
      v, b = views.shape[:2]
      logits = self.sharded_model.apply(
          {'params': params}, views.reshape((v * b,) + views.shape[2:]),
          train=False)
      # The paper's test: average the softmax over the views.
      probs = jax.nn.softmax(logits).reshape(v, b, -1).mean(0)
      ce = -jnp.log(jnp.take_along_axis(probs, labels[:, None], 1)[:, 0] +
                    1e-30)
      sums = dict(
          loss=(ce * mask).sum(),
          top1_err=((1 - _topk_correct(probs, labels, 1)) * mask).sum(),
          top5_err=((1 - _topk_correct(probs, labels, 5)) * mask).sum(),
          count=mask.sum())
      return jax.tree.map(lambda v: jax.lax.psum(v, self.batch_axes), sums)

    def step_fn(params, batch, stats):
      return jax.shard_map(
          local_eval, mesh=mesh,
          in_specs=(self._param_specs(params), self.batch_spec,
                    self.batch_spec, self.batch_spec, P()),
          out_specs=P(),
      )(params, *self._split(batch['image'], batch['label'], batch['mask']),
        stats)

    return jax.jit(step_fn)


def evaluate(steps: Steps, params, split, config,
             stats) -> Dict[str, float]:
  """Top-1 / top-5 error and loss over the whole evaluation split (a
  store.Split)."""
  totals = None
  start = time.time()
  gb = config.eval_batch_size
  rows = input_pipeline.default_rows(gb, steps.mesh)
  for batch in input_pipeline.prefetch_to_device(
      input_pipeline.eval_batches(split, config, rows=rows), steps.mesh,
      global_batch=gb):
    sums = steps.eval_step(params, batch, stats)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  n = float(totals.pop('count'))
  out = {k: float(v) / n for k, v in totals.items()}
  out['img_per_sec'] = n / max(time.time() - start, 1e-9)
  out['num_examples'] = int(n)
  return out


class MetricsLog:
  """Writes metrics to `workdir/metrics.jsonl` and TensorBoard event files.

  metrics.jsonl is a documented interface: one JSON object per line with at
  least step, epoch, split ('train' | 'eval'), loss, top1_err, top5_err, lr,
  img_per_sec. Only process 0 writes.
  """

  def __init__(self, workdir: str):
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.writer = metric_writers.create_default_writer(
        os.path.join(workdir, 'tensorboard'), just_logging=not self.active,
        asynchronous=False)

  def roll_back(self, step: int):
    """Repairs metrics.jsonl and drops records past `step` (work a crash
    undid, redone on resume).

    A line a kill -9 or a full disk cut short is moved to metrics.jsonl.torn
    with a warning; records past `step` go to metrics.jsonl.rolled_back.
    Nothing is lost, and readers of metrics.jsonl see only whole lines.
    """
    if not self.active or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = f.readlines()
    records, torn = [], []
    for line in lines:
      try:
        record = json.loads(line)
        records.append((record['step'], line if line.endswith('\n')
                        else line + '\n'))
      except (ValueError, KeyError, TypeError):
        if line.strip():
          torn.append(line if line.endswith('\n') else line + '\n')
    keep = [l for s, l in records if s <= step]
    later = [l for s, l in records if s > step]
    if keep == lines:
      return
    if torn:
      with open(self.path + '.torn', 'a') as f:
        f.writelines(torn)
      logging.warning('metrics.jsonl: %d torn line(s) (cut short by a crash '
                      'or a full disk) moved to %s.torn.', len(torn),
                      self.path)
    if later:
      with open(self.path + '.rolled_back', 'a') as f:
        f.writelines(later)
      logging.info('metrics.jsonl: %d record(s) after step %d rolled back to '
                   '%s.rolled_back', len(later), step, self.path)
    tmp = self.path + '.tmp'
    with open(tmp, 'w') as f:
      f.writelines(keep)
    os.replace(tmp, self.path)

  def write(self, record: Dict[str, Any]):
    if not self.active:
      return
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    scalars = {f'{record["split"]}/{k}': v for k, v in record.items()
               if k not in ('step', 'split', 'epoch')
               and isinstance(v, (int, float))}
    self.writer.write_scalars(record['step'], scalars)
    self.writer.flush()


def load_stats(store, config) -> Dict[str, np.ndarray]:
  """The statistics the input needs (computed and cached on first use)."""
  size = config.image_size
  stats = {'mean': np.zeros((size, size, 3), np.float32),
           'eigvals': np.zeros(3, np.float32),
           'eigvecs': np.eye(3, dtype=np.float32)}
  if config.augment.mean == 'per_pixel' or config.augment.pca_lighting > 0:
    computed = stats_lib.load_or_compute(store, config)
    stats = {k: computed[k] for k in stats}
  if config.augment.mean == 'none':
    stats['mean'] = np.zeros_like(stats['mean'])
  return stats


def _save_stats(workdir: str, stats):
  """The input statistics beside the checkpoints, so the workdir alone is
  enough to use the network (alexnet_jax.features)."""
  path = os.path.join(workdir, 'stats.npz')
  if jax.process_index() == 0 and not os.path.exists(path):
    tmp = path + '.tmp.npz'
    np.savez(tmp, **stats)
    os.replace(tmp, path)


def _save_class_names(workdir: str, names):
  """The dataset's class names beside the checkpoints (for the figures)."""
  path = os.path.join(workdir, 'classes.json')
  if jax.process_index() or os.path.exists(path) or not names:
    return
  with open(path, 'w') as f:
    json.dump(names, f)


def _fmt_time(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


def _prepare_workdir(workdir: str, config):
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write_test.{jax.process_index()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise errors.UserError(
        f'workdir {workdir!r} is not writable ({e.strerror}); pass a '
        '--workdir you can write to.') from e
  path = os.path.join(workdir, 'config.json')
  if jax.process_index() == 0 and not os.path.exists(path):
    with open(path, 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> Dict[str, float]:
  """Trains, evaluates and checkpoints; resumes from `workdir` if it can.

  Returns the final evaluation's metrics.
  """
  source = finetune_source(config)
  validate_config(config)
  _prepare_workdir(workdir, config)
  mesh = parallel.create_mesh(config.mesh.data, config.mesh.model)
  shards = mesh.shape[DATA]
  if config.mesh.scheme == 'one_weird_trick':
    shards *= mesh.shape[MODEL]  # The convolutions split the batch over all.
  shards = math.lcm(shards, jax.process_count())
  for name in ('batch_size', 'eval_batch_size'):
    if config[name] % shards:
      raise errors.ConfigError(
          f'{name}={config[name]} cannot be split evenly over the mesh\'s '
          f'batch shards ({shards}); use a multiple of {shards}.')
  logging.info('Mesh: %s on %d %s device(s)', dict(mesh.shape),
               mesh.devices.size, jax.devices()[0].platform)

  with parallel.process_zero_first('dataset'):  # Prepared once, by process 0.
    data = store_lib.get(config)
  train_split = data.split(config.train_split)
  eval_split = data.split(config.eval_split)
  class_names = train_split.classes
  classes = len(class_names) if class_names else config.model.num_classes
  if classes != config.model.num_classes:
    raise errors.ConfigError(
        f'dataset {config.dataset!r} has {classes} classes but '
        f'model.num_classes={config.model.num_classes}; pass '
        f'--config.model.num_classes={classes}.')
  n_train = len(train_split)
  steps_per_epoch = input_pipeline.steps_per_epoch(train_split, config)
  if steps_per_epoch < 1:
    raise errors.ConfigError(
        f'batch_size={config.batch_size} is larger than the training split '
        f'({n_train} examples); lower batch_size.')
  # Durations are written in epochs; this is the one place they become steps.
  if config.num_train_steps > 0:
    total_steps = int(config.num_train_steps)
  else:
    total_steps = int(math.ceil(config.num_epochs * steps_per_epoch))
  eval_every = max(1, int(round(config.eval_every_epochs * steps_per_epoch)))
  num_epochs = total_steps / steps_per_epoch

  model = model_lib.create_model(config.model)
  tx, schedule = optim.create(config, steps_per_epoch)
  steps = Steps(config, model, tx, mesh)
  root_key = jax.random.key(config.seed)
  init_key, train_key = jax.random.split(root_key)
  state = steps.init_state(init_key)
  logging.info('Model: %s, %s parameters',
               config.model.layout if isinstance(model, model_lib.AlexNet)
               else config.model.arch,
               f'{model_lib.count_params(state.params):,}')
  if (config.lr_scaling != 'none' and
      config.batch_size != config.lr_reference_batch):
    logging.info('Learning rate %g: learning_rate %g at batch %d, scaled '
                 "'%s' to batch %d (lr_scaling).",
                 optim.scaled_learning_rate(config), config.learning_rate,
                 config.lr_reference_batch, config.lr_scaling,
                 config.batch_size)

  ckpt = checkpoint.Checkpointer(workdir, config.keep_checkpoints)
  check_config_drift(ckpt, config)
  restored = ckpt.restore(state)
  meta = {}
  if restored is not None:
    state, meta = restored
    schedule.load_state_dict(meta.get('schedule', {}))
  elif source is not None:
    state = state.replace(params=finetune_params(
        config, source, state.params, steps.state_sharding.params))
  start_step = int(jax.device_get(state.step))
  # The input stream's position: stored in the checkpoint (it is a function of
  # the step as long as the batch size and dataset do not change).
  position = meta.get('data_position') or {
      'epoch': start_step // steps_per_epoch,
      'batch': start_step % steps_per_epoch}
  if start_step:
    logging.info('Resuming from step %d (epoch %.2f).', start_step,
                 start_step / steps_per_epoch)

  if source is not None and source['stats'] is not None:
    stats = source['stats']  # The normalisation the weights were trained on.
  else:
    with parallel.process_zero_first('stats'):  # Computed once, by process 0.
      stats = load_stats(data, config)
  _save_stats(workdir, stats)
  _save_class_names(workdir, class_names)
  stats = jax.device_put(stats, parallel.replicated(mesh))
  log = MetricsLog(workdir)
  log.roll_back(start_step)

  def save(step):
    ckpt.save(step, state, {
        'schedule': schedule.state_dict(),
        'epoch': step / steps_per_epoch,
        'data_position': {'epoch': step // steps_per_epoch,
                          'batch': step % steps_per_epoch},
        'config': config.to_dict()})

  current_lr = None
  rows = input_pipeline.default_rows(config.batch_size, mesh)
  batches = input_pipeline.prefetch_to_device(
      input_pipeline.train_stream(train_split, config, position['epoch'],
                                  position['batch'], rows), mesh,
      global_batch=config.batch_size)
  # Train throughput is images over the wall time between consecutive train
  # records, evaluation left out. A window's metrics stay on the device until
  # the next window closes (or a checkpoint), so logging never drains the
  # device; a record's time is when its steps were seen to be done.
  window, pending = [], []
  clock = {'mark': time.time(), 'excluded': 0.0, 'seconds': 0.0, 'steps': 0}
  last_eval = None

  def write_train_records(windows):
    """Fetches closed windows' metrics (waiting for their steps) and logs."""
    for metrics, at in windows:
      values = jax.device_get(metrics)
      now = time.time()
      seconds = now - clock['mark'] - clock['excluded']
      clock.update(mark=now, excluded=0.0)
      clock['seconds'] += seconds
      clock['steps'] += len(values)
      record = _train_record(values, at, steps_per_epoch, config.batch_size,
                             seconds)
      if not all(math.isfinite(record[k]) for k in ('loss', 'top1_err')):
        raise errors.UserError(
            f'the training loss became {record["loss"]} by step {at}; '
            'the run diverged and this state was not saved. Last good '
            f'checkpoint: step {ckpt.latest_step()} in {ckpt.directory}. '
            'Lower learning_rate (or resume with --config.lr_override).')
      log.write(record)
      eta = clock['seconds'] / clock['steps'] * (total_steps - at)
      logging.info(
          'epoch %.2f/%g  step %d/%d  loss %.4f  top1_err %.2f%%  lr %g  '
          '%.1f img/s  ETA %s', at / steps_per_epoch, num_epochs, at,
          total_steps, record['loss'], 100 * record['top1_err'],
          record['lr'], record['img_per_sec'], _fmt_time(eta))

  step = start_step
  with StopSignals() as stop, contextlib.closing(ckpt):
    try:
      while step < total_steps:
        lr = schedule.lr_at(step)
        if lr != current_lr:
          state = state.replace(opt_state=optim.set_learning_rate(
              state.opt_state, lr))
          if current_lr is not None:
            logging.info('Learning rate -> %g at step %d.', lr, step)
          current_lr = lr
        batch = next(batches)
        state, metrics = steps.train_step(state, batch, stats, train_key)
        window.append(metrics)
        step += 1
        # One reading of the flag per step: a signal arriving later in this
        # iteration is handled, consistently, after the next step.
        stopping = stop.signal
        checkpoint_now = (step % config.checkpoint_every_steps == 0 or
                          step == total_steps or stopping is not None)

        # A checkpoint step always closes the log window, so the records of a
        # resumed run line up with those of an uninterrupted one, and fetches
        # every open window, so a non-finite loss is caught before its state
        # could be saved.
        if step % config.log_every_steps == 0 or checkpoint_now:
          pending.append((window, step))
          window = []
          if checkpoint_now:
            write_train_records(pending)
            pending = []
          elif len(pending) > 1:
            write_train_records(pending[:-1])
            pending = pending[-1:]

        if (step % eval_every == 0 or step == total_steps) and not stopping:
          # The training steps finish first (their time is train time), and
          # their records are written, so a diverged run never evaluates.
          jax.block_until_ready(state)
          write_train_records(pending)
          pending = []
          t0 = time.time()
          last_eval = evaluate(steps, state.params, eval_split, config, stats)
          log.write({'step': step, 'epoch': step / steps_per_epoch,
                     'split': 'eval', 'lr': current_lr, **last_eval})
          logging.info('eval at step %d: loss %.4f  top1_err %.2f%%  '
                       'top5_err %.2f%%  (%d images, %.1fs)', step,
                       last_eval['loss'], 100 * last_eval['top1_err'],
                       100 * last_eval['top5_err'], last_eval['num_examples'],
                       time.time() - t0)
          if schedule.observe(last_eval['top1_err']):
            logging.info('Validation error stopped improving: learning rate '
                         '/ 10 (drop %d of at most %d).', schedule.drops,
                         schedule.max_drops)
          clock['excluded'] += time.time() - t0  # Out of train img/s.

        if checkpoint_now:
          save(step)
        if stopping:
          ckpt.wait()
          logging.warning('%s received: saved checkpoint %d in %s and stopped;'
                          ' rerun the same command to resume.', stopping,
                          step, ckpt.directory)
          return {'stopped_by': stopping, 'step': step}
    finally:
      batches.close()  # Stops the input threads.
      ckpt.wait()  # Never leave a half-written checkpoint behind on exit.

  if last_eval is None:  # Nothing left to train: report the restored state.
    last_eval = evaluate(steps, state.params, eval_split, config, stats)
  logging.info('Done: %d steps, final top1_err %.2f%%, top5_err %.2f%%, '
               'checkpoints in %s', total_steps, 100 * last_eval['top1_err'],
               100 * last_eval['top5_err'], ckpt.directory)
  return last_eval


def _train_record(window, step, steps_per_epoch, batch_size, seconds):
  record = {'step': step, 'epoch': step / steps_per_epoch, 'split': 'train',
            'lr': float(window[-1]['lr']),
            'img_per_sec': len(window) * batch_size / max(seconds, 1e-9)}
  for k in ('loss', 'top1_err', 'top5_err'):
    record[k] = float(np.mean([m[k] for m in window]))
  return record


# Config keys a resumed run may change; anything else would change the model,
# the data or the optimisation the checkpoint belongs to.
SAFE_TO_CHANGE = (
    'lr_override', 'num_epochs', 'num_train_steps', 'eval_every_epochs',
    'log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints',
    'eval_batch_size', 'eval_crops', 'mesh.data', 'mesh.model', 'mesh.scheme',
    'distributed.coordinator_address', 'distributed.num_processes',
    'distributed.process_id', 'distributed.timeout_seconds', 'data_dir',
    'manual_dir', 'store.dir', 'input.workers', 'input.prefetch',
    'max_image_pixels', 'model.dtype', 'model.matmul_precision',
    'finetune.init_from',
    # Retired keys (the input before the prepared store).
    'cache_resized', 'shuffle_buffer')


def _flatten(d, prefix=''):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def config_changes(saved: Dict[str, Any], config) -> Dict[str, Tuple]:
  """{key: (saved, now)} for every key whose value differs."""
  now = _flatten(json.loads(json.dumps(config.to_dict())))
  before = _flatten(saved)
  return {k: (before.get(k), now.get(k)) for k in sorted(set(now) | set(before))
          if before.get(k) != now.get(k)}


def check_config_drift(ckpt: checkpoint.Checkpointer, config):
  """Refuses to resume a checkpoint under a config that changes what it is."""
  for step in ckpt.all_steps():
    try:
      saved = ckpt.read_meta(step).get('config')
    except Exception:  # pylint: disable=broad-except
      continue  # Unreadable: restore() deals with damaged checkpoints.
    if saved is None:
      return
    changes = config_changes(saved, config)
    # Keys added to the code after the checkpoint was written are fine at
    # their default (which keeps the old behaviour).
    defaults = _flatten(json.loads(json.dumps(
        default_config.get_config().to_dict())))
    known = _flatten(saved)
    unsafe = {k: v for k, v in changes.items() if k not in SAFE_TO_CHANGE and
              not (k not in known and k in defaults and v[1] == defaults[k])}
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


class StopSignals:
  """SIGTERM / SIGINT ask the loop to checkpoint and stop (preemption).

  A second SIGINT interrupts at once. Only installed in the main thread.
  """

  def __init__(self):
    self.signal = None
    self._old = {}

  def _handle(self, signum, frame):
    del frame
    if self.signal is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signal = signal.Signals(signum).name
    logging.warning('%s received: checkpointing at the end of this step.',
                    self.signal)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in (signal.SIGTERM, signal.SIGINT):
        self._old[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, handler in self._old.items():
      signal.signal(s, handler)
