"""`train_and_evaluate`: the training loop, from a config to a trained workdir.

The steps it runs are in steps.py, the run's directory in workdir.py, when to
log, evaluate and checkpoint in durations.py, fine-tuning in finetune.py.
"""

import collections
import contextlib
import dataclasses
import math
import os
import queue
import threading
import time
from typing import Any, Callable, Dict, Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from alexnet_jax import checkpoint
from alexnet_jax import durations as durations_lib
from alexnet_jax import errors
from alexnet_jax import finetune
from alexnet_jax import input_pipeline
from alexnet_jax import loss_scale as loss_scale_lib
from alexnet_jax import metrics_log
from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import parallel
from alexnet_jax import preemption
from alexnet_jax import progress
from alexnet_jax import steps as steps_lib
from alexnet_jax import workdir as workdir_lib
from alexnet_jax import writer_lock
from alexnet_jax.datasets import stats as stats_lib
from alexnet_jax.datasets import store as store_lib


def validate_config(config: ml_collections.ConfigDict):
  """Raises ConfigError (one line naming the fix) for impossible values."""
  def need(ok, msg):
    if not ok:
      raise errors.ConfigError(msg)
  need(config.batch_size > 0, f'batch_size={config.batch_size} must be > 0.')
  need(config.eval_batch_size > 0,
       f'eval_batch_size={config.eval_batch_size} must be > 0.')
  need(config.num_epochs > 0 or config.num_train_steps > 0,
       'set num_epochs > 0 or num_train_steps > 0.')
  need(config.stop_at_train_err == -1 or 0 < config.stop_at_train_err <= 1,
       f'stop_at_train_err={config.stop_at_train_err}: use a training error '
       'in (0, 1], e.g. 0.25, or -1 (off).')
  parse_profile_steps(config.profile_steps)
  parallel.check_scheme(config.mesh.scheme)
  need(config.eval_every_epochs > 0,
       f'eval_every_epochs={config.eval_every_epochs} must be > 0.')
  need(config.log_every_steps > 0 and config.checkpoint_every_steps > 0,
       'log_every_steps and checkpoint_every_steps must be > 0.')
  need(config.augment.mean in ('per_pixel', 'none'),
       f"augment.mean={config.augment.mean!r}: use 'per_pixel' or 'none'.")
  need(config.augment.pca_lighting >= 0,
       'augment.pca_lighting is a standard deviation: use >= 0 (paper 0.1).')
  need(config.eval_crops in (1, 10),
       f'eval_crops={config.eval_crops}: use 1 (centre) or 10 (paper).')
  need(config.model.input_size <= config.image_size,
       f'model.input_size={config.model.input_size} (the crop) is larger than '
       f'image_size={config.image_size}; lower model.input_size or raise '
       'image_size.')


def evaluate(steps: steps_lib.Steps, params, split, stats,
             reading: input_pipeline.Reading, crops: int) -> Dict[str, float]:
  """Top-1 / top-5 error and loss over the whole evaluation split (a
  store.Split), with `crops` views of each image (1: the centre, 10: the
  paper's)."""
  totals = None
  start = time.time()
  gb = reading.eval_batch_size
  rows = input_pipeline.default_rows(gb, steps.mesh)
  views = 'centre crop' if crops == 1 else f'{crops} crops'
  with progress.Progress(len(split), f'eval ({views})') as bar:
    for batch in input_pipeline.prefetch_to_device(
        input_pipeline.eval_batches(split, reading, rows=rows), steps.mesh,
        global_batch=gb):
      earlier = totals  # One batch behind: the device is never left idle.
      sums = steps.eval_step(params, batch, stats, crops=crops)
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
      if earlier is not None:  # Shown only once finished (Progress waits).
        bar.update(min(gb, len(split) - bar.done),
                   lambda: jax.block_until_ready(earlier))
  totals = jax.device_get(totals)
  n = float(totals.pop('count'))
  out = {k: float(v) / n for k, v in totals.items()}
  out['img_per_sec'] = n / max(time.time() - start, 1e-9)
  out['num_examples'] = int(n)
  return out


