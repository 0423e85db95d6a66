"""An optional one-time cache of a dataset at the paper's stored size.

The paper "down-sampled the images to a fixed resolution of 256 x 256" once and
trained from those. With `config.cache_resized=True` the first run (or
`alexnet_jax.datasets.prepare`) writes every split of the source dataset,
preprocessed exactly as the training input is (RGB, shorter side resized to
`image_size`, centre crop), as JPEG (quality 95) records beside the source's
records; training then decodes small images instead of full-size JPEGs, which
removes the host's main cost on ImageNet.
"""

import os

import tensorflow_datasets as tfds

JPEG_QUALITY = 95


class Resized(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """`source` with every image preprocessed to `size` x `size`."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First version.'}

  def __init__(self, *, source, size: int, **kwargs):
    self._source = source
    self._size = size
    kwargs.setdefault('data_dir', os.path.join(
        os.path.dirname(str(source.data_dir).rstrip('/')), f'resized_{size}'))
    super().__init__(**kwargs)

  @property
  def name(self):  # pylint: disable=invalid-overridden-method
    return f'{self._source.name}_resized'

  def _info(self) -> tfds.core.DatasetInfo:
    names = self._source.info.features['label'].names
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'{self._source.name} at {self._size}x{self._size}.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(
                shape=(self._size, self._size, 3), encoding_format='jpeg'),
            'label': tfds.features.ClassLabel(names=names),
        }),
        supervised_keys=('image', 'label'),
        # Keep the source's stored order, so a run's example order (a shuffle
        # seeded by (seed, epoch)) is the same with and without the cache.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split)
            for split in self._source.info.splits}

  def _generate_examples(self, split):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
    ds = input_pipeline.encoded(self._source, split).map(
        lambda e: input_pipeline.preprocess(e, self._size),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(lambda e: {'image': tf.io.encode_jpeg(e['image'],
                                                      quality=JPEG_QUALITY),
                           'label': e['label']},
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    for i, example in enumerate(ds.as_numpy_iterator()):
      yield i, {'image': example['image'], 'label': int(example['label'])}
