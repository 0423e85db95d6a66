"""tfds -> host decode and resize -> per-host batches -> global device arrays.

Host side (tf.data): decode, convert to RGB, resize the shorter side to
`config.image_size`, centre crop a square, keep uint8 (the paper's
preprocessing). Random crops, flips and mean subtraction happen on the device
(`alexnet_jax.augment`).

Order: the training stream of epoch e is a shuffle seeded by (seed, e), so it is
a function of the config alone. Resuming at step s skips the first
`s mod steps_per_epoch` batches of that epoch's (still encoded) stream, so a
resumed run sees the batches an uninterrupted run would have seen.
"""

import os
import queue
import threading
from typing import Dict, Iterator, Optional

from absl import logging
import jax
import numpy as np

from alexnet_jax import errors
from alexnet_jax import parallel

# ImageNet's one-time manual download (tfds reads the tars as they are).
IMAGENET_TARS = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')


class DataError(errors.UserError):
  """A dataset that cannot be found, prepared or read."""


def _tf():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  # tf.data only; keep TensorFlow off any accelerator JAX wants.
  tf.config.set_visible_devices([], 'GPU')
  return tf


def get_builder(config):
  """The prepared tfds builder for `config.dataset` (prepares it if needed)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  name = config.dataset
  if name == 'digits':
    from alexnet_jax.datasets import digits  # pylint: disable=unused-import,g-import-not-at-top
  if name == 'image_folder':
    from alexnet_jax.datasets import image_folder  # pylint: disable=g-import-not-at-top
    if not config.data_dir:
      raise DataError('dataset image_folder needs --config.data_dir=DATA_DIR '
                      f'holding {image_folder.LAYOUT}.')
    try:
      builder = image_folder.ImageFolder(root_dir=config.data_dir)
    except image_folder.LayoutError as e:
      raise DataError(str(e)) from e
  else:
    try:
      builder = tfds.builder(name, data_dir=config.data_dir)
    except Exception as e:  # tfds raises several types for unknown names.
      raise DataError(f'dataset {name!r} is not a tfds dataset ({e}); use '
                      "'digits', 'image_folder' or a tfds name.") from e
  if not builder.is_prepared():
    if name == 'imagenet2012':
      _check_imagenet_tars(config.manual_dir, builder.data_dir)
    logging.info('Preparing tfds dataset %s in %s (once).', name,
                 builder.data_dir)
    kwargs = {}
    if config.manual_dir:
      kwargs['download_config'] = tfds.download.DownloadConfig(
          manual_dir=config.manual_dir)
    builder.download_and_prepare(**kwargs)
  if name == 'image_folder':
    for split, report in image_folder.skipped_report(builder).items():
      if report['count']:
        logging.warning('image_folder %s: %d unreadable file(s) were skipped '
                        'when the dataset was prepared, e.g. %s', split,
                        report['count'], '; '.join(report['files'][:3]))
  if config.get('cache_resized'):
    builder = _resized(builder, config.image_size)
  return builder


def _resized(source, size: int):
  """The one-time cache of `source` at size x size (see datasets/resized.py)."""
  from alexnet_jax.datasets import resized  # pylint: disable=g-import-not-at-top
  builder = resized.Resized(source=source, size=size)
  if not builder.is_prepared():
    logging.info('Caching %s at %dx%d in %s (once).', source.name, size, size,
                 builder.data_dir)
    builder.download_and_prepare()
  return builder


def _check_imagenet_tars(manual_dir, data_dir):
  """One clear error instead of tfds's when the ILSVRC tars are not there."""
  expected = ' and '.join(IMAGENET_TARS)
  if not manual_dir:
    raise DataError(
        f'imagenet2012 is not prepared in {data_dir}; download {expected} from '
        'image-net.org into a directory and pass --config.manual_dir=DIR '
        '(README "ImageNet").')
  missing = [t for t in IMAGENET_TARS
             if not os.path.exists(os.path.join(manual_dir, t))]
  if missing:
    raise DataError(f'manual_dir {manual_dir!r} lacks {", ".join(missing)}; it '
                    f'must hold {expected} as downloaded from image-net.org.')


def num_examples(builder, split: str) -> int:
  try:
    return builder.info.splits[split].num_examples
  except KeyError as e:
    raise DataError(f'dataset {builder.name!r} has no split {split!r}; it has '
                    f'{sorted(builder.info.splits)}.') from e


def preprocess(example, image_size: int):
  """The paper's host preprocessing: RGB, shorter side -> S, centre S x S."""
  tf = _tf()
  image = tf.io.decode_image(example['image'], channels=3,
                             expand_animations=False)
  return {'image': resize_and_crop(image, image_size),
          'label': tf.cast(example['label'], tf.int32)}


def resize_and_crop(image, image_size: int):
  """A decoded RGB image -> shorter side S, centre S x S crop, uint8."""
  tf = _tf()
  image = tf.convert_to_tensor(image)
  h = tf.cast(tf.shape(image)[0], tf.float32)
  w = tf.cast(tf.shape(image)[1], tf.float32)
  scale = image_size / tf.minimum(h, w)
  new_h = tf.maximum(image_size, tf.cast(tf.round(h * scale), tf.int32))
  new_w = tf.maximum(image_size, tf.cast(tf.round(w * scale), tf.int32))
  image = tf.image.resize(image, (new_h, new_w), antialias=True)
  top = (new_h - image_size) // 2
  left = (new_w - image_size) // 2
  image = image[top:top + image_size, left:left + image_size]
  image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
  return tf.ensure_shape(image, (image_size, image_size, 3))


