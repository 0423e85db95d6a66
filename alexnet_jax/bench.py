"""Throughput and memory benchmarks; each prints one JSON object.

  python -m alexnet_jax.bench --config configs/ilsvrc2012.py [--config.k=v ...] \
      [--dtype bfloat16] [--batch_sizes 128,256,512] [--vs-torch] [--steps 5]
  python -m alexnet_jax.bench --sweep --config configs/ilsvrc2012.py
  python -m alexnet_jax.bench --pipeline --config CONFIG [--config.k=v ...] \
      [--batches 50]

The first measures, on synthetic data of the config's shapes (so no dataset
is needed): the jitted, sharded train step (`train_img_per_sec`: `--steps`
steps dispatched back to back and waited for once at the end, as training
runs them), evaluation with the centre crop and with 10 crops, compile time,
peak memory (the device's own count where its backend reports one, and the
process's RSS), and achieved GFLOP/s from the model's counted multiply-adds
against the device's peak: from a table of published peaks for known
accelerators (`PEAK_TFLOPS`), else a matmul of the compute dtype measured in
the same run (CPU). `--batch_sizes` measures several batches one after
another (a list under "batches"). `--vs-torch` trains the same two-tower
network (groups=2 convolutions, the paper's LRN per tower) in PyTorch in the
same process, eager and under `torch.compile` (`bench_torch`; skip the latter
with `--notorch_compile`), on CUDA when both frameworks see a GPU;
`train_speedup_vs_torch` and `train_speedup_vs_torch_compile` are the median
ratios of step times measured in alternation (JAX step, eager step, compiled
step, ...), so all see the same machine load (each one's median seconds:
`jax_alternating_step_s`, `torch_alternating_step_s`, ...). Warm-up and
compilation are excluded from the step times; compile times are reported
separately (`compile_seconds`, `torch_compile_seconds`).

`--sweep` runs the train step over dtype x batch x mesh on every local device
and writes the table to `experiments/results/bench/<device>.json` (`--out`).

`--pipeline` measures the host input path on the config's real, prepared
dataset, read from its store's files (`bench_pipeline`), beside the JPEG path
it replaced on the same images; e.g. with your own images:
`--config configs/image_folder.py --config.data_dir=DIR
--config.model.num_classes=N`.
"""

import functools
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from alexnet_jax import cli
from alexnet_jax import errors
from alexnet_jax import four_layer_cnn
from alexnet_jax import input_pipeline
from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import parallel
from alexnet_jax import steps as steps_lib
from alexnet_jax.datasets import stats as stats_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a config file.')
flags.DEFINE_integer('steps', 5, 'Timed train steps, run back to back.')
flags.DEFINE_integer('warmup', 1, 'Untimed steps after compilation.')
flags.DEFINE_string('dtype', None, "Compute dtype, 'float32', 'bfloat16' or "
                    "'float16' (default: the config's model.dtype).")
flags.DEFINE_list('batch_sizes', None, 'Global batch sizes to measure, one '
                  'after another (default: the config\'s batch_size).')
flags.DEFINE_bool('vs_torch', False, 'Also train the same model in PyTorch, '
                  'eager and under torch.compile.')
flags.DEFINE_bool('torch_compile', True, '--vs-torch: also time the '
                  'torch.compile twin (inductor; needs a C++ compiler on CPU).')
flags.DEFINE_bool('sweep', False, 'dtype x batch x mesh table of the train '
                  'step, written to experiments/results/bench/<device>.json.')
flags.DEFINE_string('out', None, '--sweep: where to write the table.')
flags.DEFINE_bool('pipeline', False, 'Measure only the host input pipeline '
                  "on the config's prepared dataset.")
flags.DEFINE_integer('batches', 50, 'Batches timed by --pipeline.')
flags.register_validator('steps', lambda n: n >= 1, '--steps must be >= 1')

