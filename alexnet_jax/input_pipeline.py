"""Prepared store -> per-host batches -> global device arrays, prefetched.

The host only reads: every image was decoded and preprocessed once, when the
store was prepared (`alexnet_jax.datasets.store`). Random crops, flips,
lighting and the mean image happen on the device (`alexnet_jax.augment`).

Order: epoch e's order is a full pseudo-random permutation of the training
split, a function of (seed, e) alone. Global batch b of that epoch is
positions [b*B, (b+1)*B) of it, whatever the number of hosts or the mesh;
each host reads only its own rows of it (`rows`, from the mesh). A stream
starts at any (epoch, batch) without reading what came before it, so a
resumed run starts at once and sees the batches an uninterrupted run would
have seen.

What the pipeline takes of the config is one value, `Reading`. Reading runs
on `input.workers` threads (0: every core of the host) through grain,
`input.prefetch` batches ahead; array_record reads and JPEG decoding
release the GIL. We do not use grain's own samplers: they split the records
between hosts, which would make a global batch depend on the host count.
"""

import dataclasses
import functools
import os
import queue
import threading
from typing import Dict, Iterator, Optional

import jax
import numpy as np

from alexnet_jax import parallel


def default_rows(global_batch: int, mesh=None):
  """This process's rows of each global batch (parallel.process_rows)."""
  if mesh is not None:
    return parallel.process_rows(mesh, global_batch)
  count, index = jax.process_count(), jax.process_index()
  local = global_batch // count
  return index * local, (index + 1) * local


def host_cores() -> int:
  """The cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not on Linux.
    return os.cpu_count() or 1


@dataclasses.dataclass(frozen=True)
class Reading:
  """How the splits are read: batch sizes, the shuffling seed, threads."""
  batch_size: int
  eval_batch_size: int
  seed: int = 0
  workers: int = 0  # Reading threads; 0: every core of the host.
  prefetch: int = 4  # Batches read ahead.

  @classmethod
  def from_config(cls, config) -> 'Reading':
    return cls(batch_size=int(config.batch_size),
               eval_batch_size=int(config.eval_batch_size),
               seed=int(config.seed), workers=int(config.input.workers),
               prefetch=int(config.input.prefetch))

  @property
  def threads(self) -> int:
    """Reading threads: `workers`, or every core of the host (0)."""
    return self.workers or host_cores()


@functools.lru_cache(maxsize=4)
def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
  """The training order of epoch `epoch`: a permutation of range(n)."""
  return np.random.default_rng([seed, epoch]).permutation(n)


def _iterate(read, start: int, stop: int, reading: Reading) -> Iterator:
  """read(b) for b in [start, stop), on worker threads, in order."""
  import grain  # pylint: disable=g-import-not-at-top
  n_workers = reading.threads
  ds = grain.MapDataset.range(start, stop).map(read)
  return iter(ds.to_iter_dataset(grain.ReadOptions(
      num_threads=n_workers,
      prefetch_buffer_size=max(reading.prefetch, n_workers))))


def steps_per_epoch(split, reading: Reading) -> int:
  """Full global batches in an epoch (the last partial batch is dropped)."""
  return len(split) // reading.batch_size


def train_stream(split, reading: Reading, epoch: int = 0, batch: int = 0,
                 rows=None) -> Iterator[Dict[str, np.ndarray]]:
  """Endless training batches from position (epoch, batch in that epoch).

  `split`: a store split (store.Split). `rows`: this process's rows of each
  global batch (default_rows). Every global batch is full.
  """
  rows = rows or default_rows(reading.batch_size)
  n, gb = len(split), reading.batch_size
  per_epoch = steps_per_epoch(split, reading)
  lo, hi = rows

  def read(g):
    e, b = divmod(g, per_epoch)
    order = epoch_order(n, reading.seed, e)
    return split.read(order[b * gb + lo:b * gb + hi])

  start = epoch * per_epoch + batch
  return _iterate(read, start, 1 << 62, reading)


def train_batches(split, reading: Reading, epoch: int, start_batch: int = 0,
                  rows=None) -> Iterator[Dict[str, np.ndarray]]:
  """This process's share of epoch `epoch`'s batches, from a batch on."""
  stream = train_stream(split, reading, epoch, start_batch, rows)
  for _ in range(steps_per_epoch(split, reading) - start_batch):
    yield next(stream)


def eval_batches(split, reading: Reading,
                 rows=None) -> Iterator[Dict[str, np.ndarray]]:
  """The whole split in stored order, in full global batches of
  `eval_batch_size`; padding rows are blank images with mask 0.

  `rows`: this process's rows of each global batch (default_rows).
  """
  gb = reading.eval_batch_size
  rows = rows or default_rows(gb)
  n = len(split)
  lo, hi = rows
  s = split.image_size

  def read(b):
    positions = np.arange(b * gb + lo, b * gb + hi)
    valid = positions < n
    got = split.read(positions[valid])
    out = {'image': np.zeros((hi - lo, s, s, 3), np.uint8),
           'label': np.zeros(hi - lo, np.int32),
           'mask': valid.astype(np.float32)}
    out['image'][valid] = got['image']
    out['label'][valid] = got['label']
    return out

  return _iterate(read, 0, -(-n // gb), reading)


def to_global(batch: Dict[str, np.ndarray], mesh,
              global_batch: Optional[int] = None) -> Dict[str, jax.Array]:
  """Per-host numpy batch -> global arrays sharded over `data`."""
  sharding = parallel.batch_sharding(mesh)
  out = {}
  for k, v in batch.items():
    shape = None if global_batch is None else (global_batch,) + v.shape[1:]
    out[k] = jax.make_array_from_process_local_data(sharding, v, shape)
  return out


def prefetch_to_device(batches, mesh, size: int = 2,
                       global_batch: Optional[int] = None):
  """Moves batches to the devices in a background thread, `size` ahead.

  Closing the returned generator (or dropping it) stops the thread, which
  then releases the batches and the reader behind them.
  """
  q = queue.Queue(maxsize=size)
  sentinel = object()
  stop = threading.Event()

  def put(item):
    while not stop.is_set():
      try:
        q.put(item, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def producer():
    try:
      for b in batches:
        if not put(to_global(b, mesh, global_batch)):
          return
    except Exception as e:  # Surface errors in the consumer.
      put(e)
    finally:
      if hasattr(batches, 'close'):  # grain's reading threads.
        batches.close()
    put(sentinel)

  thread = threading.Thread(target=producer, daemon=True)
  thread.start()
  try:
    while True:
      item = q.get()
      if item is sentinel:
        return
      if isinstance(item, Exception):
        raise item
      yield item
  finally:
    stop.set()
    # Wait for the thread to leave jax and the reader: a thread still inside
    # them when the interpreter exits can abort it.
    thread.join(timeout=60)