def encoded(builder, split):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return builder.as_dataset(
      split=split, shuffle_files=False,
      decoders={'image': tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(interleave_cycle_length=1))


def default_rows(global_batch: int, mesh=None):
  """This process's rows of each global batch (parallel.process_rows)."""
  if mesh is not None:
    return parallel.process_rows(mesh, global_batch)
  count, index = jax.process_count(), jax.process_index()
  local = global_batch // count
  return index * local, (index + 1) * local


def _local_slice(ds, global_batch: int, rows):
  """Keeps rows [start, stop) of every global batch, before decoding.

  Every process walks the same (seeded) order of encoded records, so a global
  batch is the same whatever the process count; each decodes and preprocesses
  only its own rows.
  """
  tf = _tf()
  start, stop = rows
  if (start, stop) == (0, global_batch):
    return ds
  ds = ds.batch(global_batch, drop_remainder=True)
  ds = ds.map(lambda b: tf.nest.map_structure(lambda x: x[start:stop], b))
  return ds.unbatch()


def train_batches(builder, config, epoch: int, start_batch: int = 0,
                  rows=None) -> Iterator[Dict[str, np.ndarray]]:
  """This process's share of epoch `epoch`'s training batches, from a batch on.

  Every global batch is full (the epoch's last partial batch is dropped).
  `rows`: this process's rows of each global batch (default_rows).
  """
  rows = rows or default_rows(config.batch_size)
  tf = _tf()
  ds = encoded(builder, config.train_split)
  n = num_examples(builder, config.train_split)
  seed = int(np.random.SeedSequence([config.seed, epoch]).generate_state(1)[0])
  ds = ds.shuffle(min(n, config.shuffle_buffer), seed=seed,
                  reshuffle_each_iteration=False)
  ds = ds.skip(start_batch * config.batch_size)
  ds = _local_slice(ds, config.batch_size, rows)
  ds = ds.map(lambda e: preprocess(e, config.image_size),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  # A record that still fails to decode is dropped with a warning rather than
  # ending a days-long run (image_folder and tfds' ImageNet are checked when
  # prepared, so this should never fire).
  ds = ds.ignore_errors(log_warning=True)
  ds = ds.batch(rows[1] - rows[0], drop_remainder=True)
  ds = ds.prefetch(2)
  yield from ds.as_numpy_iterator()


def train_stream(builder, config, epoch: int = 0, batch: int = 0,
                 rows=None) -> Iterator[Dict[str, np.ndarray]]:
  """Endless training batches from position (epoch, batch in that epoch).

  The stream is a function of (seed, position) only: a run resumed at the
  position stored in its checkpoint sees exactly the batches an uninterrupted
  run would have seen, across epoch boundaries too.
  """
  while True:
    yield from train_batches(builder, config, epoch, batch, rows)
    epoch, batch = epoch + 1, 0


def unshuffled_batches(builder, config, split: str, batch_size: int = 256):
  """A whole split in stored order, preprocessed (dataset statistics)."""
  tf = _tf()
  ds = encoded(builder, split).map(
      lambda e: preprocess(e, config.image_size),
      num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(batch_size).prefetch(2).as_numpy_iterator()


def eval_batches(builder, config, split: Optional[str] = None,
                 rows=None) -> Iterator[Dict[str, np.ndarray]]:
  """The whole split in order, in full batches; padding has mask 0.

  `rows`: this process's rows of each global batch (default_rows).
  """
  tf = _tf()
  split = split or config.eval_split
  n = num_examples(builder, split)
  gb = config.eval_batch_size
  ds = encoded(builder, split)
  ds = ds.map(lambda e: preprocess(e, config.image_size),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.map(lambda e: dict(e, mask=tf.constant(1.0)))
  pad = -n % gb
  if pad:
    blank = {'image': tf.zeros((config.image_size,) * 2 + (3,), tf.uint8),
             'label': tf.constant(0, tf.int32), 'mask': tf.constant(0.0)}
    ds = ds.concatenate(tf.data.Dataset.from_tensors(blank).repeat(pad))
  rows = rows or default_rows(gb)
  ds = _local_slice(ds, gb, rows)
  ds = ds.batch(rows[1] - rows[0], drop_remainder=True).prefetch(2)
  yield from ds.as_numpy_iterator()


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
  """Moves batches to the devices in a background thread, `size` ahead."""
  q = queue.Queue(maxsize=size)
  sentinel = object()

  def producer():
    try:
      for b in batches:
        q.put(to_global(b, mesh, global_batch))
    except Exception as e:  # Surface errors in the consumer.
      q.put(e)
    q.put(sentinel)

  threading.Thread(target=producer, daemon=True).start()
  while True:
    item = q.get()
    if item is sentinel:
      return
    if isinstance(item, Exception):
      raise item
    yield item