def _open_dataset(spec: store_lib.Spec, num_classes: int,
                  reading: input_pipeline.Reading):
  """(store, train split, eval split, class names), checked against the
  model's class count and the batch size."""
  with parallel.process_zero_first('dataset'):  # Prepared once, by process 0.
    # Process 0 alone compares the folder and rewrites a changed split; the
    # others open what it left.
    data = store_lib.prepare(None, spec,
                             check_source=jax.process_index() == 0)
  train_name, eval_name = spec.splits
  train_split, eval_split = data.split(train_name), data.split(eval_name)
  names = train_split.classes
  if names and eval_split.classes and eval_split.classes != names:
    raise errors.DataError(
        f'the store\'s {train_name} and {eval_name} splits were prepared '
        f'with different classes ({len(names)} and '
        f'{len(eval_split.classes)}, in {data.root}); run python -m '
        'alexnet_jax.datasets.prepare --config CONFIG to prepare them again.')
  classes = len(names) if names else num_classes
  if classes != num_classes:
    raise errors.ConfigError(
        f'dataset {spec.dataset!r} has {classes} classes but '
        f'model.num_classes={num_classes}; pass '
        f'--config.model.num_classes={classes}.')
  if input_pipeline.steps_per_epoch(train_split, reading) < 1:
    raise errors.ConfigError(
        f'batch_size={reading.batch_size} is larger than the training split '
        f'({len(train_split)} examples); lower batch_size.')
  return data, train_split, eval_split, names


class _TrainRecords:
  """Train metrics, logged per window of steps without stalling dispatch.

  A closed window's metrics go to a thread that waits until they are ready
  on the host, times the window by when its own steps finished
  (progress.WindowClock), writes its record and logs its line: within moments
  of the window's end, whatever the training loop is doing then
  (evaluating, checkpointing, dispatching). `flush` waits for every closed
  window and raises if one had a non-finite loss.
  """

  def __init__(self, log, durations, batch_size: int, ckpt,
               clock: Callable[[], float] = time.time,
               fetch: Callable = jax.device_get):
    self.log, self.durations, self.ckpt = log, durations, ckpt
    self.batch_size = batch_size
    self._clock, self._fetch = clock, fetch
    self.window, self.started = [], None
    self.windows = progress.WindowClock()
    self.steps = 0
    self.eval_seconds = []  # Measured by the loop; the ETA counts them in.
    self.error = None
    self.last_train_err = None  # The newest record's, once it is written.
    self._queue = queue.Queue()
    self._thread = threading.Thread(target=self._run, daemon=True,
                                    name='train-records')
    self._thread.start()

  def add(self, metrics, input_wait: float = 0.0):
    """One step's metrics, and the seconds the loop waited for its batch."""
    if not self.window:
      self.started = self._clock()  # The first step's call has returned.
      self.input_wait = 0.0  # Its wait came before the window began.
    else:
      self.input_wait += input_wait
    self.window.append(metrics)

  def close_window(self, step: int):
    """Ends the window at `step`; the thread logs it once it is done."""
    if self.window:
      self._queue.put((self.window, step, self.started, self.input_wait))
    self.window = []
    if self.error is not None:
      raise self.error

  def flush(self):
    """Waits until every closed window is logged; raises on divergence."""
    self._queue.join()
    if self.error is not None:
      raise self.error

  def close(self):
    self._queue.put(None)
    self._thread.join()

  def _run(self):
    while True:
      item = self._queue.get()
      try:
        if item is None:
          return
        if self.error is None:
          self._write(*item)
      except Exception as e:  # pylint: disable=broad-except
        self.error = e  # Raised in the training loop.
      finally:
        self._queue.task_done()

  def _write(self, metrics, at, started, input_wait):
    values = self._fetch(metrics)
    seconds = self.windows.window(started, self._clock())
    self.steps += len(values)
    d = self.durations
    record = _train_record(values, at, d.steps_per_epoch, self.batch_size,
                           seconds)
    # Where the window went: waiting for input, and the memory it needed.
    record['input_wait_s'] = input_wait
    record['input_wait_share'] = min(input_wait / seconds, 1.0)
    record['device_memory_gb'] = peak_device_memory_gb()
    # The gradients go bad first: the loss follows a step later.
    # float16: a window of skipped steps is the loss scale coming down, until
    # it overflows even at the smallest scale.
    all_skipped = record.get('skipped_steps') == len(values)
    if all_skipped and record['loss_scale'] <= loss_scale_lib.MIN_SCALE:
      raise errors.UserError(
          f'every step of the {len(values)} up to step {at} overflowed '
          f'float16, even at loss scale {record["loss_scale"]:g}; the run '
          'diverged and this state was not saved. Last good checkpoint: step '
          f'{self.ckpt.latest_step()} in {self.ckpt.directory}. Lower '
          "learning_rate, or use model.dtype='bfloat16' or 'float32'.")
    bad = None if all_skipped else next(
        (k for k in ('grad_norm', 'loss', 'top1_err')
         if not math.isfinite(record[k])), None)
    if bad is not None:
      what = (f'the training loss became {record["loss"]}'
              if bad != 'grad_norm' else
              f'the gradient norm became {record["grad_norm"]}' +
              (' while the loss stayed finite' if math.isfinite(
                  record['loss']) else ''))
      raise errors.UserError(
          f'{what} by step {at}; the run diverged and this state was not '
          f'saved. Last good checkpoint: step {self.ckpt.latest_step()} in '
          f'{self.ckpt.directory}. Lower learning_rate (or resume with '
          '--config.lr_override).')
    self.log.write(record)
    # None: a float16 window whose steps all skipped (no target check).
    self.last_train_err = record['top1_err']
    eval_s = (sum(self.eval_seconds) / len(self.eval_seconds)
              if self.eval_seconds else None)
    memory = ('' if record['device_memory_gb'] is None else
              f"  {record['device_memory_gb']:.1f} GB peak")
    if 'loss_scale' in record:
      memory += (f"  loss scale {record['loss_scale']:g} "
                 f"({record['skipped_steps']} skipped)")
    nan = float('nan')  # Shown for a float16 window whose steps all skipped.
    logging.info(
        'epoch %.2f/%.2f  step %d/%d  loss %.4f  top1_err %.2f%%  lr %g  '
        '%.1f img/s  input wait %.0f%%%s  ETA %s', d.epoch(at), d.num_epochs,
        at, d.total_steps, nan if record['loss'] is None else record['loss'],
        nan if record['top1_err'] is None else 100 * record['top1_err'],
        record['lr'], record['img_per_sec'],
        100 * record['input_wait_share'], memory,
        progress.eta(d, at, self.windows.seconds / self.steps, eval_s))


