"""The train step with and without Winograd's 3x3 convolutions, on CPU.

  python -m experiments.winograd_step [--config ilsvrc2012] [--rounds 8]

Compiles the paper's train step twice, once with conv3-5 by Winograd's
F(2x2, 3x3) (cpu_kernels.WINOGRAD, the default) and once by the chunked
matmuls used for the other layers, then times one step of each in
alternation, `--rounds` times, so that both see the same machine load.
Prints a line per round, then one JSON line: the median seconds per step of
each and `speedup`, the median of the rounds' ratios (matmuls / Winograd).
"""

import argparse
import importlib
import json
import statistics
import time

import jax

from alexnet_jax import bench
from alexnet_jax import cpu_kernels


def compiled_step(config, winograd: bool):
  """(step, its arguments) traced with cpu_kernels.WINOGRAD = `winograd`."""
  saved = cpu_kernels.WINOGRAD
  cpu_kernels.WINOGRAD = winograd
  try:
    _, (_, _, _, holder, compiled, data, stats, key) = bench.bench_train(
        config, steps=1, warmup=1)
  finally:
    cpu_kernels.WINOGRAD = saved
  return compiled, holder, (data, stats, key)


def compare(config, rounds: int) -> dict:
  steps = {name: compiled_step(config, name == 'winograd')
           for name in ('matmuls', 'winograd')}
  times = {name: [] for name in steps}
  for r in range(rounds):
    for name, (compiled, holder, args) in steps.items():
      t = time.perf_counter()
      holder['state'], metrics = compiled(holder['state'], *args)
      jax.block_until_ready(metrics)
      times[name].append(time.perf_counter() - t)
    print(f'round {r + 1}/{rounds}: ' + ', '.join(
        f'{name} {v[-1]:.2f} s' for name, v in times.items()), flush=True)
  return {
      'batch': config.batch_size,
      'rounds': rounds,
      **{f'{name}_step_s': round(statistics.median(v), 3)
         for name, v in times.items()},
      'speedup': round(statistics.median(
          a / b for a, b in zip(times['matmuls'], times['winograd'])), 3)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='ilsvrc2012',
                      help='a module of configs/ (its default config)')
  parser.add_argument('--rounds', type=int, default=8)
  args = parser.parse_args()
  config = importlib.import_module(f'configs.{args.config}').get_config()
  print(json.dumps(compare(config, args.rounds)), flush=True)


if __name__ == '__main__':
  main()