# Dense peak TFLOP/s by device kind and compute dtype, from the vendors'
# datasheets (NVIDIA H100/H200 SXM, A100 SXM, V100 SXM2, T4; Google Cloud TPU
# v4, v5e, v5p; float16 and bfloat16 on the tensor cores). float32 at the
# default matmul precision runs as TF32 on Ampere and Hopper and as bfloat16
# passes on TPU; 'float32_highest' is true float32. Matched as substrings of
# `device.device_kind`, first match wins.
PEAK_TFLOPS = (
    ('H100 PCIe', {'bfloat16': 756.0, 'float16': 756.0, 'float32': 378.0,
                   'float32_highest': 51.2}),
    ('H100 NVL', {}),  # Not in the table: no fraction rather than a wrong one.
    ('H100', {'bfloat16': 989.4, 'float16': 989.4, 'float32': 494.7,
              'float32_highest': 66.9}),
    ('H200', {'bfloat16': 989.4, 'float16': 989.4, 'float32': 494.7,
              'float32_highest': 66.9}),
    ('A100', {'bfloat16': 312.0, 'float16': 312.0, 'float32': 156.0,
              'float32_highest': 19.5}),
    ('V100', {'float16': 125.0, 'float32': 15.7, 'float32_highest': 15.7}),
    ('T4', {'float16': 65.0, 'float32': 8.1, 'float32_highest': 8.1}),
    ('TPU v4', {'bfloat16': 275.0, 'float32': 275.0}),
    ('TPU v5 lite', {'bfloat16': 197.0, 'float32': 197.0}),
    ('TPU v5e', {'bfloat16': 197.0, 'float32': 197.0}),
    ('TPU v5p', {'bfloat16': 459.0, 'float32': 459.0}),
    ('TPU v5', {'bfloat16': 459.0, 'float32': 459.0}),
)


def peak_tflops(device_kind: str, dtype: str, precision: str = 'default'):
  """The table's peak for a device and dtype, or None if not known."""
  key = dtype
  if dtype == 'float32' and precision in ('highest', 'float32'):
    key = 'float32_highest'
  elif dtype == 'float32' and precision != 'default':
    key = 'float32_' + precision  # Not in the table: unknown.
  for kind, peaks in PEAK_TFLOPS:
    if kind.lower() in device_kind.lower():
      return peaks.get(key)
  return None


def _median_time(fn, steps, warmup):
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def matmul_peak_gflops(dtype: str = 'float32', n: int = 0,
                       repeats: int = 5) -> float:
  """A jitted n x n matmul in `dtype` on the default device: a practical
  peak where no published one is known (CPUs). n: 2048 on CPU, 8192 on an
  accelerator (a small one would not fill it)."""
  n = n or (2048 if jax.default_backend() == 'cpu' else 8192)
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
  f = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(f(a, a))
  t = min(_timed(lambda: jax.block_until_ready(f(a, a)))
          for _ in range(repeats))
  return 2 * n ** 3 / t / 1e9


def _timed(fn):
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def synthetic_batch(config, mesh, batch: int, mask: bool = False):
  """Random uint8 images and labels of the config's shapes, on the mesh."""
  rng = np.random.RandomState(0)
  size = config.image_size
  host = {'image': rng.randint(0, 256, (batch, size, size, 3), np.uint8),
          'label': rng.randint(0, config.model.num_classes, (batch,)
                               ).astype(np.int32)}
  if mask:
    host['mask'] = np.ones((batch,), np.float32)
  return input_pipeline.to_global(host, mesh)


def synthetic_stats(config, mesh):
  size = config.image_size
  eigvecs, _ = np.linalg.qr(np.random.RandomState(0).normal(size=(3, 3)))
  return jax.device_put(
      stats_lib.Stats(mean=jnp.full((size, size, 3), 110.0, jnp.float32),
                      eigvals=jnp.array([0.2, 0.02, 0.005], jnp.float32),
                      eigvecs=jnp.asarray(eigvecs, jnp.float32)),
      parallel.replicated(mesh))


def device_peak_memory_gb(mesh):
  """The mesh's local devices' peak memory so far (parallel.peak_memory_gb)."""
  return parallel.peak_memory_gb(mesh.local_devices)


