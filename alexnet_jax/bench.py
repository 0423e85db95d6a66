"""Throughput and memory benchmarks; each prints one JSON object.

  python -m alexnet_jax.bench --config configs/ilsvrc2012.py [--config.k=v ...] \
      [--vs-torch] [--steps 5]
  python -m alexnet_jax.bench --pipeline --config CONFIG [--config.k=v ...] \
      [--batches 50]

The first measures, on synthetic data of the config's shapes (so no dataset
is needed): the jitted, sharded train step (`train_img_per_sec`), evaluation
with the centre crop and with 10 crops, compile time, peak memory, and
achieved GFLOP/s from the model's counted multiply-adds against a numpy
float32 matmul measured in the same run. `--vs-torch` trains the same
two-tower network (groups=2 convolutions, the paper's LRN per tower) in
PyTorch eager in the same process; `train_speedup_vs_torch` is the median
ratio of step times measured in alternation (JAX step, PyTorch step, ...), so
both see the same machine load. Warm-up excluded; medians of `--steps` timed
steps.

`--pipeline` measures the host input path on the config's real, prepared
dataset, read from its store's files (`bench_pipeline`), beside the JPEG path
it replaced on the same images; e.g. with your own images:
`--config configs/image_folder.py --config.data_dir=DIR
--config.model.num_classes=N`.
"""

import json
import os
import resource
import statistics
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from alexnet_jax import errors
from alexnet_jax import input_pipeline
from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import parallel
from alexnet_jax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a config file.')
flags.DEFINE_integer('steps', 5, 'Timed steps (the median is reported).')
flags.DEFINE_integer('warmup', 1, 'Untimed steps after compilation.')
flags.DEFINE_bool('vs_torch', False, 'Also train the same model in PyTorch.')
flags.DEFINE_bool('pipeline', False, 'Measure only the host input pipeline '
                  "on the config's prepared dataset.")
flags.DEFINE_integer('batches', 50, 'Batches timed by --pipeline.')


def _median_time(fn, steps, warmup):
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def matmul_peak_gflops(n=2048, repeats=5) -> float:
  """numpy float32 matmul throughput: the machine's practical peak."""
  a = np.random.rand(n, n).astype(np.float32)
  b = np.random.rand(n, n).astype(np.float32)
  a @ b
  t = min(_timed(lambda: a @ b) for _ in range(repeats))
  return 2 * n ** 3 / t / 1e9


