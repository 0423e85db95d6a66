"""A researcher's own images, read straight from their folder into the store.

Layout (config.data_dir):

  DATA_DIR/train/<class name>/<image files>
  DATA_DIR/val/<class name>/<image files>

Class names are the sorted sub-directories of train/; val/ must hold the same
classes, and no class folder may be empty (each checked before anything
is written). The folder is only ever read:
`alexnet_jax.datasets.store` decodes each image once, through the paper's host
preprocessing (`alexnet_jax.preprocess`), into the store it keeps under its
own root, with a fingerprint of the files it read (names, sizes, mtimes), so a
changed folder is prepared again and a store whose folder is gone still
trains.

Readable images (JPEG, PNG, grey, CMYK, a PNG named .JPEG, ...) are taken as
RGB: an RGB JPEG is decoded by TensorFlow exactly as the tfds route decodes
it, so both give the same pixels; any other image is decoded once by Pillow.
Unreadable files (corrupt or truncated, empty, not images, or over
`max_image_pixels`) are skipped, logged and listed in the store's
`split.json`, so training never meets a bad image.

Why not tfds' own `tfds.folder_dataset.ImageFolder`: it reads only .jpg,
.jpeg and .png files, stops the whole pass at the first unreadable one
instead of skipping it, takes its classes from every split together (so a
class missing from val/ goes unnoticed), and names splits by directory
('val', where tfds datasets say 'validation'). The tests use it as the tfds
route to compare pixels with.
"""

import concurrent.futures
import dataclasses
import hashlib
import os
import re
from typing import Dict, Iterator, List, Tuple

import numpy as np

from alexnet_jax import errors
from alexnet_jax import preprocess

SPLIT_DIRS = {'train': 'train', 'validation': 'val'}
LAYOUT = 'DATA_DIR/train/<class>/<images> and DATA_DIR/val/<class>/<images>'


class LayoutError(errors.DataError):
  """The image folder does not have the expected layout."""


def _visible(names):
  return sorted(n for n in names if not n.startswith('.'))


def _class_dirs(path: str) -> List[str]:
  return [d for d in _visible(os.listdir(path))
          if os.path.isdir(os.path.join(path, d))]


def class_names(root: str) -> List[str]:
  """The sorted class folders of root/train, checked against root/val."""
  train = os.path.join(root, 'train')
  if not os.path.isdir(train):
    raise LayoutError(f'no {train!r}: image_folder expects {LAYOUT} '
                      '(set --config.data_dir=DATA_DIR).')
  names = _class_dirs(train)
  if not names:
    raise LayoutError(f'{train!r} has no class sub-directories: image_folder '
                      f'expects {LAYOUT}.')
  val = os.path.join(root, 'val')
  if not os.path.isdir(val):
    raise LayoutError(f'{val!r} is missing: image_folder expects {LAYOUT}.')
  val_names = _class_dirs(val)
  missing = sorted(set(names) - set(val_names))
  extra = sorted(set(val_names) - set(names))
  if missing:
    raise LayoutError(
        f'{val!r} lacks class(es) {", ".join(missing[:5])} that train/ has; '
        'add their validation images, or remove them from train/.')
  if extra:
    raise LayoutError(
        f'{val!r} has class(es) {", ".join(extra[:5])} that train/ lacks; '
        'add their training images, or remove them from val/.')
  for split_dir in SPLIT_DIRS.values():
    for name in names:
      path = os.path.join(root, split_dir, name)
      with os.scandir(path) as entries:
        if not any(not e.name.startswith('.') and e.is_file()
                   for e in entries):
          raise LayoutError(
              f'{path!r} is empty; add images to it, or remove the class '
              f'{name!r} from both train/ and val/.')
  return names


@dataclasses.dataclass
class Listing:
  """One split's files, in stored order, and the fingerprint of what they
  were when listed."""
  classes: List[str]
  files: List[Tuple[str, int]]  # (path relative to the folder, label)
  fingerprint: str


