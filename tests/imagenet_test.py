"""The real ImageNet path: tfds' imagenet2012 builder on a generated manual_dir.

The test writes a tiny manual_dir in the ILSVRC-2012 format (a train tar
holding one tar of JPEGs per synset, and a val tar of ILSVRC2012_val_*.JPEG
files), lets tfds prepare it exactly as it would the real 147 GB, and trains
and evaluates (10 crops) through configs/ilsvrc2012.py with size overrides.
"""

import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from alexnet_jax import errors
from alexnet_jax import input_pipeline
from alexnet_jax import train
from alexnet_jax.datasets import store
from alexnet_jax.configs import ilsvrc2012
from tests.helpers import ROOT
from tests.helpers import shrink

IMAGES_PER_SYNSET = 6
NUM_VAL = 8


def jpeg(rng, mode='RGB', fmt='JPEG'):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  h, w = rng.randint(60, 110, size=2)
  pixels = rng.randint(0, 256, (h, w, 3), dtype=np.uint8)
  image = Image.fromarray(pixels).convert(mode)
  buf = io.BytesIO()
  image.save(buf, format=fmt)
  return buf.getvalue()


def add_file(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def make_manual_dir(path, synsets):
  rng = np.random.RandomState(0)
  os.makedirs(path, exist_ok=True)
  with tarfile.open(os.path.join(path, 'ILSVRC2012_img_train.tar'), 'w') as t:
    for synset in synsets:
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode='w') as s:
        for i in range(IMAGES_PER_SYNSET):
          # ImageNet holds grey and CMYK JPEGs too.
          mode = {1: 'L', 2: 'CMYK'}.get(i, 'RGB')
          add_file(s, f'{synset}_{i}.JPEG', jpeg(rng, mode))
      add_file(t, f'{synset}.tar', inner.getvalue())
  with tarfile.open(os.path.join(path, 'ILSVRC2012_img_val.tar'), 'w') as t:
    for i in range(1, NUM_VAL + 1):
      add_file(t, f'ILSVRC2012_val_{i:08d}.JPEG', jpeg(rng))


@pytest.fixture(scope='module')
def imagenet_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp('imagenet')
  labels = tfds.core.tfds_path('datasets/imagenet2012/labels.txt')
  synsets = labels.read_text().split()[:3]
  manual = str(root / 'manual')
  make_manual_dir(manual, synsets)
  return manual, str(root / 'tfds'), synsets


def tiny_imagenet_config(manual, data_dir):
  config = shrink(ilsvrc2012.get_config(), batch_size=6, eval_batch_size=4)
  config.manual_dir = manual
  config.data_dir = data_dir
  config.num_train_steps = 3
  config.log_every_steps = 1
  return config


def test_missing_tars_are_a_clear_error(tmp_path):
  config = tiny_imagenet_config(None, str(tmp_path / 'tfds'))
  with pytest.raises(errors.DataError, match='manual_dir'):
    store.Spec.from_config(config).builder()
  config.manual_dir = str(tmp_path)
  with pytest.raises(errors.DataError,
                     match='lacks ILSVRC2012_img_train.tar'):
    store.Spec.from_config(config).builder()


@pytest.mark.slow
def test_imagenet_prepares_and_trains(imagenet_dirs, tmp_path):
  manual, data_dir, synsets = imagenet_dirs
  config = tiny_imagenet_config(manual, data_dir)
  builder = store.Spec.from_config(config).builder()
  assert builder.info.splits['train'].num_examples == 3 * IMAGES_PER_SYNSET
  assert builder.info.splits['validation'].num_examples == NUM_VAL
  assert builder.info.features['label'].num_classes == 1000
  batch = next(input_pipeline.train_batches(
      store.get(config).split('train'),
      input_pipeline.Reading.from_config(config), epoch=0))
  assert batch['image'].shape == (6, 72, 72, 3)
  names = {builder.info.features['label'].int2str(l) for l in batch['label']}
  assert names <= set(synsets)

  workdir = str(tmp_path / 'run')
  result = train.train_and_evaluate(config, workdir)
  assert result['num_examples'] == NUM_VAL
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(l) for l in f]
  assert [r['step'] for r in records if r['split'] == 'train'] == [1, 2, 3]
  assert records[-1]['split'] == 'eval'


@pytest.mark.slow
def test_readme_prepare_command(imagenet_dirs):
  """README's one-time preparation command, as a user runs it."""
  manual, data_dir, _ = imagenet_dirs
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', XLA_FLAGS='')
  proc = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.datasets.prepare', '--config',
       'configs/ilsvrc2012.py', f'--config.manual_dir={manual}',
       f'--config.data_dir={data_dir}', '--config.image_size=72'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
      check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'imagenet2012 train: {3 * IMAGES_PER_SYNSET} examples' in proc.stdout
  assert 'store_72_raw/train/stats.npz' in proc.stdout
  proc = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.datasets.prepare', '--config',
       'configs/ilsvrc2012.py', f'--config.data_dir={data_dir}x'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
      check=False)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert 'manual_dir' in proc.stderr.splitlines()[-1]


@pytest.mark.slow
def test_an_extracted_folder_gives_the_tars_routes_pixels(imagenet_dirs,
                                                          tmp_path):
  """The same ILSVRC-2012 images, extracted as clusters keep them
  (train/<wnid>/*.JPEG), give the tars route's pixels and classes."""
  from alexnet_jax.datasets import image_folder  # pylint: disable=g-import-not-at-top
  manual, data_dir, synsets = imagenet_dirs
  root = tmp_path / 'extracted'
  with tarfile.open(os.path.join(manual, 'ILSVRC2012_img_train.tar')) as t:
    for member in t.getmembers():
      wnid = member.name[:-len('.tar')]
      with tarfile.open(fileobj=t.extractfile(member)) as inner:
        for image in inner.getmembers():
          for split in ('train', 'val') if image.name.endswith('_0.JPEG') else (
              'train',):
            os.makedirs(root / split / wnid, exist_ok=True)
            (root / split / wnid / image.name).write_bytes(
                inner.extractfile(image).read())
  tars = tiny_imagenet_config(manual, data_dir)
  folder = tiny_imagenet_config(None, None)
  folder.dataset, folder.data_dir = 'image_folder', str(root)
  folder.store.dir = str(tmp_path / 'stores')
  folder.model.num_classes = len(synsets)

  def images(config, names):
    split = store.get(config).split('train')
    got = split.read(range(len(split)))
    return sorted((names(int(l)), img.tobytes())
                  for l, img in zip(got['label'], got['image']))
  builder = store.Spec.from_config(tars).builder()
  int2str = builder.info.features['label'].int2str
  classes = image_folder.class_names(str(root))
  by_tars = images(tars, int2str)
  by_folder = images(folder, classes.__getitem__)
  assert len(by_tars) == 3 * IMAGES_PER_SYNSET  # Grey and CMYK among them.
  assert [c for c, _ in by_folder] == [c for c, _ in by_tars]
  assert by_folder == by_tars
