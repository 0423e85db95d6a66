"""Devices' peak throughput: a table of published peaks, and a measured matmul.

The benchmark's achieved GFLOP/s is reported against the first where the
device is in the table, else against the second (CPUs).
"""

import jax
import jax.numpy as jnp

from alexnet_jax import timing

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