def listing(root: str, split: str) -> Listing:
  """The split's files (classes in order, files sorted by name), with a
  fingerprint of the class list and every file's name, size and mtime.

  Costs one stat per file and reads no image.
  """
  if split not in SPLIT_DIRS:
    raise errors.DataError(f'image_folder has no split {split!r}; it has '
                           f'{sorted(SPLIT_DIRS)}.')
  root = os.path.abspath(root)
  classes = class_names(root)
  digest = hashlib.sha256('\n'.join(classes).encode())
  files = []
  for label, name in enumerate(classes):
    rel_dir = os.path.join(SPLIT_DIRS[split], name)
    with os.scandir(os.path.join(root, rel_dir)) as found:
      entries = sorted((e for e in found
                        if not e.name.startswith('.') and e.is_file()),
                       key=lambda e: e.name)
    for entry in entries:
      stat = entry.stat()
      rel = os.path.join(rel_dir, entry.name)
      digest.update(f'\n{rel}\t{stat.st_size}\t{stat.st_mtime_ns}'.encode())
      files.append((rel, label))
  return Listing(classes, files, digest.hexdigest())


class _Preprocess:
  """The host preprocessing of one image, compiled once per image size."""

  def __init__(self, image_size: int, fmt: str, quality: int):
    tf = preprocess.tf()
    self._tf = tf

    def finish(image):
      image = preprocess.resize_and_crop(image, image_size)
      if fmt == 'jpeg':
        return tf.io.encode_jpeg(image, quality=quality)
      return image

    # decode_image is what the tfds route (preprocess.decode) calls.
    self.from_jpeg = tf.function(
        lambda data: finish(tf.io.decode_image(
            data, channels=3, expand_animations=False)),
        input_signature=[tf.TensorSpec([], tf.string)])
    self.from_pixels = tf.function(
        finish, input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])

  def __call__(self, data: bytes, limit: int):
    """Encoded bytes -> the stored image (uint8 S x S x 3, or JPEG bytes)."""
    with preprocess.open_checked(data, limit) as image:
      if image.format == 'JPEG' and image.mode == 'RGB':
        out = self.from_jpeg(data)
      else:
        image.load()  # Decodes fully: truncated files fail here.
        out = self.from_pixels(np.asarray(image.convert('RGB')))
    return out.numpy()


def _reason(error: Exception) -> str:
  """An error's message on one line, without Pillow's buffer address or
  TensorFlow's graph-node names."""
  text = getattr(error, 'message', None) or str(error)
  text = re.sub(r'\{\{[^}]*\}\}\s*|\s*\[\[.*?\]\]|\s*\[Op:[^\]]*\]', '',
                text)
  text = re.sub(r'\s*<_io\.BytesIO object at 0x[0-9a-f]+>', '', text)
  return ' '.join(text.split())[:200]


def preprocessed(root: str, files: List[Tuple[str, int]], image_size: int,
                 fmt: str = 'raw', quality: int = 95,
                 limit: int = preprocess.MAX_IMAGE_PIXELS,
                 batch_size: int = 256, workers: int = 0,
                 skipped: List[str] = None) -> Iterator[Dict[str, list]]:
  """Batches {'image': [...], 'label': [...]} of `files`, in order.

  Each image is decoded once, on `workers` threads (0: every core). Files
  that cannot be read are left out and appended to `skipped` as
  'path (reason)'.
  """
  skipped = [] if skipped is None else skipped
  fn = _Preprocess(image_size, fmt, quality)

  def load(item):
    rel, label = item
    path = os.path.join(root, rel)
    try:
      with open(path, 'rb') as f:
        return fn(f.read(), limit), label
    except Exception as e:  # pylint: disable=broad-except
      # Pillow raises OSError (UnidentifiedImageError), ValueError,
      # SyntaxError and others on bad data; TensorFlow an OpError. Any of
      # them makes one file unreadable, not the folder.
      return f'{path} ({type(e).__name__}: {_reason(e)})', None

  with preprocess.pillow_limit_off(), \
      concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count()) as ex:
    for start in range(0, len(files), batch_size):
      batch = {'image': [], 'label': []}
      for out, label in ex.map(load, files[start:start + batch_size]):
        if label is None:
          skipped.append(out)
        else:
          batch['image'].append(out)
          batch['label'].append(np.int32(label))
      if batch['image']:
        yield batch