def peak_device_memory_gb():
  """This process's devices' peak memory so far (parallel.peak_memory_gb)."""
  return parallel.peak_memory_gb(jax.local_devices())


def _initial_state(steps, ckpt, schedule, source, reinit, key):
  """(state, checkpoint metadata): the workdir's newest checkpoint, else a
  fresh state (holding fine-tuning's source weights, but for the layers in
  `reinit`)."""
  restored = ckpt.restore(steps.abstract_state)
  if restored is not None:
    state, meta = restored
    schedule.load_state_dict(meta.get('schedule', {}))
    return state, meta
  state = steps.init_state(key)
  if source is not None:
    state = state.replace(params=finetune.params(
        reinit, source, state.params, steps.state_sharding.params))
  return state, {}


def _run_stats(workdir: str, source, resumed: bool, compute):
  """The run's dataset statistics, saved in its workdir: a fine-tuning
  source's, a resumed run's own, else `compute()`'s (the training split's,
  computed once, by process 0)."""
  saved_stats = os.path.join(workdir, workdir_lib.STATS_FILE)
  if source is not None and source['stats'] is not None:
    stats = source['stats']  # The normalisation the weights were trained on.
  elif resumed and os.path.exists(saved_stats):
    # A resumed run keeps the normalisation its checkpoint was trained with,
    # even if its store was prepared again since.
    stats = workdir_lib.read_stats(saved_stats)
  else:
    with parallel.process_zero_first('stats'):
      stats = compute()
  workdir_lib.save_stats(workdir, stats)
  return stats


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> Dict[str, float]:
  """Trains, evaluates and checkpoints; resumes from `workdir` if it can.

  Returns the final evaluation's metrics. One run at a time per workdir: a
  second one, while the first is alive, stops in one line (process 0 holds
  the lock for all the processes of a run; they share its verdict).
  """
  with contextlib.ExitStack() as lock:
    with parallel.process_zero_first('the workdir lock'):
      if jax.process_index() == 0:
        lock.enter_context(writer_lock.hold(workdir))
    return _Loop(_start(config, workdir)).run()


