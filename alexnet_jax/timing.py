"""Wall-clock timing of work that has finished (each `fn` waits for its own
results: `jax.block_until_ready`, or a host value)."""

import statistics
import time


def timed(fn) -> float:
  """Seconds one call of fn takes."""
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def median_time(fn, steps: int, warmup: int = 0) -> float:
  """The median of `steps` calls' seconds, after `warmup` untimed calls."""
  for _ in range(warmup):
    fn()
  return statistics.median(timed(fn) for _ in range(steps))
