"""The prepared store: every split decoded and preprocessed once, read by index.

`python -m alexnet_jax.datasets.prepare --config CONFIG` (or the first
training run) reads each split of the source once (a tfds dataset's records,
or an image folder's files: `alexnet_jax.datasets.image_folder`) through the
paper's host preprocessing (RGB, shorter side to `image_size`, centre crop,
uint8: `alexnet_jax.preprocess`) and writes the results here. Training then
only reads: any example by its index, so an epoch's order is a permutation,
each host reads only its own rows, and a resumed run starts at its batch
without reading what came before (`alexnet_jax.input_pipeline`).

What the store takes of the config is one value, `Spec`. Where
(`Spec.directory`, from the config alone: finding a prepared store needs
neither tfds nor TensorFlow, nor the source):

  BASE/alexnet_jax_stores/<dataset>/store_<S>_<format>/<split>/
      data-NNNNN.array_record   the records
      split.json                what they hold: dataset, classes, size,
                                format, source and its fingerprint (and
                                an image folder's layout and content
                                digests), the files skipped as unreadable
      stats.npz                 (train) mean image and RGB PCA

BASE is `store.dir`; else, for a tfds dataset, its `data_dir`; else tfds'
default ($TFDS_DATA_DIR, else ~/tensorflow_datasets). <dataset> is the tfds
name, or for an image folder `image_folder_<folder name>_<hash of its path>`:
nothing is ever written inside an image folder. Each time a store is opened
while its image folder is present, the folder's listing (names, sizes, mtimes)
is compared with the one recorded, and a changed split is prepared again
(`store.check_source=False` skips that); where only the mtimes differ (a
fresh copy of the folder), every file is read (not decoded) and compared
with the content digest recorded, and a copy is kept.

Each record is a 4-byte little-endian int32 label followed by the image:
`raw`, S x S x 3 uint8 pixels (196,608 bytes at S = 256), or `jpeg`, the same
pixels JPEG-encoded at `store.jpeg_quality`. ArrayRecord files, one record per
group and uncompressed, give random access in C++ (array_record); we write
them ourselves rather than through tfds's array_record writer, which wraps
each image in a tf.train.Example and compresses it with zstd: a parse and a
decompression on every read, to save little on photographs (docs/data.md).

Integrity: a split is written into `<split>.incomplete/` and renamed only
when complete, so a half-written store never looks prepared, and an
interrupted prepare starts that split again. `split.json` records every
file's size: a missing or truncated file is one error line naming it and the
prepare command, and prepare rewrites that split.
"""

import dataclasses
import hashlib
import io
import json
import os
import shutil
import tempfile
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

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
SHOW_SKIPPED = 5  # Unreadable files named in the log.
MAX_LISTED = 1000  # ... and in split.json.


class StoreError(errors.DataError):
  """A store split that is missing, incomplete or damaged."""


class MissingSplit(StoreError):
  """The split has not been prepared (or its preparation did not finish)."""


STORES = 'alexnet_jax_stores'


