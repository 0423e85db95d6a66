"""A researcher's own images as a tfds dataset.

Layout (config.data_dir):

  DATA_DIR/train/<class name>/<image files>
  DATA_DIR/val/<class name>/<image files>

Class names are the sorted sub-directories of train/. Preparation reads every
file once with Pillow: readable images (JPEG, PNG, grey, CMYK, a PNG named
.JPEG, ...) are converted to RGB and stored as JPEG; unreadable ones (corrupt or
truncated files, empty files, files that are not images) are skipped and
counted, and the count and the first few paths are logged and written to
`skipped.json` beside the prepared records, so training never meets a bad
image. The prepared records live in DATA_DIR/.tfds/; delete that directory
after changing the images to prepare them again.
"""

import io
import json
import os
from typing import List

from absl import logging
import tensorflow_datasets as tfds

from alexnet_jax import preprocess

SPLIT_DIRS = {'train': 'train', 'validation': 'val'}
LAYOUT = ('DATA_DIR/train/<class>/<images> and DATA_DIR/val/<class>/<images>')
SHOW_SKIPPED = 5


class LayoutError(ValueError):
  """The image folder does not have the expected layout."""


def class_names(root: str) -> List[str]:
  train = os.path.join(root, 'train')
  if not os.path.isdir(train):
    raise LayoutError(f'no {train!r}: image_folder expects {LAYOUT} '
                      '(set --config.data_dir=DATA_DIR).')
  names = sorted(d for d in os.listdir(train)
                 if os.path.isdir(os.path.join(train, d))
                 and not d.startswith('.'))
  if not names:
    raise LayoutError(f'{train!r} has no class sub-directories: image_folder '
                      f'expects {LAYOUT}.')
  for split_dir in SPLIT_DIRS.values():
    path = os.path.join(root, split_dir)
    if not os.path.isdir(path) or not any(
        files for _, _, files in os.walk(path)):
      raise LayoutError(f'{path!r} is missing or holds no files: image_folder '
                        f'expects {LAYOUT}.')
  return names


def to_rgb_jpeg(data: bytes,
                max_pixels: int = preprocess.MAX_IMAGE_PIXELS) -> bytes:
  """Any image Pillow can read -> RGB JPEG bytes; raises on unreadable data
  and (preprocess.ImageTooLarge) on more than `max_pixels` pixels, from the
  header, before decoding."""
  with preprocess.open_checked(data, max_pixels) as image:
    image.load()  # Decodes fully: truncated files fail here.
    if image.format == 'JPEG' and image.mode == 'RGB':
      return data  # Already what we store: keep the original bytes.
    rgb = image.convert('RGB')
  out = io.BytesIO()
  rgb.save(out, format='JPEG', quality=95)
  return out.getvalue()


class ImageFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Images in class folders, checked and converted to RGB once."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First version.'}

  def __init__(self, *, root_dir: str,
               max_pixels: int = preprocess.MAX_IMAGE_PIXELS, **kwargs):
    self._root_dir = os.path.abspath(root_dir)
    self._max_pixels = max_pixels
    self._classes = class_names(self._root_dir)
    kwargs.setdefault('data_dir', os.path.join(self._root_dir, '.tfds'))
    super().__init__(**kwargs)

  @property
  def name(self):  # pylint: disable=invalid-overridden-method
    return 'image_folder'

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'Images from {self._root_dir}.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(encoding_format='jpeg'),
            'label': tfds.features.ClassLabel(names=self._classes),
            'file_name': tfds.features.Text(),
        }),
        supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    self._skipped = {}
    return {split: self._generate_examples(split)
            for split in SPLIT_DIRS}

  def _generate_examples(self, split):
    root = os.path.join(self._root_dir, SPLIT_DIRS[split])
    skipped = []
    for label in self._classes:
      folder = os.path.join(root, label)
      if not os.path.isdir(folder):
        continue
      for fname in sorted(os.listdir(folder)):
        path = os.path.join(folder, fname)
        if fname.startswith('.') or not os.path.isfile(path):
          continue
        try:
          with open(path, 'rb') as f:
            data = to_rgb_jpeg(f.read(), self._max_pixels)
        except Exception as e:  # pylint: disable=broad-except
          skipped.append(f'{path} ({type(e).__name__}: {e})')
          continue
        rel = os.path.relpath(path, self._root_dir)
        yield rel, {'image': data, 'label': label, 'file_name': rel}
    self._report(split, skipped)

  def _report(self, split, skipped):
    self._skipped[split] = skipped
    if skipped:
      logging.warning('image_folder %s: skipped %d unreadable file(s), e.g. %s',
                      split, len(skipped), '; '.join(skipped[:SHOW_SKIPPED]))
    path = os.path.join(os.path.dirname(self.data_dir.rstrip('/')),
                        'skipped.json')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
      json.dump({k: {'count': len(v), 'files': v}
                 for k, v in self._skipped.items()}, f, indent=1)


def skipped_report(builder) -> dict:
  path = os.path.join(os.path.dirname(str(builder.data_dir).rstrip('/')),
                      'skipped.json')
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)

