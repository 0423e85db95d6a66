"""The prepared store: every split decoded and preprocessed once, read by index.

`python -m alexnet_jax.datasets.prepare --config CONFIG` (or the first
training run) reads each split of the tfds source once through the paper's
host preprocessing (RGB, shorter side to `image_size`, centre crop, uint8:
`alexnet_jax.preprocess`) and writes the results here. Training then only
reads: any example by its index, so an epoch's order is a permutation, each
host reads only its own rows, and a resumed run starts at its batch without
reading what came before (`alexnet_jax.input_pipeline`).

Layout, beside the tfds source's records (or under `store.dir`):

  store_<S>_<format>/<split>/data-NNNNN.array_record   the records
  store_<S>_<format>/<split>/split.json                what they hold
  store_<S>_<format>/<split>/stats.npz                 (train) mean and PCA

Each record is a 4-byte little-endian int32 label followed by the image:
`raw`, S x S x 3 uint8 pixels (196,608 bytes at S = 256), or `jpeg`, the same
pixels JPEG-encoded at `store.jpeg_quality`. ArrayRecord files, one record per
group and uncompressed, give random access in C++ (array_record); we write
them ourselves rather than through tfds's array_record writer, which wraps
each image in a tf.train.Example and compresses it with zstd: a parse and a
decompression on every read, to save little on photographs (README "Data").

Integrity: a split is written into `<split>.incomplete/` and renamed only
when complete, so a half-written store never looks prepared, and an
interrupted prepare starts that split again. `split.json` records every
file's size: a missing or truncated file is one error line naming it and the
prepare command, and prepare rewrites that split.
"""

import io
import json
import os
import shutil
import threading
import time
from typing import Dict, List, Optional, Sequence

from absl import logging
import numpy as np

from alexnet_jax import errors
from alexnet_jax import preprocess
from alexnet_jax.datasets import source

FORMATS = ('raw', 'jpeg')
SPLIT_FILE = 'split.json'
STATS_FILE = 'stats.npz'
LABEL_BYTES = 4  # int32, little-endian, before the image bytes.
WRITER_OPTIONS = 'group_size:1,uncompressed'
PREPARE_COMMAND = 'python -m alexnet_jax.datasets.prepare --config CONFIG'
INCOMPLETE = '.incomplete'


class StoreError(errors.DataError):
  """A store split that is missing, incomplete or damaged."""


class MissingSplit(StoreError):
  """The split has not been prepared (or its preparation did not finish)."""


def directory(builder, config) -> str:
  """Where the config's store lives: beside the tfds records or in store.dir."""
  store = config.store
  if store.format not in FORMATS:
    raise errors.ConfigError(f'store.format={store.format!r}: use one of '
                             f'{FORMATS}.')
  name = f'store_{config.image_size}_{store.format}'
  if store.format == 'jpeg':
    name += f'_q{store.jpeg_quality}'
  if store.dir:
    # Two image folders are both 'image_folder': the source's path tells
    # them apart.
    import hashlib  # pylint: disable=g-import-not-at-top
    tag = hashlib.sha1(os.path.abspath(str(builder.data_dir)).encode()
                       ).hexdigest()[:8]
    return os.path.join(store.dir, f'{builder.name}_{tag}',
                        str(builder.version), name)
  return os.path.join(str(builder.data_dir), name)


def _split_dir(root: str, split: str) -> str:
  # tfds split strings may hold slices ('train[:90%]'); keep the path plain.
  safe = ''.join(c if c.isalnum() or c in '-_' else '_' for c in split)
  return os.path.join(root, safe)


