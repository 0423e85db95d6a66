"""The train step with and without Winograd's convolutions, on CPU.

  python -m experiments.winograd_step [--config ilsvrc2012] [--rounds 8]
      [--sizes 3,5]

Compiles the paper's train step twice, once as by default (conv3-5 and
conv1's forward pass by Winograd's F(2x2, 3x3), conv2's gradients by
F(4x4, 5x5): cpu_kernels) and once with the layers of the kernel sizes
`--sizes` (3, 5, 11: conv1) by the chunked matmuls used for the other layers
instead, then times one step of each in
alternation, `--rounds` times, so that both see the same machine load.
Prints a line per round, then one JSON line: the median seconds per step of
each and `speedup`, the median of the rounds' ratios (matmuls / Winograd).

With `--xla-options`, the default build (`ours_step_s`) is instead timed
against itself compiled with XLA:CPU's own defaults rather than
cpu_kernels.XLA_CPU_OPTIONS (`xla_defaults_step_s`).
"""

import importlib
import json
import statistics

from alexnet_jax import cli
from alexnet_jax import bench
from alexnet_jax import cpu_kernels
from alexnet_jax import synthetic
from alexnet_jax import timing


def compiled_step(config, without=(), xla_defaults=False):
  """The train step (bench.CompiledStep) traced with the kernel sizes
  `without` by matmuls rather than Winograd, or with `xla_defaults` compiled
  without cpu_kernels.XLA_CPU_OPTIONS."""
  saved = cpu_kernels.WINOGRAD_MIN_CHANNELS, cpu_kernels.XLA_CPU_OPTIONS
  cpu_kernels.WINOGRAD_MIN_CHANNELS = {
      size: channels for size, channels in saved[0].items()
      if size not in without}
  if xla_defaults:
    cpu_kernels.XLA_CPU_OPTIONS = {}
  try:
    _, step = bench.bench_train(synthetic.setup(config), steps=1, warmup=1)
  finally:
    cpu_kernels.WINOGRAD_MIN_CHANNELS, cpu_kernels.XLA_CPU_OPTIONS = saved
  return step


def compare(config, rounds: int, sizes=(3, 5), options=False) -> dict:
  """With `options`, the step as built by default ('ours') against the same
  step compiled with XLA:CPU's defaults ('xla_defaults'), not Winograd."""
  before, after = ('xla_defaults', 'ours') if options else ('matmuls',
                                                             'winograd')
  steps = {before: compiled_step(config, without=() if options else sizes,
                                 xla_defaults=options),
           after: compiled_step(config)}
  times = {name: [] for name in steps}
  for r in range(rounds):
    for name, step in steps.items():
      times[name].append(timing.timed(step.run))  # It waits for its step.
    print(f'round {r + 1}/{rounds}: ' + ', '.join(
        f'{name} {v[-1]:.2f} s' for name, v in times.items()), flush=True)
  return {
      'batch': config.batch_size,
      'rounds': rounds,
      **({'xla_cpu_options': dict(cpu_kernels.XLA_CPU_OPTIONS)} if options
         else {'winograd_sizes': list(sizes)}),
      **{f'{name}_step_s': round(statistics.median(v), 3)
         for name, v in times.items()},
      'speedup': round(statistics.median(
          a / b for a, b in zip(times[before], times[after])), 3)}


def main():
  parser = cli.ArgumentParser(prog='python -m experiments.winograd_step',
                              description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='ilsvrc2012',
                      help='a module of configs/ (its default config)')
  parser.add_argument('--rounds', type=int, default=8)
  parser.add_argument('--sizes', default='3,5',
                      help='kernel sizes compared: Winograd vs matmuls')
  parser.add_argument('--xla-options', action='store_true',
                      help='compare cpu_kernels.XLA_CPU_OPTIONS against '
                      "XLA:CPU's defaults instead")
  args = parser.parse_args()
  config = importlib.import_module(f'alexnet_jax.configs.{args.config}').get_config()
  sizes = tuple(int(s) for s in args.sizes.split(','))
  print(json.dumps(compare(config, args.rounds, sizes, args.xla_options)),
        flush=True)


if __name__ == '__main__':
  main()