def bench_train(config, steps, warmup, devices=None):
  """The train step: compiled, then `steps` back to back, blocked once."""
  mesh = parallel.create_mesh(config.mesh.data, config.mesh.model, devices)
  model = model_lib.create_model(config.model)
  tx, _ = optim.create(config, steps_per_epoch=1000)
  step_lib = steps_lib.create(config, model, tx, mesh)
  state = step_lib.init_state(jax.random.key(0))
  batch = config.batch_size
  data = synthetic_batch(config, mesh, batch)
  stats = synthetic_stats(config, mesh)
  key = jax.random.key(1)

  t = time.perf_counter()
  compiled = step_lib.train_step.lower(state, data, stats, key).compile()
  compile_seconds = time.perf_counter() - t
  holder = {'state': state}
  memory = compiled.memory_analysis()

  def run(n):
    """n steps dispatched back to back; waits once, for the last."""
    s = holder['state']
    for _ in range(n):
      s, metrics = compiled(s, data, stats, key)
    holder['state'] = s
    jax.block_until_ready(metrics)

  run(max(warmup, 1))
  seconds = _timed(lambda: run(steps))
  train_rate = batch * steps / seconds
  macs = model_lib.forward_macs(model)
  gflops = train_rate * 2 * model_lib.train_macs(model) / 1e9
  device = mesh.devices.flat[0]
  peak = peak_tflops(device.device_kind, config.model.dtype,
                     config.model.matmul_precision)
  result = dict(
      batch=batch, dtype=config.model.dtype, mesh=dict(mesh.shape),
      train_img_per_sec=train_rate,
      train_step_ms=1000 * seconds / steps,
      train_steps_timed=steps,
      compile_seconds=compile_seconds,
      forward_gmacs_per_image=macs / 1e9,
      gflops_per_sec=gflops,
      devices=f'{mesh.devices.size} x {device.device_kind}',
      # What the compiled step needs on one device (XLA's own account):
      # its arguments, outputs and temporaries, less the donated buffers.
      step_memory_gb=(None if memory is None else (
          memory.argument_size_in_bytes + memory.output_size_in_bytes +
          memory.temp_size_in_bytes - memory.alias_size_in_bytes) / 1e9),
      # The backend's peak over the process so far (not reset between
      # measurements); None where it keeps none (CPU).
      device_peak_memory_gb=device_peak_memory_gb(mesh))
  if peak is not None:
    # The table's peak is per device; the step runs on all of the mesh's.
    total = peak * 1000 * mesh.devices.size
    result.update(peak_gflops=total, peak_source='published (PEAK_TFLOPS)',
                  fraction_of_peak=gflops / total)
  return result, (step_lib, model, mesh, holder, compiled, data, stats, key)