@dataclasses.dataclass
class _Run:
  """A run's parts, built once from its config by `_start`: all the loop
  needs (it never reads the config)."""
  config: Dict[str, Any]  # The resolved config, saved with each checkpoint.
  reading: input_pipeline.Reading
  durations: durations_lib.Durations
  steps: steps_lib.Steps
  schedule: optim.Schedule
  ckpt: checkpoint.Checkpointer
  state: steps_lib.TrainState
  start_step: int
  end_step: int  # Where training stops (the start, for a finished run).
  position: Dict[str, int]  # The input stream's, at start_step.
  train_split: store_lib.Split
  eval_split: store_lib.Split
  stats: stats_lib.Stats
  log: metrics_log.MetricsLog
  fingerprint: Optional[str]  # The training images', as checkpoints record.
  content: Optional[str]  # Their content digest (image folders).
  train_key: jax.Array
  eval_crops: int
  target: float  # stop_at_train_err (-1: off).
  profiler: 'Profiler'


def _check_classes(trained, now, store_root: str, workdir: str):
  """Refuses to resume on a store whose classes are not those the run trained
  on: with the same count, the labels would silently mean other classes."""
  if not trained or not now or list(trained) == list(now):
    return
  changed = next((f'{a!r} is now {b!r}' for a, b in zip(trained, now)
                  if a != b), f'{len(trained)} classes are now {len(now)}')
  raise errors.DataError(
      f'the store in {store_root} has other classes than this run trained on '
      f'({workdir}/{workdir_lib.CLASSES_FILE}: {changed}); resume with the '
      'data it trained on, train in a new --workdir, or, if it did train on '
      f'this store, delete {workdir_lib.CLASSES_FILE}.')


def images_changed(meta: checkpoint.Meta, fingerprint: Optional[str],
                   content: Optional[str]) -> bool:
  """Whether the training split's images differ from those a checkpoint
  (its `meta`) was trained on: by content where both recorded it, so a store
  kept for a fresh copy of its folder (new mtimes) resumes exactly; else (a
  checkpoint or store from before the content digest) by fingerprint."""
  if meta.get('store_content') and content:
    return meta['store_content'] != content
  return meta.get('store_fingerprint') not in (None, fingerprint)


