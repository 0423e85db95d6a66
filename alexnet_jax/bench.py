"""Throughput and memory benchmarks; each prints one JSON object.

  python -m alexnet_jax.bench --config configs/ilsvrc2012.py [--config.k=v ...] \
      [--dtype bfloat16] [--batch_sizes 128,256,512] [--vs-torch] [--steps 5]
  python -m alexnet_jax.bench --sweep --config configs/ilsvrc2012.py
  python -m alexnet_jax.bench --pipeline --config CONFIG [--config.k=v ...] \
      [--batches 50]

The first measures, on synthetic data of the config's shapes (so no dataset
is needed): the jitted, sharded train step (`train_img_per_sec`: `--steps`
steps dispatched back to back and waited for once at the end; training
keeps at most two in flight, one running and one queued), evaluation with
the centre crop and with 10 crops, compile time, peak memory (the device's
own count where its backend reports one, and the process's RSS), and
achieved GFLOP/s from the model's counted multiply-adds against the device's
peak: from a table of published peaks for known accelerators
(`peaks.PEAK_TFLOPS`), else a matmul of the compute dtype measured in the
same run (CPU). `--batch_sizes` measures several batches one after
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
dataset, read from its store's files (`pipeline_bench.py`), beside the JPEG path
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
from alexnet_jax import peaks
from alexnet_jax import pipeline_bench
from alexnet_jax import synthetic
from alexnet_jax import timing
from alexnet_jax.datasets import store as store_lib

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


def bench_train(setup: synthetic.Setup, steps: int, warmup: int):
  """The set-up's train step (synthetic.setup): compiled, then `steps` back
  to back, blocked once.

  Returns (the figures, the CompiledStep).
  """
  mesh, model = setup.mesh, setup.model
  batch = len(setup.batch['label'])
  dtype = jnp.dtype(model.dtype).name
  precision = model.matmul_precision or 'default'
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
  peak = peaks.peak_tflops(device.device_kind, dtype, precision)
  result = dict(
      batch=batch, dtype=dtype, mesh=dict(mesh.shape),
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


def eval_figures(step: CompiledStep, repeats: int) -> dict:
  """Evaluation throughput, centre crop and 10 crops, on the step's set-up
  (its parameters and a masked batch of its shapes), median of `repeats`."""
  setup = step.setup
  batch, image_size = setup.batch['image'].shape[:2]
  eval_data = synthetic.batch(setup.mesh, batch, image_size,
                              setup.model.num_classes, mask=True)
  result = {}
  for crops, name in ((1, 'eval_img_per_sec'), (10, 'eval10_img_per_sec')):
    run_eval = functools.partial(setup.steps.eval_step, setup.state.params,
                                 eval_data, setup.stats, crops=crops)
    jax.block_until_ready(run_eval())
    result[name] = batch / timing.median_time(
        lambda: jax.block_until_ready(run_eval()), repeats)
  result['num_params'] = model_lib.count_params(setup.state.params)
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
  figures, step = bench_train(synthetic.setup(config), steps, warmup)
  result.update(figures)
  result.update(eval_figures(step, max(1, steps // 2)))
  steps_of = {'jax': step.run}
  if vs_torch:
    from alexnet_jax import torch_twin  # pylint: disable=g-import-not-at-top
    twin = functools.partial(
        torch_twin.bench_train, config.model, config.batch_size,
        (config.learning_rate, config.momentum, config.weight_decay), steps,
        warmup)
    figures, steps_of['torch'] = twin()
    result.update(figures)
    if torch_compile:
      try:
        figures, once = twin(compiled=True)
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
  result['matmul_peak_gflops'] = peaks.matmul_peak_gflops(config.model.dtype)
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
      'peak_tflops_per_device': {d: peaks.peak_tflops(device.device_kind, d,
                                                      precision)
                                 for d in dtypes},
      'rows': rows}
  for mesh in sweep_meshes(jax.local_device_count()):
    for dtype in dtypes:
      for batch in batch_sizes:
        c = _with(config, dtype, batch, mesh)
        row = {'mesh': f'{mesh[0]}x{mesh[1]}', 'dtype': dtype,
               'batch': int(batch)}
        try:
          result, _ = bench_train(synthetic.setup(c), steps, warmup)
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
      result = pipeline_bench.measure(
          store_lib.Spec.from_config(config),
          input_pipeline.Reading.from_config(config), config.train_split,
          FLAGS.batches)
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