def bench_jax(config, steps, warmup):
  """Train and eval throughput of the jitted, sharded steps."""
  result, (step_lib, model, mesh, holder, compiled, data, stats,
           key) = bench_train(config, steps, warmup)
  batch = config.batch_size
  eval_data = synthetic_batch(config, mesh, batch, mask=True)
  params = holder['state'].params
  for crops, name in ((1, 'eval_img_per_sec'), (10, 'eval10_img_per_sec')):
    run = functools.partial(step_lib.eval_step, params, eval_data, stats,
                            crops=crops)
    jax.block_until_ready(run())
    result[name] = batch / _median_time(
        lambda: jax.block_until_ready(run()), max(1, steps // 2), 0)

  def train_once():
    holder['state'], metrics = compiled(holder['state'], data, stats, key)
    jax.block_until_ready(metrics)

  result.update(
      num_params=model_lib.count_params(holder['state'].params),
      _train_once=train_once)
  return result


def bench_pipeline(config, batches: int = 50) -> dict:
  """The host input path on the config's prepared dataset, from its files.

  `pipeline_img_per_sec`: from a fresh training stream's first batch to
  `batches` batches later, each a numpy batch ready for
  `make_array_from_process_local_data` (what the training loop is given).
  `pipeline_jpeg_img_per_sec`: the path the store replaced, on the same
  images: the source (a tfds dataset's records, or an image folder's files)
  decoded and resized on every core, as the store is written from it.
  Prepares the dataset and its store first if needed (not timed).
  """
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
      yield from store_lib.source_batches(config, config.train_split)

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


def torch_twin(model):
  """The same network in PyTorch (NCHW), for any registered architecture."""
  if isinstance(model, four_layer_cnn.FourLayerCNN):
    return torch_four_layer_cnn(model)
  return torch_alexnet(model)


def torch_four_layer_cnn(model):
  """Figure 1's four-layer net in PyTorch: cuda-convnet's pools, whose last
  window hangs over the edge, are ceil_mode pools (32 -> 16 -> 8 -> 4)."""
  from torch import nn  # pylint: disable=g-import-not-at-top
  act = nn.ReLU if model.activation == 'relu' else nn.Tanh
  (_, f1, _), (_, f2, _), (_, f3, _) = four_layer_cnn.CONVS
  size = model.input_size
  for _ in range(3):
    size = (size - 2) // 2 + 1
  return nn.Sequential(
      nn.Conv2d(3, f1, 5, 1, 2), nn.MaxPool2d(3, 2, ceil_mode=True), act(),
      nn.Conv2d(f1, f2, 5, 1, 2), act(),
      nn.AvgPool2d(3, 2, ceil_mode=True, count_include_pad=False),
      nn.Conv2d(f2, f3, 5, 1, 2), act(),
      nn.AvgPool2d(3, 2, ceil_mode=True, count_include_pad=False),
      nn.Flatten(), nn.Linear(f3 * size * size, model.num_classes))


def torch_alexnet(model: model_lib.AlexNet):
  """The same network in PyTorch (NCHW), as a user would write it."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  t = model.towers
  s1, s2, s3, s4, s5, s6, s7, s8 = model.specs()
  # torch divides alpha by n: pass alpha * n for the paper's formula.
  lrn = model.lrn
  alpha = lrn.alpha if lrn.alpha_over_n else lrn.alpha * lrn.n

  class TowerLRN(nn.Module):
    """LRN whose window stays inside each tower's channels."""

    def __init__(self):
      super().__init__()
      self.lrn = nn.LocalResponseNorm(lrn.n, alpha, lrn.beta, lrn.k)

    def forward(self, x):
      if not lrn.enabled:
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


def torch_device():
  """'cuda' when PyTorch and jax both see an NVIDIA GPU, else 'cpu'."""
  import torch  # pylint: disable=g-import-not-at-top
  if torch.cuda.is_available() and jax.default_backend() == 'gpu':
    return 'cuda'
  return 'cpu'


def bench_torch(config, steps, warmup, compiled: bool = False):
  """The PyTorch twin's train step on the same device kind.

  Eager, or with `compiled` as `torch.compile` (inductor) users run it: the
  loss function (the model and the cross-entropy) compiled, which compiles
  its backward pass too (AOTAutograd), and the optimiser's step compiled
  separately, as PyTorch's "Compiling the optimizer" tutorial does. Compile
  time (`torch_compile_seconds`: the warm-up steps' time less as many timed
  steps) is kept out of the step times.

  On CUDA: bfloat16 or float16 (with torch.amp.GradScaler) through autocast
  when model.dtype says so, and TF32
  for float32 products unless model.matmul_precision is 'highest' (as XLA
  does on Ampere and Hopper). Each step is synchronised. (main() keeps jax
  from preallocating the GPU's memory when --vs-torch is given.)
  """
  import torch  # pylint: disable=g-import-not-at-top
  device = torch_device()
  if device == 'cpu':
    torch.set_num_threads(os.cpu_count() or 1)
  else:
    tf32 = config.model.matmul_precision in (
        'default', 'high', 'tensorfloat32')
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True
  model = model_lib.create_model(config.model)
  torch.manual_seed(0)
  net = torch_twin(model).to(device)
  opt = torch.optim.SGD(net.parameters(), lr=config.learning_rate,
                        momentum=config.momentum,
                        weight_decay=config.weight_decay)
  size, batch = config.model.input_size, config.batch_size
  x = torch.randn(batch, 3, size, size, device=device)
  y = torch.randint(0, config.model.num_classes, (batch,), device=device)
  cross_entropy = torch.nn.CrossEntropyLoss()
  half = {'bfloat16': torch.bfloat16,
          'float16': torch.float16}.get(config.model.dtype)
  # float16 with PyTorch's dynamic loss scale, as ours (loss_scale.py).
  scaler = torch.amp.GradScaler(device,
                                enabled=config.model.dtype == 'float16')

  def loss_of(x, y):
    with torch.autocast(device, dtype=half or torch.float32,
                        enabled=half is not None):
      return cross_entropy(net(x), y)

  def opt_step():
    opt.step()

  if compiled:
    loss_of, opt_step = torch.compile(loss_of), torch.compile(opt_step)

  def train_once():
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss_of(x, y)).backward()
    if scaler.is_enabled():  # Skips the step on an overflow (uncompiled).
      scaler.step(opt)
      scaler.update()
    else:
      opt_step()
    if device == 'cuda':
      torch.cuda.synchronize()

  # Compiled, the optimiser's step is compiled again once its momentum
  # buffers exist (the second step): warm up past that.
  warm = max(warmup, 3 if compiled else 1)
  warm_seconds = _timed(lambda: [train_once() for _ in range(warm)])
  step_seconds = _median_time(train_once, steps, 0)
  name = 'torch_compile' if compiled else 'torch'
  result = {f'{name}_train_img_per_sec': batch / step_seconds,
            'torch_version': torch.__version__, 'torch_device': device,
            '_train_once': train_once}
  if compiled:
    result['torch_compile_seconds'] = max(warm_seconds - warm * step_seconds,
                                          0.0)
    result['torch_compiled'] = (
        'loss (model + cross-entropy) with its backward, and the SGD step; '
        'inductor, default mode')
  return result


def _with(config, dtype=None, batch=None, mesh=None):
  config = config.copy_and_resolve_references()
  if dtype:
    config.model.dtype = dtype
  if batch:
    config.batch_size = int(batch)
    config.eval_batch_size = int(batch)
  if mesh:
    config.mesh.data, config.mesh.model = mesh
  return config


def run(config, steps=5, warmup=1, vs_torch=False, torch_compile=True):
  """All measurements as one dict (what the command prints)."""
  result = {'batch': config.batch_size,
            'input_size': config.model.input_size,
            'arch': config.model.arch,
            'layout': config.model.layout,
            'dtype': config.model.dtype}
  result.update(bench_jax(config, steps, warmup))
  steps_of = {'jax': result.pop('_train_once')}
  if vs_torch:
    result.update(bench_torch(config, steps, warmup))
    steps_of['torch'] = result.pop('_train_once')
    if torch_compile:
      try:
        result.update(bench_torch(config, steps, warmup, compiled=True))
        steps_of['torch_compile'] = result.pop('_train_once')
      except Exception as e:  # pylint: disable=broad-except
        # Inductor needs a C++ compiler on CPU; keep the eager comparison.
        result['torch_compile_error'] = (
            f'{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}')
        print(f'torch.compile failed, compared with eager only: '
              f'{result["torch_compile_error"]}', file=sys.stderr)
    # The machines are shared and noisy: time the frameworks' steps in
    # alternation and report the median of the per-round ratios.
    times = {name: [] for name in steps_of}
    for _ in range(steps):
      for name, once in steps_of.items():
        times[name].append(_timed(once))
    for name in steps_of:
      result[f'{name}_alternating_step_s'] = statistics.median(times[name])
      if name != 'jax':
        ratios = [t / j for t, j in zip(times[name], times['jax'])]
        result[f'train_speedup_vs_{name}'] = statistics.median(ratios)
        result[f'train_speedup_vs_{name}_pairs'] = ratios
  result['matmul_peak_gflops'] = matmul_peak_gflops(config.model.dtype)
  result['gflops_fraction_of_matmul_peak'] = (
      result['gflops_per_sec'] / result['matmul_peak_gflops'])
  result['peak_rss_mb'] = resource.getrusage(
      resource.RUSAGE_SELF).ru_maxrss / 1024
  return result


def sweep_meshes(num_devices: int):
  """(data, model) over every device: data parallel, and towers split."""
  meshes = [(num_devices, 1)]
  if num_devices % 2 == 0:
    meshes.append((num_devices // 2, 2))
  return meshes


def sweep(config, batch_sizes=None, dtypes=('float32', 'bfloat16'),
          steps=5, warmup=1, log=print, out=None):
  """The train step over dtype x batch x mesh, on synthetic data.

  The table is rewritten to `out` (a JSON path) after every row, so a run
  cut short keeps what it measured.
  """
  device = jax.local_devices()[0]
  accelerator = device.platform != 'cpu'
  if not batch_sizes:
    batch_sizes = (128, 256, 512, 1024) if accelerator else (32, 128)
  precision = config.model.matmul_precision
  rows = []
  table = {
      'device_kind': device.device_kind, 'platform': device.platform,
      'local_devices': jax.local_device_count(),
      'jax_version': jax.__version__, 'commit': _commit(),
      'layout': config.model.layout, 'input_size': config.model.input_size,
      'matmul_precision': precision, 'steps_timed': steps,
      'peak_tflops_per_device': {d: peak_tflops(device.device_kind, d,
                                                precision) for d in dtypes},
      'rows': rows}
  for mesh in sweep_meshes(jax.local_device_count()):
    for dtype in dtypes:
      for batch in batch_sizes:
        c = _with(config, dtype, batch, mesh)
        row = {'mesh': f'{mesh[0]}x{mesh[1]}', 'dtype': dtype,
               'batch': int(batch)}
        try:
          result, _ = bench_train(c, steps, warmup)
        except (errors.UserError, ValueError) as e:
          row['error'] = str(e).splitlines()[0]
        except jax.errors.JaxRuntimeError as e:  # Out of memory, mostly.
          row['error'] = str(e).splitlines()[0][:300]
        else:
          row.update({k: result.get(k) for k in (
              'train_img_per_sec', 'train_step_ms', 'compile_seconds',
              'gflops_per_sec', 'fraction_of_peak', 'step_memory_gb')})
        rows.append(row)
        log(' '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
                     for k, v in row.items()))
        if out:
          _write_json(out, table)
  return table


def _write_json(path, obj):
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    json.dump(obj, f, indent=1)
  os.replace(path + '.tmp', path)


def _commit():
  try:
    return subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True,
                          text=True, check=True, timeout=10,
                          cwd=os.path.dirname(__file__)).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None


def device_file_name(device_kind: str) -> str:
  """'NVIDIA H100 80GB HBM3' -> 'nvidia_h100_80gb_hbm3'."""
  return re.sub(r'[^a-z0-9]+', '_', device_kind.lower()).strip('_') or 'device'


def main(argv):
  del argv
  config = FLAGS.config
  if FLAGS.vs_torch:
    # PyTorch shares the GPU: jax takes memory as it needs it instead of
    # 75% of it up front (read when jax first starts the GPU, after this).
    os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  try:
    if FLAGS.dtype:
      config = _with(config, dtype=FLAGS.dtype)
    if FLAGS.pipeline:
      result = bench_pipeline(config, FLAGS.batches)
    elif FLAGS.sweep:
      out = FLAGS.out or os.path.join(
          'experiments', 'results', 'bench',
          device_file_name(jax.local_devices()[0].device_kind) + '.json')
      result = sweep(config, FLAGS.batch_sizes,
                     (FLAGS.dtype,) if FLAGS.dtype else ('float32', 'bfloat16'),
                     FLAGS.steps, FLAGS.warmup,
                     log=lambda line: print(line, file=sys.stderr, flush=True),
                     out=out)
      print(f'wrote {out}', file=sys.stderr)
    elif FLAGS.batch_sizes:
      result = {'batches': []}
      for b in FLAGS.batch_sizes:  # One failing batch keeps the others.
        try:
          row = run(_with(config, batch=b), FLAGS.steps, FLAGS.warmup,
                    FLAGS.vs_torch, FLAGS.torch_compile)
        except (jax.errors.JaxRuntimeError, RuntimeError) as e:
          row = {'batch': int(b), 'error': str(e).splitlines()[0][:300]}
        result['batches'].append(row)
        print(json.dumps(row, sort_keys=True), file=sys.stderr, flush=True)
    else:
      result = run(config, FLAGS.steps, FLAGS.warmup, FLAGS.vs_torch,
                   FLAGS.torch_compile)
  except (errors.UserError, ValueError) as e:
    cli.fail(str(e).splitlines()[0], prog='alexnet_jax.bench')
  print(json.dumps(result, indent=1, sort_keys=True))


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=functools.partial(cli.parse_flags,
                                               prog='alexnet_jax.bench'))
