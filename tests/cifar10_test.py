"""CIFAR-10 through tfds's real cifar10 builder, on generated files.

The development machines have no internet: the builder's one download (the
cifar-10-binary tarball) is replaced by a directory of generated binary
batches in CIFAR-10's own format; everything after it (tfds preparing the
records, the input pipeline, Figure 1's experiment) is the real code path.
"""

import json
import os

import numpy as np
import pytest


PER_FILE, TEST = 40, 40
CLASSES = ('airplane automobile bird cat deer dog frog horse ship '
           'truck').split()


def _write_batches(root):
  """cifar-10-batches-bin/ with 5 x 40 training and 40 test images."""
  rng = np.random.default_rng(0)
  path = os.path.join(root, 'cifar-10-batches-bin')
  os.makedirs(path)
  with open(os.path.join(path, 'batches.meta.txt'), 'w') as f:
    f.write('\n'.join(CLASSES) + '\n')
  names = [f'data_batch_{i}.bin' for i in range(1, 6)] + ['test_batch.bin']
  for name in names:
    labels = np.arange(PER_FILE) % 10
    records = []
    for label in labels:
      # Each class its own brightness, so the classes are learnable.
      image = rng.integers(0, 60, (3, 32, 32)) + 19 * label
      records.append(bytes([label]) + image.astype(np.uint8).tobytes())
    with open(os.path.join(path, name), 'wb') as f:
      f.write(b''.join(records))


@pytest.fixture(scope='module')
def cifar_dir(tmp_path_factory):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  source = str(tmp_path_factory.mktemp('cifar_source'))
  _write_batches(source)
  data_dir = str(tmp_path_factory.mktemp('cifar_tfds'))
  patch = pytest.MonkeyPatch()
  patch.setattr(tfds.download.DownloadManager, 'download_and_extract',
                lambda self, url: source)
  try:
    builder = tfds.builder('cifar10', data_dir=data_dir)
    builder.download_and_prepare()
  finally:
    patch.undo()
  return data_dir


@pytest.mark.slow
def test_generated_cifar10_is_prepared_by_tfds(cifar_dir):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder('cifar10', data_dir=cifar_dir)
  assert builder.info.splits['train'].num_examples == 5 * PER_FILE
  assert builder.info.splits['test'].num_examples == TEST
  assert builder.info.features['label'].names == list(CLASSES)


@pytest.mark.slow
def test_figure1_cifar10_at_toy_size(cifar_dir, tmp_path, monkeypatch):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from experiments import run  # pylint: disable=g-import-not-at-top

  def no_download(*args):
    raise AssertionError('the prepared dataset was not found')
  monkeypatch.setattr(tfds.download.DownloadManager, 'download_and_extract',
                      no_download)
  out = str(tmp_path / 'results')
  run.main(['figure1_cifar10', '--small', '--seeds', '1', '--variants',
            'relu_lr_0_004,tanh_lr_0_03', '--data_dir', cifar_dir, '--out',
            out, '--workdir_root', str(tmp_path / 'runs')])
  with open(os.path.join(out, 'results.json')) as f:
    results = json.load(f)
  assert [v['slug'] for v in results['variants']] == ['relu_lr_0_004',
                                                       'tanh_lr_0_03']
  for runs in results['runs'].values():
    # Six steps, or fewer if the run reached its 25% target and stopped.
    curve = runs[0]['train_curve']
    assert len(curve) == 6 or curve[-1][2] <= 0.25, curve
    assert 0 <= runs[0]['top1_err'] <= 1
  with open(os.path.join(out, 'configs', 'relu_lr_0_004_seed0.json')) as f:
    config = json.load(f)
  assert config['dataset'] == 'cifar10' and config['eval_split'] == 'test'
  table = open(os.path.join(out, 'results.md')).read()
  assert '25% training error' in table
