"""glibc malloc settings that keep XLA:CPU's step buffers mapped.

XLA:CPU allocates a program's temporary buffers afresh for every execution
(about 1.7 GB for the paper's train step at batch 128). glibc serves blocks
that large with mmap and unmaps them when they are freed, so every step the
kernel faults in and zeroes each page again: ~420,000 minor page faults and
about 1 s of system time a step on the development machine. With
`keep_freed_memory()` glibc serves them from its heap and keeps what is
freed there, so later steps reuse the same pages: no faults, and the
paper's train step ran about 1.1x faster
(experiments/results/bench/command.txt).

The price is memory: freed blocks are split for small allocations now and
then, so the heap grows by a block a few times before it settles. The
paper's train step settled at 6.7 GB resident after 6 steps instead of
3.0 GB.

The settings are the process's, and must be made before anything starts a
thread (made later, threads that already have a malloc arena of their own
keep using mmap): the command line entry points (`alexnet_jax.main`,
`alexnet_jax.bench`) call `keep_freed_memory_on_cpu()` first. Only where
JAX will compute on the CPU (no accelerator plugin installed, JAX_PLATFORMS
unset or cpu), only with glibc, and not with
ALEXNET_JAX_KEEP_FREED_MEMORY=0 in the environment.
"""

import ctypes
import ctypes.util
import functools
import importlib.metadata
import importlib.util
import os
import platform

# mallopt(3) parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

# What keep_freed_memory sets: no mmap'd blocks (every block from the heap),
# never give the heap's top back to the kernel (-1: never trim), and one
# arena for all threads (another thread's arena would fall back to mmap for
# blocks larger than its 64 MiB heaps).
SETTINGS = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1), (_M_ARENA_MAX, 1))


@functools.cache
def keep_freed_memory() -> bool:
  """Sets SETTINGS through glibc's mallopt, once; whether they were set."""
  if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return all(mallopt(param, value) == 1 for param, value in SETTINGS)


def applied() -> bool:
  """Whether `keep_freed_memory()` has set SETTINGS in this process."""
  return keep_freed_memory.cache_info().currsize > 0 and keep_freed_memory()


def cpu_only() -> bool:
  """Whether JAX will compute on the CPU: told so by JAX_PLATFORMS, or no
  accelerator plugin installed. Starts no backend (and so no thread)."""
  platforms = os.environ.get('JAX_PLATFORMS', '')
  if platforms:
    return platforms.split(',')[0].strip() == 'cpu'
  plugins = importlib.metadata.entry_points(group='jax_plugins')
  return not plugins and not any(
      importlib.util.find_spec(name) for name in ('jax_plugins', 'libtpu'))


def keep_freed_memory_on_cpu() -> bool:
  """`keep_freed_memory()` where JAX computes on the CPU, unless
  ALEXNET_JAX_KEEP_FREED_MEMORY=0; whether the settings were made."""
  if os.environ.get('ALEXNET_JAX_KEEP_FREED_MEMORY', '1') == '0':
    return False
  return cpu_only() and keep_freed_memory()
