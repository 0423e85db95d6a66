"""A researcher's own images, read straight from their folder into the store.

Layout (config.data_dir):

  DATA_DIR/train/<class name>/<image files>
  DATA_DIR/val/<class name>/<image files>

Class names are the sorted sub-directories of train/; val/ must hold the same
classes, and no class folder may be empty (each checked before anything
is written). ImageNet as clusters keep it extracted works as it is:
train/<wnid>/ gives tfds imagenet2012's class order (its labels.txt is the
sorted WordNet ids), and val/ may be either <wnid>/ folders or ILSVRC-2012's
flat `ILSVRC2012_val_NNNNNNNN.JPEG` files, labelled by the validation labels
that tfds ships with its imagenet2012 builder (line N is image N's WordNet
id). The folder is only ever read:
`alexnet_jax.datasets.store` decodes each image once, through the paper's host
preprocessing (`alexnet_jax.preprocess`), into the store it keeps under its
own root, with a fingerprint of the files it read (names, sizes, mtimes) and
a digest of their contents, so a changed folder is prepared again, a copy
whose only change is its files' times is not, and a store whose folder is
gone still trains.

Readable images (JPEG, PNG, grey, CMYK, a PNG named .JPEG, ...) are taken as
RGB: a JPEG (RGB, grey or CMYK) or PNG is decoded by TensorFlow exactly as
the tfds route decodes it, so both give the same pixels (tested on the
ILSVRC-2012 format in tests/imagenet_test.py); any other image, or one that
TensorFlow will not decode, is decoded once by Pillow.
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
from typing import Dict, Iterator, List, Sequence, Tuple

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


FLAT_VAL = re.compile(r'ILSVRC2012_val_(\d{8})\.JPEG$', re.I)


def _validation_labels() -> List[str]:
  """tfds imagenet2012's validation labels (WordNet id of val image N on line
  N), read from the installed package without importing it."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec('tensorflow_datasets')
  path = spec and os.path.join(os.path.dirname(spec.origin), 'datasets',
                               'imagenet2012', 'validation_labels.txt')
  if not path or not os.path.exists(path):
    raise LayoutError('a flat val/ of ILSVRC-2012 images needs the validation '
                      "labels of tensorflow-datasets' imagenet2012 builder; "
                      'install tensorflow-datasets, or sort val/ into '
                      '<wnid>/ folders.')
  with open(path) as f:
    return f.read().split()


def _flat_val_labels(val: str) -> Dict[str, str]:
  """{file name: WordNet id} of a flat ILSVRC-2012 val/; {} if it has class
  folders instead (or nothing at all)."""
  if _class_dirs(val):
    return {}
  names = [n for n in _visible(os.listdir(val))
           if os.path.isfile(os.path.join(val, n))]
  if not names:
    return {}
  odd = [n for n in names if not FLAT_VAL.match(n)]
  if odd:
    raise LayoutError(
        f'{val!r} has no class folders, and {len(odd)} of its files (e.g. '
        f'{odd[0]!r}) are not ILSVRC-2012 validation images '
        '(ILSVRC2012_val_NNNNNNNN.JPEG), which alone can be labelled without '
        f'them; use {LAYOUT}.')
  labels = _validation_labels()
  out = {}
  for n in names:
    index = int(FLAT_VAL.match(n).group(1))
    if not 1 <= index <= len(labels):
      raise LayoutError(f'{os.path.join(val, n)!r}: ILSVRC-2012 has '
                        f'{len(labels)} validation images, numbered from 1.')
    out[n] = labels[index - 1]
  return out


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
  flat = _flat_val_labels(val)
  if flat:  # ILSVRC-2012's flat val/: every image's class must be in train/.
    unknown = sorted({n for n, wnid in flat.items() if wnid not in names})
    if unknown:
      raise LayoutError(
          f'{len(unknown)} images of the flat {val!r} (e.g. {unknown[0]!r}, '
          f'class {flat[unknown[0]]}) are of classes that train/ lacks; '
          'remove them, or add those classes to train/.')
  val_names = sorted(set(flat.values())) if flat else _class_dirs(val)
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
  for split_dir in SPLIT_DIRS.values() if not flat else ['train']:
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
  """One split's files, in stored order, and digests of what they were when
  listed."""
  classes: List[str]
  files: List[Tuple[str, int]]  # (path relative to the folder, label)
  fingerprint: str  # Of the class list and every file's name, size, mtime.
  layout: str  # The same without the mtimes, which a copy changes.


