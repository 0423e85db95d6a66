"""host_memory: a jitted program's buffers are reused, not faulted in again."""

import json
import os
import platform
import subprocess
import sys

import pytest

from alexnet_jax import host_memory
from tests.helpers import ROOT

# Runs a jitted program whose temporaries (~200 MB of float32) are allocated
# afresh by every execution, and prints the minor page faults of each of its
# later executions. (Kept, the heap still grows now and then in the first
# executions, as freed blocks are split for small allocations.)
_PROGRAM = """
import json, resource, statistics, sys
from alexnet_jax import host_memory
kept = sys.argv[1] == 'keep' and host_memory.keep_freed_memory()
import jax, jax.numpy as jnp
f = jax.jit(lambda x: (jnp.sin(x)[::-1] * jnp.cos(x)[::-1]).sum())
x = jnp.ones((25_000_000,))
faults = []
for _ in range(20):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({'kept': kept, 'applied': host_memory.applied(),
                  'faults': statistics.median(faults[10:])}))
"""

glibc = pytest.mark.skipif(
    platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc',
    reason='mallopt settings are glibc\'s')


def _faults(mode):
  env = dict(os.environ, XLA_FLAGS='')
  proc = subprocess.run([sys.executable, '-c', _PROGRAM, mode], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=300,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return json.loads(proc.stdout.splitlines()[-1])


@glibc
def test_freed_buffers_are_reused_instead_of_faulted_in_again():
  default, kept = _faults('default'), _faults('keep')
  assert not default['applied'] and kept['kept'] and kept['applied']
  # ~200 MB of temporaries an execution: ~49,000 fresh 4 KiB pages.
  assert default['faults'] > 40_000, default
  assert kept['faults'] < 1_000, kept


def test_applied_only_after_keep_freed_memory():
  # This process (pytest) never calls it: glibc's defaults stay.
  assert not host_memory.applied()


@pytest.mark.parametrize('env, want', [
    ({}, True),
    ({'JAX_PLATFORMS': 'cpu'}, True),
    ({'JAX_PLATFORMS': 'cuda,cpu'}, False),  # An accelerator computes.
    ({'ALEXNET_JAX_KEEP_FREED_MEMORY': '0'}, False),  # Opted out.
])
@glibc
def test_entry_points_keep_freed_memory_only_on_cpu(env, want):
  # This machine has no accelerator plugin (as CI).
  code = ('from alexnet_jax import host_memory; '
          'print(host_memory.keep_freed_memory_on_cpu(), '
          'host_memory.applied())')
  base = {k: v for k, v in os.environ.items()
          if k not in ('JAX_PLATFORMS', 'ALEXNET_JAX_KEEP_FREED_MEMORY')}
  proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT,
                        env={**base, **env}, capture_output=True, text=True,
                        timeout=60, check=True)
  assert proc.stdout.split() == [str(want), str(want)]