def _start(config, workdir) -> _Run:
  """Checks the config, builds the mesh, model, optimiser and steps once,
  then opens the workdir and the dataset; restores the newest checkpoint."""
  config, source = finetune.source(config)
  # Built once, before the workdir is touched or any data read: each factory
  # refuses a bad value in one line (ConfigError).
  validate_config(config)
  model = model_lib.create_model(config.model)
  tx, schedule = optim.create(config, steps_per_epoch=1)
  reading = input_pipeline.Reading.from_config(config)
  mesh = parallel.create_mesh(config.mesh.data, config.mesh.model)
  parallel.Scheme(config.mesh.scheme, mesh).check_batches(
      batch_size=reading.batch_size, eval_batch_size=reading.eval_batch_size)
  logging.info('Mesh: %s on %d %s device(s)', dict(mesh.shape),
               mesh.devices.size, jax.devices()[0].platform)
  steps = steps_lib.create(config, model, tx, mesh)
  workdir_lib.prepare(workdir, config)

  spec = store_lib.Spec.from_config(config)
  data, train_split, eval_split, class_names = _open_dataset(
      spec, config.model.num_classes, reading)
  durations = durations_lib.Durations.from_config(
      config, input_pipeline.steps_per_epoch(train_split, reading))
  # The epoch's length is known now (milestones are in epochs).
  schedule = dataclasses.replace(schedule,
                                 steps_per_epoch=durations.steps_per_epoch)
  init_key, train_key = jax.random.split(jax.random.key(config.seed))
  logging.info('Model: %s, %s parameters',
               config.model.layout if isinstance(model, model_lib.AlexNet)
               else config.model.arch,
               f'{model_lib.count_params(steps.abstract_state.params):,}')
  if (config.lr_scaling != 'none' and
      config.batch_size != config.lr_reference_batch):
    logging.info('Learning rate %g: learning_rate %g at batch %d, scaled '
                 "'%s' to batch %d (lr_scaling).",
                 schedule.base_lr, config.learning_rate,
                 config.lr_reference_batch, config.lr_scaling,
                 config.batch_size)

  ckpt = checkpoint.Checkpointer(workdir, config.keep_checkpoints)
  workdir_lib.check_config_drift(ckpt, config.to_dict())
  state, meta = _initial_state(steps, ckpt, schedule, source,
                               tuple(config.finetune.reinit), init_key)
  start_step = int(jax.device_get(state.step))
  if not start_step:
    # config.json is this run's, not that of an attempt that failed earlier.
    workdir_lib.prepare(workdir, config, overwrite=True)
  if start_step:
    # Before anything is written to the workdir or computed from the data.
    _check_classes(workdir_lib.saved_class_names(workdir), class_names,
                   data.root, workdir)
    logging.info('Resuming from step %d (epoch %.2f).', start_step,
                 durations.epoch(start_step))
  fingerprint, content = (train_split.meta.get('source', {}).get(k)
                          for k in ('fingerprint', 'content'))
  if images_changed(meta, fingerprint, content):
    logging.warning(
        'The training images changed since step %d was saved (the store was '
        'prepared again from a changed folder): epochs from here hold the new '
        'images, in a new order; for a clean comparison, train in a new '
        '--workdir.', start_step)
  stats = _run_stats(workdir, source, start_step > 0, lambda: stats_lib.load(
      data, spec.splits[0], spec.image_size, config.augment.mean,
      config.augment.pca_lighting))
  workdir_lib.save_class_names(workdir, class_names, overwrite=not start_step)
  log = metrics_log.MetricsLog(workdir)
  log.roll_back(start_step)

  target = config.stop_at_train_err
  # A run that reached its training-error target is finished (see _Loop).
  reached_before = meta.get('reached_train_err')
  end_step = (start_step if target > 0 and reached_before is not None and
              reached_before <= target else durations.total_steps)
  return _Run(
      config=config.to_dict(), reading=reading, durations=durations,
      steps=steps, schedule=schedule, ckpt=ckpt, state=state,
      start_step=start_step, end_step=end_step,
      # The input stream's position is stored in the checkpoint (it is a
      # function of the step as long as the batch size and dataset do not
      # change).
      position=meta.get('data_position') or durations.position(start_step),
      train_split=train_split, eval_split=eval_split,
      stats=jax.device_put(stats, parallel.replicated(mesh)), log=log,
      fingerprint=fingerprint, content=content, train_key=train_key,
      eval_crops=config.eval_crops, target=target,
      profiler=Profiler(config.profile_steps,
                        workdir_lib.profile_dir(workdir)))


_REACHED = 'reached'  # _Loop._step: the training-error target was reached.
# Steps dispatched but not finished, at most: one running and one queued
# behind it, so a stop request is saved within about two steps. Unbounded,
# XLA's CPU client queues up to 32 computations
# (max_inflight_computations_per_device), and a SIGTERM on 2 CPU cores took
# 34 more steps (over 2 minutes) to checkpoint.
MAX_STEPS_IN_FLIGHT = 2