class Split:
  """One prepared split: its length, and images and labels by index.

  `read` is safe to call from several threads at once. `records_read` counts
  the records this object has read (the tests use it to check that a host
  reads only its own rows, and that resuming reads nothing before its
  position).
  """

  def __init__(self, path: str):
    self.path = path
    meta_path = os.path.join(path, SPLIT_FILE)
    if not os.path.exists(meta_path):
      raise MissingSplit(f'{path} is not prepared; run {PREPARE_COMMAND}.')
    try:
      with open(meta_path) as f:
        self.meta = json.load(f)
    except (OSError, ValueError) as e:
      raise StoreError(f'{meta_path} is unreadable ({e}); rerun '
                       f'{PREPARE_COMMAND} to rewrite this split.') from e
    for entry in self.meta['files']:
      file = os.path.join(path, entry['name'])
      size = os.path.getsize(file) if os.path.exists(file) else None
      if size != entry['bytes']:
        state = 'missing' if size is None else (
            f'truncated or altered ({size:,} of {entry["bytes"]:,} bytes)')
        raise StoreError(f'store file {file} is {state}; rerun '
                         f'{PREPARE_COMMAND} to rewrite this split.')
    self.format = self.meta['format']
    self.image_size = self.meta['image_size']
    self.num_examples = self.meta['num_examples']
    self.classes = self.meta.get('classes')
    self.bytes_per_image = self.meta['bytes'] / max(self.num_examples, 1)
    counts = [e['num_records'] for e in self.meta['files']]
    self._ends = np.cumsum(counts)
    self._starts = self._ends - counts
    self._readers = [None] * len(counts)
    self._lock = threading.Lock()
    self.records_read = 0

  def __len__(self) -> int:
    return self.num_examples

  def _reader(self, f: int):
    """File f's reader, opened on first use (safe to share between threads,
    as grain shares them)."""
    if self._readers[f] is None:
      from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
      with self._lock:
        if self._readers[f] is None:
          self._readers[f] = array_record_module.ArrayRecordReader(
              os.path.join(self.path, self.meta['files'][f]['name']),
              'readahead_buffer_size:0', file_reader_buffer_size=32768)
    return self._readers[f]

  def _records(self, indices: np.ndarray) -> List[bytes]:
    # Straight to each file's reader: array_record's data source would start
    # a thread pool for every call that touches several files.
    if len(indices) and (indices.min() < 0 or
                         indices.max() >= self.num_examples):
      raise IndexError(f'{self.path}: index out of range [0, '
                       f'{self.num_examples}).')
    files = np.searchsorted(self._ends, indices, side='right')
    records = [b''] * len(indices)
    for f in np.unique(files):
      where = np.flatnonzero(files == f)
      got = self._reader(f).read(
          [int(p) for p in indices[where] - self._starts[f]])
      for k, record in zip(where, got):
        records[k] = record
    return records

  def read(self, indices: Sequence[int]) -> Dict[str, np.ndarray]:
    """{'image': (k, S, S, 3) uint8, 'label': (k,) int32} for `indices`."""
    records = self._records(np.asarray(indices, np.int64).reshape(-1))
    with self._lock:
      self.records_read += len(records)
    s = self.image_size
    images = np.empty((len(records), s, s, 3), np.uint8)
    labels = np.empty(len(records), np.int32)
    for k, record in enumerate(records):
      labels[k] = int.from_bytes(record[:LABEL_BYTES], 'little', signed=True)
      if self.format == 'raw':
        images[k] = np.frombuffer(record, np.uint8, s * s * 3,
                                  LABEL_BYTES).reshape(s, s, 3)
      else:
        images[k] = _decode_jpeg(record[LABEL_BYTES:])
    return {'image': images, 'label': labels}


def _decode_jpeg(data: bytes) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(io.BytesIO(data)) as image:
    return np.asarray(image.convert('RGB'))


class Store:
  """A prepared dataset: its splits, class names and where it lives."""

  def __init__(self, root: str, builder=None):
    self.root = root
    self.builder = builder
    self._splits = {}

  def split(self, name: str) -> Split:
    if name not in self._splits:
      self._splits[name] = Split(_split_dir(self.root, name))
    return self._splits[name]

  def stats_path(self, split: str) -> str:
    return os.path.join(_split_dir(self.root, split), STATS_FILE)


def get(config, splits: Optional[Sequence[str]] = None,
        repair: bool = False) -> Store:
  """The config's store, preparing the tfds source and the store if needed.

  A damaged split raises StoreError (naming the file and the prepare
  command) unless `repair`, which rewrites it.
  """
  builder = source.get_builder(config)
  return prepare(builder, config, splits, repair)


def prepare(builder, config, splits: Optional[Sequence[str]] = None,
            repair: bool = False) -> Store:
  """Writes every split (default: the config's train and eval splits) that
  is missing (or, with `repair`, damaged); returns the store."""
  root = directory(builder, config)
  store = Store(root, builder)
  for split in splits or (config.train_split, config.eval_split):
    source.num_examples(builder, split)  # A clear error for unknown splits.
    try:
      store.split(split)
      continue
    except MissingSplit:
      pass
    except StoreError as e:
      if not repair:
        raise
      logging.warning('%s Rewriting it.', e)
      print(f'store: {e} Rewriting it.', flush=True)
      shutil.rmtree(_split_dir(root, split))
    _write_split(builder, config, split, _split_dir(root, split))
    store._splits.pop(split, None)  # pylint: disable=protected-access
  return store


def _gb(n: float) -> str:
  return f'{n / 1e9:,.2f} GB'


