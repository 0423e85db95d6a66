"""scikit-learn's handwritten digits as a tfds dataset (no download).

1,797 real 8x8 grey-level images of the digits 0-9 (the UCI "Optical
Recognition of Handwritten Digits" test set) ship inside scikit-learn, so this
builder prepares a real image dataset on any machine, offline, in about a
second. The same tfds path later serves ImageNet.

Splits: a fixed, stratified 80/20 partition (seed 0): 1,438 'train' and 359
'validation' images. Pixels (0..16 in scikit-learn) are stored as uint8 0..255.
"""

import numpy as np
import tensorflow_datasets as tfds

VALIDATION_FRACTION = 0.2
SPLIT_SEED = 0


def split_indices(labels: np.ndarray):
  """Stratified, fixed train / validation indices."""
  rng = np.random.RandomState(SPLIT_SEED)
  train, val = [], []
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    n_val = int(round(len(idx) * VALIDATION_FRACTION))
    val.extend(idx[:n_val])
    train.extend(idx[n_val:])
  return np.sort(np.array(train)), np.sort(np.array(val))


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 handwritten digits, 10 classes."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Stratified 80/20 train/validation split.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(8, 8, 1)),
            'label': tfds.features.ClassLabel(
                names=[str(i) for i in range(10)]),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://scikit-learn.org/stable/datasets/toy_dataset.html',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {
        'train': self._generate_examples('train'),
        'validation': self._generate_examples('validation'),
    }

  def _generate_examples(self, split):
    from sklearn import datasets  # pylint: disable=g-import-not-at-top
    digits = datasets.load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    train, val = split_indices(digits.target)
    for i in (train if split == 'train' else val):
      yield int(i), {'image': images[i][..., None],
                     'label': int(digits.target[i])}