class _Loop:
  """The training loop over a `_Run`: steps, log windows, evaluations,
  checkpoints, the training-error target and preemption."""

  def __init__(self, run: _Run):
    self.r = run
    self.state, self.step = run.state, run.start_step
    run.state = None  # The first step donates its buffers: one owner.
    self.lr = None  # The learning rate the optimiser state holds.
    self.last_eval = None
    self.records = None
    self.in_flight = collections.deque()  # Each unfinished step's loss.

  def save(self, step: int, reached: Optional[float] = None):
    """Checkpoints `step` (every step's loss and gradient norm were checked
    first: records.flush)."""
    r = self.r
    r.ckpt.save(step, self.state, checkpoint.Meta(
        store_fingerprint=r.fingerprint, store_content=r.content,
        reached_train_err=reached,
        schedule=r.schedule.state_dict(), epoch=r.durations.epoch(step),
        data_position=r.durations.position(step), config=r.config))

  def evaluate(self, step: int, lr: float, during_training: bool = True):
    """Evaluates the state, logs and records the result; during training,
    the plateau schedule observes it."""
    r, t0 = self.r, time.time()
    result = evaluate(r.steps, self.state.params, r.eval_split, r.stats,
                      r.reading, r.eval_crops)
    # Recorded after training too: this is how a finished run is evaluated
    # with other settings (e.g. --config.eval_crops=10).
    r.log.write({'step': step, 'epoch': r.durations.epoch(step),
                 'split': 'eval', 'lr': lr, 'crops': r.eval_crops, **result})
    if not during_training:
      return result
    logging.info('eval at step %d: loss %.4f  top1_err %.2f%%  top5_err '
                 '%.2f%%  (%d images, %.1fs)', step, result['loss'],
                 100 * result['top1_err'], 100 * result['top5_err'],
                 result['num_examples'], time.time() - t0)
    if r.schedule.observe(result['top1_err']):
      logging.info('Validation error stopped improving: learning rate / 10 '
                   '(drop %d of at most %d).', r.schedule.drops,
                   r.schedule.max_drops)
    self.records.eval_seconds.append(time.time() - t0)  # For the ETA.
    return result

  def _set_lr(self, step: int):
    lr = self.r.schedule.lr_at(step)
    if lr != self.lr:
      self.state = self.state.replace(opt_state=optim.set_learning_rate(
          self.state.opt_state, lr))
      if self.lr is not None:
        logging.info('Learning rate -> %g at step %d.', lr, step)
      self.lr = lr

  def run(self) -> Dict[str, Any]:
    """Trains to the end step (or the target, or a stop request); the final
    evaluation's metrics, or {'stopped_by', 'step'}."""
    r = self.r
    batches = input_pipeline.prefetch_to_device(
        input_pipeline.train_stream(
            r.train_split, r.reading, r.position['epoch'],
            r.position['batch'],
            input_pipeline.default_rows(r.reading.batch_size, r.steps.mesh)),
        r.steps.mesh, global_batch=r.reading.batch_size)
    # Its clock starts now.
    self.records = _TrainRecords(r.log, r.durations, r.reading.batch_size,
                                 r.ckpt)
    with preemption.StopRequests() as stop, contextlib.closing(r.ckpt):
      try:
        while self.step < r.end_step:
          outcome = self._step(batches, stop)
          if outcome == _REACHED:
            break
          if outcome is not None:
            return outcome  # Stopped by a request: checkpointed.
      finally:
        r.profiler.close()
        batches.close()  # Stops the input threads.
        self.records.close()
        r.ckpt.wait()  # Never leave a half-written checkpoint behind on exit.
    step = self.step
    if self.last_eval is None:  # Nothing left to train: the restored state.
      self.last_eval = self.evaluate(step, r.schedule.lr_at(step),
                                     during_training=False)
    logging.info('Done: %d steps, final top1_err %.2f%%, top5_err %.2f%%, '
                 'checkpoints in %s', step,
                 100 * self.last_eval['top1_err'],
                 100 * self.last_eval['top5_err'], r.ckpt.directory)
    return self.last_eval

  def _step(self, batches, stop):
    """One train step and what falls due after it. Returns None to go on,
    _REACHED at the training-error target, or a stop request's result."""
    r, d, records, step = self.r, self.r.durations, self.records, self.step
    self._set_lr(step)
    if len(self.in_flight) >= MAX_STEPS_IN_FLIGHT:  # Before the input clock.
      self.in_flight.popleft().block_until_ready()
    waited = time.perf_counter()
    batch = next(batches)
    waited = time.perf_counter() - waited
    r.profiler.before(step)
    self.state, metrics = r.steps.train_step(self.state, batch, r.stats,
                                             r.train_key)
    records.add(metrics, waited)
    self.in_flight.append(metrics['loss'])
    step = self.step = step + 1
    r.profiler.after(step, self.state)
    # One reading per step (on every process, of an agreed step where there
    # are several): a signal arriving later in this iteration is handled,
    # consistently, after the next step.
    stopping = stop.stop_at(step)
    checkpoint_now = d.is_checkpoint(step) or stopping is not None
    evaluate_now = d.is_eval(step) and not stopping
    # An evaluation or a checkpoint ends the log window, so the records of a
    # resumed run line up with those of an uninterrupted one.
    if d.is_log(step) or checkpoint_now or evaluate_now:
      records.close_window(step)
    reached = None
    if r.target > 0 and d.is_log(step):
      records.flush()  # Once per record: the newest training error.
      if (records.last_train_err is not None and
          records.last_train_err <= r.target):
        reached = records.last_train_err
        evaluate_now = checkpoint_now = True
    if evaluate_now or checkpoint_now:
      # Every window is logged first, so a diverged run never evaluates and
      # a non-finite loss is caught before its state could be saved.
      records.flush()
    if evaluate_now:
      self.last_eval = self.evaluate(step, self.lr)
    if checkpoint_now:
      self.save(step, reached)
    if reached is not None:
      logging.info('Training error %.2f%% reached the target %g%% at step %d '
                   '(epoch %.2f): stopped; this run is finished.',
                   100 * reached, 100 * r.target, step, d.epoch(step))
      return _REACHED
    if stopping:
      r.ckpt.wait()
      logging.warning('%s: saved checkpoint %d in %s and stopped (exit '
                      'status %d); rerun the same command to resume.',
                      stopping, step, r.ckpt.directory,
                      preemption.EXIT_PREEMPTED)
      return {'stopped_by': stopping, 'step': step}
    return None


