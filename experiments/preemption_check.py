"""What the per-step preemption check costs, beside the smallest real step.

  python -m experiments.preemption_check --out experiments/results/bench/preemption_check.json

Starts two jax.distributed processes on this machine (one CPU device each, as
the two-process tests do). Each times `calls` calls of
`multihost_utils.reached_preemption_sync_point` (what the training loop calls
after every step of a multi-process run), and `steps` jitted steps of a
one-float all-reduce across both processes: a lower bound on any real
multi-process training step. Their ratio bounds the check's share of a step.
"""

import json
import os
import platform
import socket
import subprocess
import sys

from alexnet_jax import cli

WORKER = r'''
import json, sys, time
import jax, jax.numpy as jnp, numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
address, index, calls, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
jax.distributed.initialize(address, 2, index)
mesh = jax.make_mesh((2,), ('data',), devices=jax.devices())
x = jax.make_array_from_process_local_data(NamedSharding(mesh, P('data')),
                                           np.ones(1, np.float32))
step = jax.jit(lambda v: v * 0 + jnp.sum(v), out_shardings=NamedSharding(mesh, P('data')))
x = step(x).block_until_ready()  # Compiled.
for _ in range(3):
  t0 = time.perf_counter()
  for _ in range(steps):
    x = step(x)
  x.block_until_ready()
  step_s = (time.perf_counter() - t0) / steps
  t0 = time.perf_counter()
  for i in range(calls):
    assert not multihost_utils.reached_preemption_sync_point(i)
  check_s = (time.perf_counter() - t0) / calls
print(json.dumps({'process': index, 'check_us': check_s * 1e6,
                  'allreduce_step_us': step_s * 1e6}))
'''


def main(argv=None):
  parser = cli.ArgumentParser(prog='python -m experiments.preemption_check',
                              description=__doc__.splitlines()[0])
  parser.add_argument('--calls', type=int, default=100_000)
  parser.add_argument('--steps', type=int, default=2_000)
  parser.add_argument('--out', default='')
  args = parser.parse_args(argv)
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=1')
  procs = [subprocess.Popen(
      [sys.executable, '-c', WORKER, f'localhost:{port}', str(i),
       str(args.calls), str(args.steps)], env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    if p.returncode:
      raise SystemExit(f'preemption_check: a process failed:\n{err[-2000:]}')
  rows = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
  import jax  # pylint: disable=g-import-not-at-top
  result = {
      'command': 'python -m experiments.preemption_check ' + ' '.join(
          sys.argv[1:] if argv is None else argv),
      'jax': jax.__version__, 'machine': platform.node(),
      'cpus': os.cpu_count(), 'calls': args.calls, 'steps': args.steps,
      'processes': rows,
      'check_us': max(r['check_us'] for r in rows),
      'allreduce_step_us': min(r['allreduce_step_us'] for r in rows),
  }
  result['check_share_of_smallest_step'] = (
      result['check_us'] / result['allreduce_step_us'])
  text = json.dumps(result, indent=1)
  print(text)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text + '\n')


if __name__ == '__main__':
  cli.run_main(main, 'experiments.preemption_check')