def listing(root: str, split: str) -> Listing:
  """The split's files (classes in order, files sorted by name), with a
  fingerprint of the class list and every file's name, size and mtime, and
  its layout: the same without the mtimes.

  Costs one stat per file and reads no image.
  """
  if split not in SPLIT_DIRS:
    raise errors.DataError(f'image_folder has no split {split!r}; it has '
                           f'{sorted(SPLIT_DIRS)}.')
  root = os.path.abspath(root)
  classes = class_names(root)
  fingerprint = hashlib.sha256('\n'.join(classes).encode())
  layout = fingerprint.copy()
  files = []

  def add(rel, label, stat):
    layout.update(f'\n{rel}\t{stat.st_size}'.encode())
    fingerprint.update(f'\n{rel}\t{stat.st_size}\t{stat.st_mtime_ns}'.encode())
    files.append((rel, label))

  val = os.path.join(root, SPLIT_DIRS['validation'])
  flat = _flat_val_labels(val) if split == 'validation' else {}
  if flat:  # Sorted by name: image number order, as tfds' own route.
    index = {name: label for label, name in enumerate(classes)}
    for name in sorted(flat):
      add(os.path.join(SPLIT_DIRS[split], name), index[flat[name]],
          os.stat(os.path.join(val, name)))
  else:
    for label, name in enumerate(classes):
      rel_dir = os.path.join(SPLIT_DIRS[split], name)
      with os.scandir(os.path.join(root, rel_dir)) as found:
        entries = sorted((e for e in found
                          if not e.name.startswith('.') and e.is_file()),
                         key=lambda e: e.name)
      for entry in entries:
        add(os.path.join(rel_dir, entry.name), label, entry.stat())
  return Listing(classes, files, fingerprint.hexdigest(), layout.hexdigest())


UNREADABLE = 'unreadable'  # A file's content hash when it cannot be opened.


def _read(path: str) -> Tuple[bytes, str]:
  """A file's bytes and their SHA-256 (OSError if it cannot be read)."""
  with open(path, 'rb') as f:
    data = f.read()
  return data, hashlib.sha256(data).hexdigest()


def content_digest(classes: Sequence[str], files: Sequence[Tuple[str, int]],
                   hashes: Sequence[str]) -> str:
  """One digest of the classes and every file's name, label and content."""
  digest = hashlib.sha256('\n'.join(classes).encode())
  for (rel, label), file_hash in zip(files, hashes, strict=True):
    digest.update(f'\n{rel}\t{label}\t{file_hash}'.encode())
  return digest.hexdigest()


def read_content(root: str, found: Listing, workers: int = 0,
                 chunk: int = 4096) -> Tuple[str, int]:
  """The content digest of `found`'s files, and the bytes read: every file
  is read, none decoded."""
  def one(item):
    try:
      data, file_hash = _read(os.path.join(root, item[0]))
    except OSError:
      return UNREADABLE, 0
    return file_hash, len(data)

  hashes, read = [], 0
  with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count()) as ex:
    # In chunks: one future per file of ImageNet at once would be a gigabyte.
    for start in range(0, len(found.files), chunk):
      for file_hash, n in ex.map(one, found.files[start:start + chunk]):
        hashes.append(file_hash)
        read += n
  return content_digest(found.classes, found.files, hashes), read


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
    self.from_bytes = tf.function(
        lambda data: finish(tf.io.decode_image(
            data, channels=3, expand_animations=False)),
        input_signature=[tf.TensorSpec([], tf.string)])
    self.from_pixels = tf.function(
        finish, input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])

  def __call__(self, data: bytes, limit: int):
    """Encoded bytes -> the stored image (uint8 S x S x 3, or JPEG bytes)."""
    with preprocess.open_checked(data, limit) as image:
      out = None
      if image.format in ('JPEG', 'PNG'):  # As the tfds route decodes them.
        try:
          out = self.from_bytes(data)
        except self._tf.errors.InvalidArgumentError:
          pass  # Pillow may still read it, or say why not.
      if out is None:
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
                 skipped: List[str] = None,
                 hashes: List[str] = None) -> Iterator[Dict[str, list]]:
  """Batches {'image': [...], 'label': [...]} of `files`, in order.

  Each image is decoded once, on `workers` threads (0: every core). Files
  that cannot be read are left out and appended to `skipped` as
  'path (reason)'. Every file's content hash, readable or not, is appended
  to `hashes` in `files`' order (for content_digest).
  """
  skipped = [] if skipped is None else skipped
  hashes = [] if hashes is None else hashes
  fn = _Preprocess(image_size, fmt, quality)

  def load(item):
    rel, label = item
    path = os.path.join(root, rel)
    file_hash = UNREADABLE
    try:
      data, file_hash = _read(path)
      return fn(data, limit), label, file_hash
    except Exception as e:  # pylint: disable=broad-except
      # Pillow raises OSError (UnidentifiedImageError), ValueError,
      # SyntaxError and others on bad data; TensorFlow an OpError. Any of
      # them makes one file unreadable, not the folder.
      return f'{path} ({type(e).__name__}: {_reason(e)})', None, file_hash

  with preprocess.pillow_limit_off(), \
      concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count()) as ex:
    for start in range(0, len(files), batch_size):
      batch = {'image': [], 'label': []}
      for out, label, file_hash in ex.map(load,
                                          files[start:start + batch_size]):
        hashes.append(file_hash)
        if label is None:
          skipped.append(out)
        else:
          batch['image'].append(out)
          batch['label'].append(np.int32(label))
      if batch['image']:
        yield batch
