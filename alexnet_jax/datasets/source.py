"""Where a dataset comes from: its tfds builder, prepared once by tfds.

tfds defines the datasets this project reads by name: the embedded digits,
ImageNet from its ILSVRC-2012 tars, or any tfds name (an image folder is read
by the store directly: `alexnet_jax.datasets.image_folder`). `get_builder`
returns the prepared builder (tfds converts the source files into its records
once); `preprocessed` reads a split of it in stored
order through the paper's host preprocessing, which is how the store
(`alexnet_jax.datasets.store`) is written and what the JPEG path costs.
"""

import os
from typing import Optional

from absl import logging

from alexnet_jax import errors
from alexnet_jax import preprocess

# ImageNet's one-time manual download (tfds reads the tars as they are).
IMAGENET_TARS = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')


def get_builder(name: str, data_dir: Optional[str] = None,
                manual_dir: Optional[str] = None):
  """The prepared tfds builder of dataset `name` in `data_dir` (None: tfds'
  default), prepared if needed (ImageNet from the tars in `manual_dir`)."""
  preprocess.check_tf()  # tfds needs it: one line naming the fix if missing.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if name == 'digits':
    from alexnet_jax.datasets import digits  # pylint: disable=unused-import,g-import-not-at-top
  if name == 'image_folder':
    raise errors.DataError('an image folder is read by the store itself, not '
                           'through tfds (alexnet_jax.datasets.store.get).')
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # tfds raises several types for unknown names.
    raise errors.DataError(
        f'dataset {name!r} is not a tfds dataset ({e}); use '
        "'digits', 'image_folder' or a tfds name.") from e
  if not builder.is_prepared():
    if name == 'imagenet2012':
      _check_imagenet_tars(manual_dir, builder.data_dir)
    logging.info('Preparing tfds dataset %s in %s (once).', name,
                 builder.data_dir)
    kwargs = {}
    if manual_dir:
      kwargs['download_config'] = tfds.download.DownloadConfig(
          manual_dir=manual_dir)
    builder.download_and_prepare(**kwargs)
  return builder


def _check_imagenet_tars(manual_dir, data_dir):
  """One clear error instead of tfds's when the ILSVRC tars are not there."""
  expected = ' and '.join(IMAGENET_TARS)
  if not manual_dir:
    raise errors.DataError(
        f'imagenet2012 is not prepared in {data_dir}; download {expected} from '
        'image-net.org into a directory and pass --config.manual_dir=DIR '
        '(README "Data").')
  missing = [t for t in IMAGENET_TARS
             if not os.path.exists(os.path.join(manual_dir, t))]
  if missing:
    raise errors.DataError(
        f'manual_dir {manual_dir!r} lacks {", ".join(missing)}; it must hold '
        f'{expected} as downloaded from image-net.org.')


def num_examples(builder, split: str) -> int:
  try:
    return builder.info.splits[split].num_examples
  except KeyError as e:
    raise errors.DataError(
        f'dataset {builder.name!r} has no split {split!r}; it has '
        f'{sorted(builder.info.splits)}.') from e


def class_names(builder):
  """The label names, or None where the dataset has none."""
  try:
    return list(builder.info.features['label'].names)
  except (KeyError, AttributeError, TypeError):
    return None


def encoded(builder, split):
  """A split's records in stored order, images still encoded (tf.data)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return builder.as_dataset(
      split=split, shuffle_files=False,
      decoders={'image': tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(interleave_cycle_length=1))


def preprocessed_dataset(builder, split: str, image_size: int,
                         limit: int = preprocess.MAX_IMAGE_PIXELS):
  """A split in stored order through the host preprocessing (tf.data;
  decoding and resizing on every core, in order)."""
  tf = preprocess.tf()
  return encoded(builder, split).map(
      lambda e: preprocess.example(e, image_size, limit),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def preprocessed(builder, split: str, image_size: int, batch_size: int = 128,
                 limit: int = preprocess.MAX_IMAGE_PIXELS):
  """preprocessed_dataset as numpy batches; the last may be short."""
  return preprocessed_dataset(builder, split, image_size, limit).batch(
      batch_size).prefetch(2).as_numpy_iterator()