def _train_record(window, step, steps_per_epoch, batch_size, seconds):
  record = {'step': step, 'epoch': step / steps_per_epoch, 'split': 'train',
            'lr': float(window[-1]['lr']),
            'img_per_sec': len(window) * batch_size / max(seconds, 1e-9)}
  for k in ('loss', 'top1_err', 'top5_err', 'grad_norm'):
    record[k] = float(np.mean([m[k] for m in window]))
  if 'skipped' in window[0]:  # float16: the steps an overflow skipped.
    applied = [m for m in window if not m['skipped']]
    record['skipped_steps'] = len(window) - len(applied)
    record['loss_scale'] = float(window[-1]['loss_scale'])
    # Averages over the steps applied (None if none was): a skipped step's
    # forward pass may itself have overflowed, and its loss says nothing.
    for k in ('loss', 'top1_err', 'top5_err', 'grad_norm'):
      record[k] = (float(np.mean([m[k] for m in applied])) if applied else
                   None)
  return record


def parse_profile_steps(text: str):
  """'A:B' -> (A, B): trace global steps A+1 .. B (after A steps, until B);
  '' -> None."""
  if not text:
    return None
  try:
    first, last = (int(x) for x in text.split(':'))
  except ValueError:
    first, last = -1, -1
  if not 0 <= first < last:
    raise errors.ConfigError(
        f"profile_steps={text!r}: use 'A:B' with 0 <= A < B (global steps, "
        "e.g. '10:20'), or '' (off).")
  return first, last


class Profiler:
  """A jax.profiler trace of the steps `profile_steps` names, written under
  the workdir (TensorBoard's profile tab or Perfetto read it)."""

  def __init__(self, profile_steps: str, directory: str):
    self.steps = parse_profile_steps(profile_steps)
    self.directory = directory
    self.active = False

  def before(self, step: int):
    """Called before step `step` + 1 is dispatched."""
    if self.steps and step == self.steps[0] and jax.process_index() == 0:
      jax.profiler.start_trace(self.directory)
      self.active = True

  def after(self, step: int, state):
    """Called once `step` steps have been dispatched."""
    if self.active and step >= self.steps[1]:
      jax.block_until_ready(state)  # The traced steps have finished.
      self.close()
      logging.info('Profile of steps %d-%d written to %s.',
                   self.steps[0] + 1, self.steps[1], self.directory)

  def close(self):
    if self.active:
      self.active = False
      jax.profiler.stop_trace()
