"""Fine-tuning from a checkpoint onto an image folder."""

import json
import os

import jax
import numpy as np
import pytest

from alexnet_jax import errors
from alexnet_jax import train
from alexnet_jax.configs import finetune
from tests.helpers import final_params
from tests.helpers import shrink
from tests.helpers import tiny_config
from tests.helpers import validation


def make_folder(root, images, labels, classes=(0, 1, 2)):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for split, (lo, hi) in (('train', (0, 120)), ('val', (120, 180))):
    for c in classes:
      os.makedirs(os.path.join(root, split, f'digit{c}'))
    for i in range(lo, hi):
      if labels[i] in classes:
        Image.fromarray(images[i]).resize((40, 40)).save(
            os.path.join(root, split, f'digit{labels[i]}', f'{i}.png'))


@pytest.mark.slow
def test_finetune_from_a_run_onto_an_image_folder(digits_dir, tmp_path):
  source = str(tmp_path / 'source')
  config = tiny_config(digits_dir)
  config.num_train_steps = 4
  config.augment.scale = 255.0
  train.train_and_evaluate(config, source)
  images, labels = validation(config)
  folder = str(tmp_path / 'folder')
  make_folder(folder, images, labels)

  ft = shrink(finetune.get_config(), batch_size=8, eval_batch_size=8)
  ft.image_size, ft.model.input_size = 100, 90  # Replaced by the source's.
  ft.data_dir = folder
  ft.model.num_classes = 3
  ft.finetune.init_from = source
  # How to compute is the new run's own (the source trained in float32).
  ft.model.dtype, ft.model.matmul_precision = 'bfloat16', 'highest'
  ft.num_train_steps = 6
  ft.log_every_steps = 3
  ft.checkpoint_every_steps = 3
  workdir = str(tmp_path / 'ft')
  result = train.train_and_evaluate(ft, workdir)
  assert result['num_examples'] > 0
  # The run adopted the source's model and input; the caller's config is
  # left as it was.
  with open(os.path.join(workdir, 'config.json')) as f:
    ran = json.load(f)
  assert ran['image_size'] == 72 and ran['model']['input_size'] == 64
  assert ran['augment']['scale'] == 255.0
  assert (ran['model']['dtype'], ran['model']['matmul_precision']) == (
      'bfloat16', 'highest')
  assert ft.image_size == 100 and ft.model.input_size == 90

  before, after = final_params(source), final_params(workdir)
  for layer in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5'):  # Frozen.
    jax.tree.map(np.testing.assert_array_equal, after[layer], before[layer])
  for layer in ('fc6', 'fc7'):  # Started from the source, then trained.
    assert not np.allclose(after[layer]['kernel'], before[layer]['kernel'])
    assert np.abs(after[layer]['kernel'] - before[layer]['kernel']).max() < 0.1
  assert after['fc8']['kernel'].shape == (2, 16, 2)  # 3 classes, 2 towers.
  assert before['fc8']['kernel'].shape == (2, 16, 5)

  # A layer whose shape changed but is not re-initialised: one clear line.
  ft.finetune.reinit = ()
  with pytest.raises(errors.ConfigError, match="add 'fc8' to finetune.reinit"):
    train.train_and_evaluate(ft, str(tmp_path / 'ft2'))
  ft.finetune.reinit = ('fc9',)
  with pytest.raises(errors.ConfigError, match='unknown layer'):
    train.train_and_evaluate(ft, str(tmp_path / 'ft3'))
