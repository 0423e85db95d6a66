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
same process, eager and under `torch.compile` (`torch_twin.py`; skip the latter
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

import dataclasses
import functools
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags

from alexnet_jax import cli
from alexnet_jax import errors
from alexnet_jax import input_pipeline
from alexnet_jax import model as model_lib
from alexnet_jax import parallel
from alexnet_jax import synthetic
from alexnet_jax import timing

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


def matmul_peak_gflops(dtype: str = 'float32', n: int = 0,
                       repeats: int = 5) -> float:
  """A jitted n x n matmul in `dtype` on the default device: a practical
  peak where no published one is known (CPUs). n: 2048 on CPU, 8192 on an
  accelerator (a small one would not fill it)."""
  n = n or (2048 if jax.default_backend() == 'cpu' else 8192)
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
  f = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(f(a, a))
  t = min(timing.timed(lambda: jax.block_until_ready(f(a, a)))
          for _ in range(repeats))
  return 2 * n ** 3 / t / 1e9


def device_peak_memory_gb(mesh):
  """The mesh's local devices' peak memory so far (parallel.peak_memory_gb)."""
  return parallel.peak_memory_gb(mesh.local_devices)


@dataclasses.dataclass
class CompiledStep:
  """A compiled train step on a synthetic set-up; `run` moves its state on."""
  setup: synthetic.Setup
  compiled: Any

  def run(self, n: int = 1):
    """n steps dispatched back to back; waits once, for the last."""
    s = self.setup
    for _ in range(n):
      s.state, metrics = self.compiled(s.state, s.batch, s.stats, s.key)
    jax.block_until_ready(metrics)


def bench_train(config, steps, warmup, devices=None):
  """The train step: compiled, then `steps` back to back, blocked once.

  Returns (the figures, the CompiledStep).
  """
  setup = synthetic.setup(config, devices)
  mesh, model, batch = setup.mesh, setup.model, config.batch_size
  t = time.perf_counter()
  compiled = setup.steps.train_step.lower(
      setup.state, setup.batch, setup.stats, setup.key).compile()
  compile_seconds = time.perf_counter() - t
  step = CompiledStep(setup, compiled)
  memory = compiled.memory_analysis()
  step.run(max(warmup, 1))
  seconds = timing.timed(lambda: step.run(steps))
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
  return result, step


def bench_jax(config, steps, warmup):
  """Train and eval throughput of the jitted, sharded steps: (the figures,
  a function that runs one more train step)."""
  result, step = bench_train(config, steps, warmup)
  setup, batch = step.setup, config.batch_size
  eval_data = synthetic.batch(config, setup.mesh, batch, mask=True)
  params = setup.state.params
  for crops, name in ((1, 'eval_img_per_sec'), (10, 'eval10_img_per_sec')):
    run = functools.partial(setup.steps.eval_step, params, eval_data,
                            setup.stats, crops=crops)
    jax.block_until_ready(run())
    result[name] = batch / timing.median_time(
        lambda: jax.block_until_ready(run()), max(1, steps // 2))
  result['num_params'] = model_lib.count_params(setup.state.params)
  return result, step.run


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
  figures, train_once = bench_jax(config, steps, warmup)
  result.update(figures)
  steps_of = {'jax': train_once}
  if vs_torch:
    from alexnet_jax import torch_twin  # pylint: disable=g-import-not-at-top
    figures, steps_of['torch'] = torch_twin.bench_train(config, steps, warmup)
    result.update(figures)
    if torch_compile:
      try:
        figures, once = torch_twin.bench_train(config, steps, warmup,
                                               compiled=True)
        result.update(figures)
        steps_of['torch_compile'] = once
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
        times[name].append(timing.timed(once))
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