def _timed(fn):
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def bench_jax(config, steps, warmup):
  """Train and eval throughput of the jitted, sharded steps."""
  mesh = parallel.create_mesh(config.mesh.data, config.mesh.model)
  model = model_lib.create_model(config.model)
  tx, _ = optim.create(config, steps_per_epoch=1000)
  step_lib = train.Steps(config, model, tx, mesh)
  state = step_lib.init_state(jax.random.key(0))
  size, batch = config.image_size, config.batch_size
  rng = np.random.RandomState(0)
  host = {'image': rng.randint(0, 256, (batch, size, size, 3), np.uint8),
          'label': rng.randint(0, config.model.num_classes, (batch,)
                               ).astype(np.int32)}
  data = input_pipeline.to_global(host, mesh)
  eigvecs, _ = np.linalg.qr(rng.normal(size=(3, 3)))
  stats = jax.device_put(
      {'mean': jnp.full((size, size, 3), 110.0, jnp.float32),
       'eigvals': jnp.array([0.2, 0.02, 0.005], jnp.float32),
       'eigvecs': jnp.asarray(eigvecs, jnp.float32)},
      parallel.replicated(mesh))
  key = jax.random.key(1)

  t = time.perf_counter()
  compiled = step_lib.train_step.lower(state, data, stats, key).compile()
  compile_seconds = time.perf_counter() - t
  holder = {'state': state}

  def train_once():
    holder['state'], metrics = compiled(holder['state'], data, stats, key)
    jax.block_until_ready(metrics)

  train_time = _median_time(train_once, steps, warmup)
  result = {'_train_once': train_once}

  eval_data = input_pipeline.to_global(
      dict(host, mask=np.ones((batch,), np.float32)), mesh)
  for crops, name in ((1, 'eval_img_per_sec'), (10, 'eval10_img_per_sec')):
    eval_config = config.copy_and_resolve_references()
    eval_config.eval_crops = crops
    eval_steps = train.Steps(eval_config, model, tx, mesh)
    eval_steps.state_sharding = step_lib.state_sharding
    fn = eval_steps.eval_step
    params = holder['state'].params
    jax.block_until_ready(fn(params, eval_data, stats))
    result[name] = batch / _median_time(
        lambda: jax.block_until_ready(fn(params, eval_data, stats)),
        max(1, steps // 2), 0)
  macs = model_lib.forward_macs(model)
  train_rate = batch / train_time
  result.update(
      train_img_per_sec=train_rate,
      compile_seconds=compile_seconds,
      num_params=model_lib.count_params(holder['state'].params),
      forward_gmacs_per_image=macs / 1e9,
      # Training costs about three forward passes (forward, and the
      # backward's two products: input and weight gradients).
      gflops_per_sec=train_rate * 3 * 2 * macs / 1e9,
      mesh=dict(mesh.shape),
      devices=f'{mesh.devices.size} x {jax.devices()[0].device_kind}',
  )
  return result


def bench_pipeline(config, batches: int = 50) -> dict:
  """The host input path on the config's prepared dataset, from its files.

  `pipeline_img_per_sec`: from a fresh training stream's first batch to
  `batches` batches later, each a numpy batch ready for
  `make_array_from_process_local_data` (what the training loop is given).
  `pipeline_jpeg_img_per_sec`: the path the store replaced, on the same
  images: tfds records decoded and resized by tf.data on every core, batched.
  Prepares the dataset and its store first if needed (not timed).
  """
  from alexnet_jax.datasets import source  # pylint: disable=g-import-not-at-top
  from alexnet_jax.datasets import store as store_lib  # pylint: disable=g-import-not-at-top
  data = store_lib.get(config, splits=[config.train_split])
  split = data.split(config.train_split)
  cores = input_pipeline.host_cores()
  used = min(input_pipeline.workers(config), cores)

  def timed(iterator, batch):
    next(iterator)  # The first batch: start-up is not throughput.
    t, cpu = time.perf_counter(), time.process_time()
    images = 0
    for _ in range(batches):
      images += len(next(iterator)[batch])
    seconds = time.perf_counter() - t
    return images / seconds, (time.process_time() - cpu) / seconds

  rate, cpu = timed(input_pipeline.train_stream(split, config), 'image')
  def jpeg_path():  # Epoch after epoch, as training read it.
    while True:
      yield from source.preprocessed(data.builder, config.train_split,
                                     config.image_size,
                                     config.batch_size // jax.process_count())

  jpeg_rate, jpeg_cpu = timed(jpeg_path(), 'image')
  prepare_seconds = split.meta.get('prepare_seconds')
  return {
      'pipeline_img_per_sec': rate,
      'pipeline_cores': used,
      'pipeline_img_per_sec_per_core': rate / used,
      'pipeline_cpu_busy': cpu,  # CPU seconds per second: cores kept busy.
      'pipeline_bytes_per_image': split.bytes_per_image,
      'pipeline_store': split.path,
      'pipeline_store_format': split.format,
      'pipeline_batches': batches,
      'pipeline_batch': config.batch_size // jax.process_count(),
      'pipeline_images_in_split': len(split),
      'pipeline_jpeg_img_per_sec': jpeg_rate,
      'pipeline_jpeg_img_per_sec_per_core': jpeg_rate / cores,
      'pipeline_jpeg_cpu_busy': jpeg_cpu,
      'pipeline_speedup_vs_jpeg': rate / jpeg_rate,
      'prepare_img_per_sec': (len(split) / max(prepare_seconds, 1e-3)
                              if prepare_seconds is not None else None),
      'host_cores': cores,
  }


def torch_alexnet(model: model_lib.AlexNet):
  """The same network in PyTorch (NCHW), as a user would write it."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  t = model.towers
  s1, s2, s3, s4, s5, s6, s7, s8 = model.specs()
  # torch divides alpha by n: pass alpha * n for the paper's formula.
  alpha = model.lrn_alpha if model.lrn_alpha_over_n else model.lrn_alpha * model.lrn_n

  class TowerLRN(nn.Module):
    """LRN whose window stays inside each tower's channels."""

    def __init__(self):
      super().__init__()
      self.lrn = nn.LocalResponseNorm(model.lrn_n, alpha, model.lrn_beta,
                                      model.lrn_k)

    def forward(self, x):
      if not model.lrn:
        return x
      return torch.cat([self.lrn(c) for c in x.chunk(t, dim=1)], dim=1)

  act = nn.ReLU if model.activation == 'relu' else nn.Tanh
  pool = lambda: nn.MaxPool2d(model.pool_window, model.pool_stride)
  net = nn.Sequential(
      nn.Conv2d(3, t * s1.features, 11, 4, model.padding1), act(),
      TowerLRN(), pool(),
      nn.Conv2d(t * s1.features, t * s2.features, 5, 1, 2, groups=t), act(),
      TowerLRN(), pool(),
      nn.Conv2d(t * s2.features, t * s3.features, 3, 1, 1), act(),
      nn.Conv2d(t * s3.features, t * s4.features, 3, 1, 1, groups=t), act(),
      nn.Conv2d(t * s4.features, t * s5.features, 3, 1, 1, groups=t), act(),
      pool(), nn.Flatten(),
      nn.Linear(t * s5.features * _pool5(model) ** 2, t * s6.features), act(),
      nn.Dropout(model.dropout_rate),
      nn.Linear(t * s6.features, t * s7.features), act(),
      nn.Dropout(model.dropout_rate),
      nn.Linear(t * s7.features, model.num_classes))
  return net


def _pool5(model):
  from alexnet_jax import ops  # pylint: disable=g-import-not-at-top
  return ops.feature_sizes(model.input_size, model.padding1,
                           model.pool_window, model.pool_stride)[-1]


def bench_torch(config, steps, warmup):
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count() or 1)
  model = model_lib.create_model(config.model)
  net = torch_alexnet(model)
  opt = torch.optim.SGD(net.parameters(), lr=config.learning_rate,
                        momentum=config.momentum,
                        weight_decay=config.weight_decay)
  size, batch = config.model.input_size, config.batch_size
  x = torch.randn(batch, 3, size, size)
  y = torch.randint(0, config.model.num_classes, (batch,))
  loss_fn = torch.nn.CrossEntropyLoss()

  def train_once():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(net(x), y)
    loss.backward()
    opt.step()

  return {'torch_train_img_per_sec':
              batch / _median_time(train_once, steps, warmup),
          'torch_version': torch.__version__, '_train_once': train_once}


def run(config, steps=5, warmup=1, vs_torch=False):
  """All measurements as one dict (what the command prints)."""
  result = {'batch': config.batch_size,
            'input_size': config.model.input_size,
            'layout': config.model.layout,
            'dtype': config.model.dtype}
  result.update(bench_jax(config, steps, warmup))
  jax_once = result.pop('_train_once')
  if vs_torch:
    result.update(bench_torch(config, steps, warmup))
    torch_once = result.pop('_train_once')
    # The machines are shared and noisy: time the two frameworks' steps in
    # alternation and report the median of the per-pair ratios.
    ratios = []
    for _ in range(steps):
      t_jax = _timed(jax_once)
      t_torch = _timed(torch_once)
      ratios.append(t_torch / t_jax)
    result['train_speedup_vs_torch'] = statistics.median(ratios)
    result['train_speedup_vs_torch_pairs'] = ratios
  result['matmul_peak_gflops'] = matmul_peak_gflops()
  result['gflops_fraction_of_matmul_peak'] = (
      result['gflops_per_sec'] / result['matmul_peak_gflops'])
  result['peak_rss_mb'] = resource.getrusage(
      resource.RUSAGE_SELF).ru_maxrss / 1024
  return result


def main(argv):
  del argv
  if FLAGS.pipeline:
    try:
      result = bench_pipeline(FLAGS.config, FLAGS.batches)
    except errors.UserError as e:
      print(f'alexnet_jax: error: {e}', file=sys.stderr)
      sys.exit(2)
  else:
    result = run(FLAGS.config, FLAGS.steps, FLAGS.warmup, FLAGS.vs_torch)
  print(json.dumps(result, indent=1, sort_keys=True))


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  # Accept the dashed spelling too (absl flag names use underscores).
  sys.argv = [a.replace('--vs-torch', '--vs_torch', 1) if a.startswith(
      '--vs-torch') else a for a in sys.argv]
  app.run(main)