@dataclasses.dataclass(frozen=True)
class Spec:
  """A dataset's store: which dataset, where it and its store live, and how
  its images are kept (`from_config`: the config's)."""
  dataset: str
  image_size: int
  data_dir: Optional[str] = None  # tfds data dir, or the image folder.
  manual_dir: Optional[str] = None  # Where the ILSVRC tars are.
  store_dir: Optional[str] = None  # store.dir: the root of the stores.
  format: str = 'raw'
  jpeg_quality: int = 95
  file_bytes: int = 1 << 30
  check_source: bool = True
  max_pixels: int = preprocess.MAX_IMAGE_PIXELS
  splits: Tuple[str, ...] = ('train', 'validation')  # Prepared by default.

  @classmethod
  def from_config(cls, config) -> 'Spec':
    store = config.store
    return cls(dataset=config.dataset, image_size=int(config.image_size),
               data_dir=config.data_dir, manual_dir=config.get('manual_dir'),
               store_dir=store.dir, format=store.format,
               jpeg_quality=int(store.jpeg_quality),
               file_bytes=int(store.file_bytes),
               # Configs saved before these fields existed: the defaults.
               check_source=bool(store.get('check_source', True)),
               max_pixels=int(config.get('max_image_pixels',
                                         preprocess.MAX_IMAGE_PIXELS)),
               splits=(config.train_split, config.eval_split))

  @property
  def is_folder(self) -> bool:
    return self.dataset == 'image_folder'

  @property
  def base_dir(self) -> str:
    """The writable root that stores go under: store.dir; else, for tfds
    datasets, their data_dir; else tfds' default ($TFDS_DATA_DIR, else
    ~/tensorflow_datasets). An image folder is never written to."""
    if self.store_dir:
      return os.path.abspath(os.path.expanduser(self.store_dir))
    if not self.is_folder and self.data_dir:
      return os.path.abspath(os.path.expanduser(self.data_dir))
    return os.path.abspath(os.path.expanduser(
        os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets'))

  @property
  def folder(self) -> str:
    """An image folder's absolute path."""
    return os.path.abspath(os.path.expanduser(self.data_dir))

  @property
  def key(self) -> str:
    """The store's name for the dataset: the tfds name, or for an image
    folder its name and a hash of its absolute path (two folders are both
    'image_folder')."""
    if self.is_folder:
      if not self.data_dir:
        from alexnet_jax.datasets import image_folder  # pylint: disable=g-import-not-at-top
        raise errors.DataError('dataset image_folder needs --config.data_dir='
                               f'DATA_DIR holding {image_folder.LAYOUT}.')
      path = os.path.realpath(os.path.expanduser(self.data_dir))
      tag = hashlib.sha1(path.encode()).hexdigest()[:8]
      return _safe(f'image_folder_{os.path.basename(path.rstrip("/"))}_{tag}')
    if self.store_dir and self.data_dir:
      # One store.dir for several tfds data dirs: keep their stores apart.
      path = os.path.realpath(os.path.expanduser(self.data_dir))
      tag = hashlib.sha1(path.encode()).hexdigest()[:8]
      return _safe(f'{self.dataset}_{tag}')
    return _safe(self.dataset)

  @property
  def directory(self) -> str:
    """Where the store lives (no tfds needed):
    BASE/alexnet_jax_stores/<dataset>/store_<S>_<format>[_q<Q>]."""
    if self.format not in FORMATS:
      raise errors.ConfigError(f'store.format={self.format!r}: use one of '
                               f'{FORMATS}.')
    name = f'store_{self.image_size}_{self.format}'
    if self.format == 'jpeg':
      name += f'_q{self.jpeg_quality}'
    return os.path.join(self.base_dir, STORES, self.key, name)

  def builder(self):
    """The dataset's prepared tfds builder (source.get_builder)."""
    return source.get_builder(self.dataset, self.data_dir, self.manual_dir)


def _safe(name: str) -> str:
  return ''.join(c if c.isalnum() or c in '-_.' else '_' for c in name)


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
  """A prepared dataset: its splits and where it lives."""

  def __init__(self, root: str, dataset: str = None):
    self.root = root
    self.dataset = dataset
    self._splits = {}

  def split(self, name: str) -> Split:
    if name not in self._splits:
      self._splits[name] = Split(_split_dir(self.root, name))
    return self._splits[name]

  def stats_path(self, split: str) -> str:
    return os.path.join(_split_dir(self.root, split), STATS_FILE)


def get(config, splits: Optional[Sequence[str]] = None,
        repair: bool = False, check_source: bool = True) -> Store:
  """The config's store, found from the config alone; a split that is
  missing, or whose image folder changed since it was written, is prepared
  (which needs TensorFlow, and tfds for tfds datasets).

  A damaged split raises StoreError (naming the file and the prepare
  command) unless `repair`, which rewrites it. `check_source=False` opens a
  prepared split without comparing its image folder.
  """
  return prepare(None, Spec.from_config(config), splits, repair, check_source)


def prepare(builder, spec: Spec, splits: Optional[Sequence[str]] = None,
            repair: bool = False, check_source: bool = True) -> Store:
  """Writes every split (default: `spec.splits`) that is missing, changed at
  its source, or (with `repair`) damaged; returns the store. `builder`: the
  tfds builder to read (None: the spec's own, made only if a split must be
  written)."""
  store = Store(spec.directory, spec.dataset)
  _adopt_legacy_store(spec, store.root)
  for split in splits or spec.splits:
    path = _split_dir(store.root, split)
    listing = None
    try:
      prepared = store.split(split)
      listing = (_changed_folder(prepared, spec, split) if check_source
                 else None)
      if listing is None:
        _report_skipped(prepared)
        continue
    except MissingSplit:
      pass
    except StoreError as e:
      if not repair:
        raise
      logging.warning('%s Rewriting it.', e)
      print(f'store: {e} Rewriting it.', flush=True)
    if spec.is_folder:
      source_ = _FolderSource(spec, split, listing)
    else:
      if builder is None:
        builder = spec.builder()
      source_ = _TfdsSource(builder, spec, split)
    _write_split(spec, split, path, source_)
    store._splits.pop(split, None)  # pylint: disable=protected-access
  return store


def _adopt_legacy_store(spec: Spec, root: str):
  """Moves a tfds dataset's store from where earlier versions kept it
  (DATA_DIR/<name>/<version>/store_...: beside the tfds records) to `root`,
  once, so an ImageNet store is not prepared again."""
  if spec.is_folder or spec.store_dir or os.path.exists(root):
    return
  import glob  # pylint: disable=g-import-not-at-top
  old = sorted(glob.glob(os.path.join(spec.base_dir, *spec.dataset.split('/'),
                                      '*', os.path.basename(root))))
  if len(old) != 1:
    if old:
      logging.warning('Stores of earlier versions in %s: not moved (several '
                      'tfds versions); move the one to use to %s.',
                      ', '.join(old), root)
    return
  os.makedirs(os.path.dirname(root), exist_ok=True)
  os.rename(old[0], root)
  print(f'store: moved {old[0]} (where earlier versions kept it) to {root}',
        flush=True)


def _changed_folder(prepared: Split, spec: Spec, split: str):
  """For an image-folder split whose folder is present (and store.check_source
  is on): the folder's new listing if its files differ from the store's,
  else None. Costs one stat per file; where only the mtimes differ, also a
  read of every file (then the new fingerprint is recorded)."""
  if not spec.is_folder or not spec.check_source:
    return None
  from alexnet_jax.datasets import image_folder  # pylint: disable=g-import-not-at-top
  root = spec.folder
  if not os.path.isdir(os.path.join(root, 'train')):
    logging.info('store %s: its source folder %s is not here; using the '
                 'store as it was prepared.', prepared.path, root)
    return None
  start = time.time()
  listing = image_folder.listing(root, split)
  source_meta = prepared.meta.get('source', {})
  logging.info('store %s: %d files of %s checked in %.2f s.', split,
               len(listing.files), root, time.time() - start)
  if listing.fingerprint == source_meta.get('fingerprint'):
    return None
  then = source_meta.get('num_files')
  then = '?' if then is None else f'{then:,}'
  why = 'their names or sizes differ'
  if 'content' not in source_meta:
    why = ('their names, sizes or modification times differ, and the store '
           'predates the digest of contents that tells a copy from a change')
  elif listing.layout == source_meta.get('layout'):
    # The same names and sizes: a copy (new mtimes) or files rewritten in
    # place. Reading every file, without decoding, tells which.
    start = time.time()
    content, read = image_folder.read_content(root, listing)
    if content == source_meta['content']:
      message = (f"store: {root} {split}: the files' times changed, not "
                 f'their contents ({len(listing.files):,} files, {_gb(read)} '
                 f'read in {time.time() - start:.1f} s); keeping the store.')
      logging.info(message)
      print(message, flush=True)
      _record_fingerprint(prepared, listing.fingerprint)
      return None
    why = 'their contents differ'
  message = (f'store: {root} {split} changed since its store was written '
             f'({len(listing.files):,} files now, {then} then; {why}); '
             'preparing it again '
             '(--config.store.check_source=False skips this check).')
  logging.warning(message)
  print(message, flush=True)
  return listing


def _record_fingerprint(prepared: Split, fingerprint: str):
  """Records a folder's new fingerprint for the same contents, so the next
  open compares one stat per file again rather than reading every file."""
  meta = dict(prepared.meta)
  meta['source'] = dict(meta['source'], fingerprint=fingerprint)
  path = os.path.join(prepared.path, SPLIT_FILE)
  tmp = None
  try:
    # A file of its own, synced, then renamed over: a reader (another
    # process on this store) sees the old record or the new, never half.
    fd, tmp = tempfile.mkstemp(dir=prepared.path, prefix=SPLIT_FILE)
    with os.fdopen(fd, 'w') as f:
      json.dump(meta, f, indent=1)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, os.stat(path).st_mode & 0o777)  # mkstemp's is 0600.
    os.replace(tmp, path)
  except OSError as e:
    if tmp and os.path.exists(tmp):
      os.remove(tmp)
    logging.warning("Could not update %s (%s): the next run reads the "
                    "folder's files again to compare them.", path,
                    e.strerror)
    return
  prepared.meta = meta


def _report_skipped(split: Split):
  skipped = split.meta.get('skipped') or {}
  if skipped.get('count'):
    logging.warning('%s: %d unreadable file(s) were skipped when it was '
                    'prepared, e.g. %s (all in its %s).', split.path,
                    skipped['count'], '; '.join(skipped['files'][:3]),
                    SPLIT_FILE)


def _gb(n: float) -> str:
  return f'{n / 1e9:,.2f} GB'


class _TfdsSource:
  """A split of a prepared tfds dataset, read through the host
  preprocessing in tf.data."""

  def __init__(self, builder, spec: Spec, split):
    self.builder, self.spec, self.split = builder, spec, split
    self.name = f'{builder.name} {split}'
    self.num_examples = source.num_examples(builder, split)
    self.skipped = []

  def batches(self):
    """The split's preprocessed images in stored order, as numpy batches."""
    tf = preprocess.tf()
    spec = self.spec
    ds = source.preprocessed_dataset(self.builder, self.split,
                                     spec.image_size, spec.max_pixels)
    if spec.format == 'jpeg':
      quality = spec.jpeg_quality
      ds = ds.map(lambda e: {'image': tf.io.encode_jpeg(e['image'],
                                                        quality=quality),
                             'label': e['label']},
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _too_large_is_one_line(ds.batch(256).prefetch(2).as_numpy_iterator(),
                                  self.name, spec.max_pixels)

  def check(self):
    pass

  def meta(self):
    return {'classes': source.class_names(self.builder),
            'source': {'tfds': self.builder.name,
                       'version': str(self.builder.version),
                       'data_dir': str(self.builder.data_dir)}}


class _FolderSource:
  """A split of an image folder, each file decoded once (image_folder)."""

  def __init__(self, spec: Spec, split, listing=None):
    from alexnet_jax.datasets import image_folder  # pylint: disable=g-import-not-at-top
    self._lib = image_folder
    self.spec, self.split = spec, split
    self.root = spec.folder
    self.listing = listing or image_folder.listing(self.root, split)
    self.name = f'{self.root} {split}'
    self.num_examples = len(self.listing.files)  # At most: bad files skip.
    self.skipped = []

  def batches(self):
    spec = self.spec
    self.counts = np.zeros(len(self.listing.classes), np.int64)
    self.hashes = []
    for batch in self._lib.preprocessed(
        self.root, self.listing.files, spec.image_size, spec.format,
        spec.jpeg_quality, spec.max_pixels, skipped=self.skipped,
        hashes=self.hashes):
      np.add.at(self.counts, np.asarray(batch['label'], np.int64), 1)
      yield batch

  def check(self):
    """Every class kept at least one readable image."""
    empty = [c for c, n in zip(self.listing.classes, self.counts) if not n]
    if empty:
      split_dir = self._lib.SPLIT_DIRS[self.split]
      raise self._lib.LayoutError(
          f'{os.path.join(self.root, split_dir, empty[0])!r} holds no '
          f'readable image ({len(empty)} class(es) like it; the skipped '
          'files are logged above); replace its files, or remove the class '
          'from both train/ and val/.')

  def meta(self):
    listed = self.listing
    return {'classes': listed.classes,
            'source': {'folder': self.root,
                       'fingerprint': listed.fingerprint,
                       'layout': listed.layout,
                       'content': self._lib.content_digest(
                           listed.classes, listed.files, self.hashes),
                       'num_files': len(listed.files)}}


def source_batches(spec: Spec, split: str):
  """The source's preprocessed batches of `split`, as uint8 pixels (the
  benchmark's decode path: decoding and resizing, no store encoding)."""
  spec = dataclasses.replace(spec, format='raw')
  if spec.is_folder:
    return _FolderSource(spec, split).batches()
  return _TfdsSource(spec.builder(), spec, split).batches()


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
    return [np.int32(label).astype('<i4').tobytes() + image.tobytes()
            for image, label in zip(batch['image'], batch['label'])]
  return [np.int32(label).astype('<i4').tobytes() + bytes(image)
          for image, label in zip(batch['image'], batch['label'])]


def _make_dir(tmp: str, path: str):
  if os.path.exists(tmp):
    logging.info('Removing %s, left by an interrupted prepare.', tmp)
    shutil.rmtree(tmp)
  try:
    os.makedirs(tmp)
  except OSError as e:
    raise errors.DataError(
        f'cannot write the store in {os.path.dirname(path)} ({e.strerror}); '
        'set --config.store.dir=DIR to a writable directory.') from None


def _write_split(spec: Spec, split: str, path: str, src):
  """Writes one split from `src` into path.incomplete/, then renames it to
  path (replacing what was there only once the new one is complete)."""
  import tqdm  # pylint: disable=g-import-not-at-top
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  fmt = spec.format
  n = src.num_examples
  tmp = path + INCOMPLETE
  _make_dir(tmp, path)
  batches = src.batches()
  start = time.time()
  first = next(batches, None)
  payloads = _payloads(first, fmt) if first is not None else []
  # Raw records have one size; JPEG's is estimated from the first batch.
  per_record = (np.mean([len(p) for p in payloads]) if payloads else 0) + 32
  estimate = per_record * n * (1.0 if fmt == 'raw' else 1.15)
  free = shutil.disk_usage(tmp).free
  print(f'store: {src.name}: {n:,} images as {fmt} '
        f'{spec.image_size}x{spec.image_size} -> {path}, about '
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
  per_shard = max(1, int(spec.file_bytes // per_record))
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
      bar.update(written + len(src.skipped) - bar.n)
      batch = next(batches, None)
      payloads = _payloads(batch, fmt) if batch is not None else []
    if writer is not None:
      close(writer)
  skipped = src.skipped
  try:
    src.check()
  except errors.DataError:
    shutil.rmtree(tmp)
    raise
  if written + len(skipped) != n or not written:
    shutil.rmtree(tmp)
    what = ('no readable image' if not written else
            f'{written} images but says it has {n}')
    raise errors.DataError(
        f'{src.name}: the source gave {what}; check the source, and prepare '
        'it again.')
  if skipped:
    logging.warning('%s: skipped %d unreadable file(s), e.g. %s', src.name,
                    len(skipped), '; '.join(skipped[:SHOW_SKIPPED]))
    print(f'store: {src.name}: skipped {len(skipped):,} unreadable file(s), '
          f'listed in {os.path.join(path, SPLIT_FILE)}', flush=True)
  seconds = time.time() - start
  meta = {'dataset': spec.dataset, 'split': split, 'num_examples': written,
          'format': fmt, 'image_size': spec.image_size,
          'jpeg_quality': spec.jpeg_quality if fmt == 'jpeg' else None,
          'record': 'int32 little-endian label, then the image: raw uint8 '
                    'HxWx3 or JPEG bytes',
          **src.meta(),
          'skipped': {'count': len(skipped), 'files': skipped[:MAX_LISTED]},
          'bytes': total_bytes, 'files': files,
          'prepare_seconds': round(seconds, 3)}
  with open(os.path.join(tmp, SPLIT_FILE), 'w') as f:
    json.dump(meta, f, indent=1)
  if os.path.exists(path):  # The old split: changed, damaged or incomplete.
    shutil.rmtree(path)
  os.rename(tmp, path)
  print(f'store: {split} written, {written:,} images in {seconds:.1f} s '
        f'({written / max(seconds, 1e-9):,.0f} img/s), '
        f'{_gb(sum(f["bytes"] for f in files))}', flush=True)