def _encoded(builder, config, split):
  """The split's preprocessed images in stored order, as record payloads."""
  tf = preprocess.tf()
  ds = source.preprocessed_dataset(builder, split, config.image_size,
                                   source.max_pixels(config))
  if config.store.format == 'jpeg':
    quality = int(config.store.jpeg_quality)
    ds = ds.map(lambda e: {'image': tf.io.encode_jpeg(e['image'],
                                                      quality=quality),
                           'label': e['label']},
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(256).prefetch(2).as_numpy_iterator()


def _too_large_is_one_line(batches, where, limit):
  """tf.data reports preprocess's pixel check as its own error: one line."""
  tf = preprocess.tf()
  try:
    yield from batches
  except tf.errors.OpError as e:
    message = preprocess.too_large_message(str(e), limit)
    if not message:
      raise
    raise errors.DataError(
        f'{where}: an image of {message}; set --config.max_image_pixels=N, or '
        'remove the image from the dataset.') from None


def _payloads(batch, fmt) -> List[bytes]:
  if fmt == 'raw':
    return [label.astype('<i4').tobytes() + image.tobytes()
            for image, label in zip(batch['image'], batch['label'])]
  return [label.astype('<i4').tobytes() + image
          for image, label in zip(batch['image'], batch['label'])]


def _write_split(builder, config, split: str, path: str):
  """Writes one split into path.incomplete/, then renames it to path."""
  import tqdm  # pylint: disable=g-import-not-at-top
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  fmt = config.store.format
  n = source.num_examples(builder, split)
  tmp = path + INCOMPLETE
  if os.path.exists(tmp):
    logging.info('Removing %s, left by an interrupted prepare.', tmp)
    shutil.rmtree(tmp)
  try:
    os.makedirs(tmp)
  except OSError as e:
    raise errors.DataError(
        f'cannot write the store in {os.path.dirname(path)} ({e.strerror}); '
        'set --config.store.dir=DIR to a writable directory.') from e
  batches = _too_large_is_one_line(_encoded(builder, config, split),
                                   f'{builder.name} {split}',
                                   source.max_pixels(config))
  start = time.time()
  first = next(batches, None)
  payloads = _payloads(first, fmt) if first is not None else []
  # Raw records have one size; JPEG's is estimated from the first batch.
  per_record = (np.mean([len(p) for p in payloads]) if payloads else 0) + 32
  estimate = per_record * n * (1.0 if fmt == 'raw' else 1.15)
  free = shutil.disk_usage(tmp).free
  print(f'store: {builder.name} {split}: {n:,} images as {fmt} '
        f'{config.image_size}x{config.image_size} -> {path}, about '
        f'{_gb(estimate)} ({per_record:,.0f} bytes per image); '
        f'{_gb(free)} free', flush=True)
  if estimate > free:
    shutil.rmtree(tmp)
    smaller = (' or --config.store.format=jpeg (several times smaller)'
               if fmt == 'raw' else '')
    raise errors.DataError(
        f'the {split} split needs about {_gb(estimate)} in {path} but only '
        f'{_gb(free)} is free; free space, or set --config.store.dir=DIR on a '
        f'larger disk{smaller}.')
  per_shard = max(1, int(config.store.file_bytes //
                         per_record))
  files, written, total_bytes = [], 0, 0
  writer = None

  def close(writer):
    writer.close()
    name = files[-1]['name']
    files[-1]['bytes'] = os.path.getsize(os.path.join(tmp, name))

  with tqdm.tqdm(total=n, desc=f'store {split}', unit='img') as bar:
    while payloads:
      for payload in payloads:
        if written % per_shard == 0:
          if writer is not None:
            close(writer)
          name = f'data-{len(files):05d}.array_record'
          files.append({'name': name, 'num_records': 0})
          writer = array_record_module.ArrayRecordWriter(
              os.path.join(tmp, name), WRITER_OPTIONS)
        writer.write(payload)
        files[-1]['num_records'] += 1
        total_bytes += len(payload) - LABEL_BYTES
        written += 1
      bar.update(len(payloads))
      batch = next(batches, None)
      payloads = _payloads(batch, fmt) if batch is not None else []
    if writer is not None:
      close(writer)
  if written != n:
    raise errors.DataError(
        f'{builder.name} {split}: the tfds source gave {written} images but '
        f'says it has {n}; prepare the tfds dataset again.')
  seconds = time.time() - start
  meta = {'dataset': builder.name, 'version': str(builder.version),
          'split': split, 'num_examples': n, 'format': fmt,
          'image_size': int(config.image_size),
          'jpeg_quality': int(config.store.jpeg_quality) if fmt == 'jpeg'
                          else None,
          'record': 'int32 little-endian label, then the image: raw uint8 '
                    'HxWx3 or JPEG bytes',
          'classes': source.class_names(builder),
          'bytes': total_bytes, 'files': files,
          'prepare_seconds': round(seconds, 3)}
  with open(os.path.join(tmp, SPLIT_FILE), 'w') as f:
    json.dump(meta, f, indent=1)
  if os.path.exists(path):  # A split directory without its split.json.
    shutil.rmtree(path)
  os.rename(tmp, path)
  print(f'store: {split} written, {n:,} images in {seconds:.1f} s '
        f'({n / max(seconds, 1e-9):,.0f} img/s), '
        f'{_gb(sum(f["bytes"] for f in files))}', flush=True)
