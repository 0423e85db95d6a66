"""The prepared store's integrity: size check, atomic writes, interrupted and
damaged stores, and the one-line errors that name the prepare command."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from alexnet_jax import errors
from alexnet_jax.datasets import store as store_lib
from tests.helpers import ROOT
from tests.helpers import bomb_png
from tests.helpers import tiny_config

spec = store_lib.Spec.from_config


def config_in(digits_dir, store_dir):
  config = tiny_config(digits_dir)
  config.image_size = 72
  config.model.input_size = 64
  config.store.dir = str(store_dir)
  return config


def split_path(config, split='train'):
  return os.path.join(spec(config).directory, split)


def test_prepare_prints_the_estimate_and_checks_free_disk(
    digits_dir, tmp_path, monkeypatch, capsys):
  config = config_in(digits_dir, tmp_path)
  free = shutil.disk_usage(str(tmp_path)).free
  usage = lambda path: shutil._ntuple_diskusage(free, free - 1000, 1000)  # pylint: disable=protected-access
  monkeypatch.setattr(store_lib.shutil, 'disk_usage', usage)
  with pytest.raises(errors.DataError, match='only 0.00 GB is free') as e:
    store_lib.get(config)
  assert 'store.dir' in str(e.value) and 'store.format=jpeg' in str(e.value)
  assert '\n' not in str(e.value)
  out = capsys.readouterr().out
  # 1,438 x (72 x 72 x 3 + label) bytes, about 0.02 GB, and what is free.
  assert '1,438 images as raw 72x72' in out and '0.00 GB free' in out
  # Nothing that looks prepared was left behind.
  assert not os.path.exists(split_path(config))
  assert not os.path.exists(split_path(config) + store_lib.INCOMPLETE)


def test_an_interrupted_prepare_restarts_cleanly(digits_dir, tmp_path,
                                                 monkeypatch):
  config = config_in(digits_dir, tmp_path)
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  real = array_record_module.ArrayRecordWriter

  class Dies:  # A writer that dies (like a kill) after 500 records.

    def __init__(self, *args):
      self.writer, self.count = real(*args), 0

    def write(self, record):
      self.count += 1
      if self.count > 500:
        raise KeyboardInterrupt
      self.writer.write(record)

    def close(self):
      self.writer.close()

  monkeypatch.setattr(array_record_module, 'ArrayRecordWriter', Dies)
  with pytest.raises(KeyboardInterrupt):
    store_lib.get(config)
  path = split_path(config)
  assert os.path.isdir(path + store_lib.INCOMPLETE)
  # Half a split never looks prepared.
  with pytest.raises(store_lib.MissingSplit, match='prepare'):
    store_lib.Split(path)
  monkeypatch.setattr(array_record_module, 'ArrayRecordWriter', real)
  split = store_lib.get(config).split('train')
  assert len(split) == 1438 and not os.path.exists(path + store_lib.INCOMPLETE)
  labels = split.read(range(1438))['label']
  assert np.bincount(labels).min() > 100  # Every class is there.


@pytest.mark.slow
def test_damaged_store_is_one_line_and_prepare_rewrites_it(digits_dir,
                                                          tmp_path):
  config = config_in(digits_dir, tmp_path)
  before = store_lib.get(config).split('train').read(range(1438))
  path = split_path(config)
  data = os.path.join(path, 'data-00000.array_record')
  size = os.path.getsize(data)
  with open(data, 'r+b') as f:
    f.truncate(size - 1000)
  with pytest.raises(store_lib.StoreError) as e:
    store_lib.get(config)
  message = str(e.value)
  assert data in message and 'truncated' in message and '\n' not in message
  assert 'python -m alexnet_jax.datasets.prepare' in message
  # Training stops with that line (exit code 2), changing nothing.
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', XLA_FLAGS='')
  args = ['--config', 'configs/digits.py', f'--config.data_dir={digits_dir}',
          f'--config.store.dir={tmp_path}', '--config.image_size=72',
          '--config.model.input_size=64']
  proc = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.main', '--workdir',
       str(tmp_path / 'run')] + args, cwd=ROOT, env=env, capture_output=True,
      text=True, timeout=300, check=False)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert 'data-00000.array_record is truncated' in proc.stderr.splitlines()[-1]
  # The prepare command rewrites the damaged split.
  proc = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.datasets.prepare'] + args,
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
      check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Rewriting it' in proc.stdout
  assert 'store_72_raw/train/stats.npz' in proc.stdout
  again = store_lib.get(config).split('train').read(range(1438))
  np.testing.assert_array_equal(again['image'], before['image'])
  # A missing file likewise; a split without its split.json is not prepared,
  # and is written anew over what is there.
  os.remove(data)
  with pytest.raises(store_lib.StoreError, match='is missing; rerun'):
    store_lib.get(config)
  os.remove(os.path.join(path, store_lib.SPLIT_FILE))
  with pytest.raises(store_lib.MissingSplit):
    store_lib.Split(path)
  assert len(store_lib.get(config).split('train')) == 1438
  assert os.path.exists(data)


class FakeSource:
  """A tfds-like builder of two encoded images, one a decompression bomb."""

  name, version = 'fake', '1.0.0'

  def __init__(self, data_dir, images):
    import types  # pylint: disable=g-import-not-at-top
    self.data_dir = data_dir
    self.images = images
    self.info = types.SimpleNamespace(
        splits={'train': types.SimpleNamespace(num_examples=len(images))},
        features={})

  def as_dataset(self, split, **kwargs):
    del split, kwargs
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf.data.Dataset.from_tensor_slices(
        {'image': self.images, 'label': list(range(len(self.images)))})


def test_a_decompression_bomb_in_any_dataset_stops_prepare_in_one_line(
    tmp_path):
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  photo = io.BytesIO()
  Image.new('RGB', (500, 375), (200, 10, 10)).save(photo, format='JPEG')
  config = tiny_config(str(tmp_path))
  builder = FakeSource(str(tmp_path / 'fake'), [photo.getvalue(), bomb_png()])
  with pytest.raises(errors.DataError) as e:
    store_lib.prepare(builder, spec(config), ['train'])
  assert str(e.value) == (
      'fake train: an image of 900,000,000 pixels is above the limit of '
      '89,478,485 (max_image_pixels to raise it); set '
      '--config.max_image_pixels=N, or remove the image from the dataset.')
  # Nothing that looks prepared; a lower limit refuses the photo too, and
  # without the bomb the photo is prepared.
  assert not os.path.exists(os.path.join(spec(config).directory,
                                         'train'))
  config.max_image_pixels = 1000
  with pytest.raises(errors.DataError, match='187,500 pixels'):
    store_lib.prepare(FakeSource(builder.data_dir, [photo.getvalue()]),
                      spec(config), ['train'])
  config.max_image_pixels = 89_478_485
  split = store_lib.prepare(FakeSource(builder.data_dir, [photo.getvalue()]),
                            spec(config), ['train']).split('train')
  pixel = split.read([0])['image'][0, 36, 36].astype(int)
  assert np.abs(pixel - [200, 10, 10]).max() <= 3, pixel  # JPEG's loss.


@pytest.mark.slow
def test_a_split_in_many_files_reads_the_same(digits_dir, tmp_path):
  # ImageNet's raw store is hundreds of files: reads that cross them give
  # the same examples as one file does.
  one = store_lib.get(config_in(digits_dir, tmp_path / 'one')).split('train')
  config = config_in(digits_dir, tmp_path / 'many')
  config.store.file_bytes = 100 * 72 * 72 * 3
  many = store_lib.get(config).split('train')
  assert len(one.meta['files']) == 1 and len(many.meta['files']) == 15
  order = np.random.RandomState(0).permutation(1438)
  for got, want in ((many.read(order), one.read(order)),
                    (many.read([1437, 0, 99, 100]), one.read([1437, 0, 99,
                                                              100]))):
    np.testing.assert_array_equal(got['image'], want['image'])
    np.testing.assert_array_equal(got['label'], want['label'])
  with pytest.raises(IndexError, match='out of range'):
    many.read([1438])


def test_a_store_where_earlier_versions_kept_it_is_moved_not_rewritten(
    digits_dir, tmp_path, monkeypatch):
  # Earlier versions kept a tfds dataset's store beside its records:
  # DATA_DIR/<name>/<version>/store_...; an ImageNet store must not be
  # prepared again (hours) because the layout moved.
  config = tiny_config(digits_dir)
  config.image_size, config.model.input_size = 72, 64
  prepared = spec(config).directory
  config.data_dir = str(tmp_path)
  old = tmp_path / 'digits' / '1.0.0' / os.path.basename(prepared)
  shutil.copytree(prepared, str(old))
  monkeypatch.setattr(store_lib, '_write_split', None)  # Must not be called.
  data = store_lib.get(config)
  assert data.root == spec(config).directory != str(old)
  assert not old.exists() and len(data.split('train')) == 1438


def test_the_spec_and_reading_defaults_are_the_papers_config():
  # Spec and Reading are what the store and the input pipeline take of a
  # config; their own defaults must not drift from configs/default.py's.
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from alexnet_jax.configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  assert spec(config) == store_lib.Spec(dataset=config.dataset,
                                        image_size=config.image_size)
  assert input_pipeline.Reading.from_config(config) == input_pipeline.Reading(
      batch_size=config.batch_size, eval_batch_size=config.eval_batch_size)
  # A config saved before max_image_pixels and store.check_source existed.
  old = config.to_dict()
  del old['max_image_pixels'], old['store']['check_source']
  import ml_collections  # pylint: disable=g-import-not-at-top
  assert spec(ml_collections.ConfigDict(old)) == spec(config)
