"""Your own images, bad files included."""

import io
import json
import os

import numpy as np
import pytest

from alexnet_jax import errors
from alexnet_jax import train
from alexnet_jax.datasets import image_folder
from alexnet_jax.datasets import source
from alexnet_jax.datasets import store
from configs import image_folder as image_folder_config
from tests.helpers import bomb_png
from tests.helpers import shrink

CLASSES = ('cat', 'dog', 'eel')


def encode(rng, mode='RGB', fmt='JPEG', size=(40, 56)):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  pixels = rng.randint(0, 256, size + (3,), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).convert(mode).save(buf, format=fmt)
  return buf.getvalue()


def make_folder(root):
  rng = np.random.RandomState(0)
  for split, n in (('train', 5), ('val', 2)):
    for c in CLASSES:
      os.makedirs(os.path.join(root, split, c))
      for i in range(n):
        with open(os.path.join(root, split, c, f'{i}.jpg'), 'wb') as f:
          f.write(encode(rng))
  odd = os.path.join(root, 'train', 'cat')
  good = encode(rng)
  files = {
      'cmyk.jpg': encode(rng, 'CMYK'),           # readable: converted
      'grey.jpg': encode(rng, 'L'),              # readable: converted
      'png_named.JPEG': encode(rng, fmt='PNG'),  # readable: converted
      'truncated.jpg': good[:len(good) // 2],    # unreadable
      'empty.jpg': b'',                          # unreadable
      'notes.txt': b'not an image at all',       # unreadable
      'bomb.png': bomb_png(),                    # 900 Mpixels: refused
  }
  for name, data in files.items():
    with open(os.path.join(odd, name), 'wb') as f:
      f.write(data)
  return 4  # Unreadable or refused files.


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('images'))
  bad = make_folder(root)
  return root, bad


def small_config(root):
  config = shrink(image_folder_config.get_config(), batch_size=6,
                  eval_batch_size=6)
  config.data_dir = root
  config.model.num_classes = 3
  config.num_train_steps = 2
  config.log_every_steps = 1
  return config


@pytest.mark.slow
def test_bad_images_are_converted_or_skipped(folder):
  root, bad = folder
  builder = source.get_builder(small_config(root))
  assert builder.info.features['label'].names == list(CLASSES)
  # 15 good + 3 readable odd ones in train; 6 in val.
  assert builder.info.splits['train'].num_examples == 18
  assert builder.info.splits['validation'].num_examples == 6
  report = image_folder.skipped_report(builder)
  assert report['train']['count'] == bad and report['validation']['count'] == 0
  names = ' '.join(report['train']['files'])
  for name in ('truncated.jpg', 'empty.jpg', 'notes.txt', 'bomb.png'):
    assert name in names
  # The decompression bomb is refused from its header, naming the limit.
  assert ('900,000,000 pixels is above the limit of 89,478,485 '
          '(max_image_pixels to raise it)') in names
  images = store.get(small_config(root)).split('train').read(range(18))
  assert images['image'].shape == (18, 72, 72, 3)


@pytest.mark.slow
def test_training_on_a_folder(folder, tmp_path):
  root, _ = folder
  result = train.train_and_evaluate(small_config(root), str(tmp_path))
  assert result['num_examples'] == 6
  with open(os.path.join(str(tmp_path), 'metrics.jsonl')) as f:
    assert [json.loads(l)['split'] for l in f][-1] == 'eval'


def test_wrong_class_count_names_the_fix(folder, tmp_path):
  root, _ = folder
  config = small_config(root)
  config.model.num_classes = 5
  with pytest.raises(errors.ConfigError, match='num_classes=3'):
    train.train_and_evaluate(config, str(tmp_path))


def test_layout_errors(tmp_path):
  config = small_config(str(tmp_path / 'nothing'))
  with pytest.raises(errors.DataError, match='train/<class>'):
    source.get_builder(config)
  os.makedirs(tmp_path / 'half' / 'train' / 'a')
  (tmp_path / 'half' / 'train' / 'a' / 'x.jpg').write_bytes(b'x')
  config = small_config(str(tmp_path / 'half'))
  with pytest.raises(errors.DataError, match='val'):
    source.get_builder(config)
  config.data_dir = None
  with pytest.raises(errors.DataError, match='data_dir'):
    source.get_builder(config)
