"""Every config in configs/ is valid and builds its model."""

import glob
import importlib
import os

import jax
import pytest
import tensorflow_datasets as tfds

from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import steps as steps_lib
from alexnet_jax import train
from tests.helpers import ROOT

NAMES = sorted(os.path.basename(p)[:-3] for p in glob.glob(
    os.path.join(ROOT, 'configs', '*.py')) if not p.endswith('__init__.py'))


@pytest.mark.parametrize('name', NAMES)
def test_config_is_valid(name):
  config = importlib.import_module(f'alexnet_jax.configs.{name}').get_config()
  # What a run builds from its config before touching its workdir.
  train.validate_config(config)
  net = model_lib.create_model(config.model)
  optim.create(config, steps_per_epoch=1)
  params = model_lib.param_shapes(net)
  assert jax.tree.leaves(params)
  if name != 'default' and config.dataset not in ('digits', 'image_folder'):
    tfds.builder_cls(config.dataset.split('/')[0])  # A real tfds dataset.
  module = importlib.import_module(f'alexnet_jax.configs.{name}')
  if name != 'default':
    assert 'python -m alexnet_jax.main --config configs/' in module.__doc__


def test_paper_defaults():
  from alexnet_jax.configs import default  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  assert (c.batch_size, c.momentum, c.weight_decay, c.learning_rate) == (
      128, 0.9, 5e-4, 0.01)
  assert (c.model.lrn.k, c.model.lrn.n, c.model.lrn.alpha, c.model.lrn.beta,
          c.model.lrn.alpha_over_n) == (2.0, 5, 1e-4, 0.75, False)
  assert (c.image_size, c.model.input_size, c.model.init) == (256, 224,
                                                              'paper')
  assert (c.augment.pca_lighting, c.eval_crops, c.max_lr_drops) == (0.1, 10, 3)
  assert c.model.dropout_rate == 0.5 and c.num_epochs == 90


def test_four_layer_cnn_is_data_parallel_only():
  from alexnet_jax import errors, optim, parallel  # pylint: disable=g-import-not-at-top
  from alexnet_jax.configs import figure1_digits  # pylint: disable=g-import-not-at-top
  config = figure1_digits.get_config()
  net = model_lib.create_model(config.model)
  tx, _ = optim.create(config, 11)
  with pytest.raises(errors.ConfigError, match='data parallel only: set mesh'):
    steps_lib.create(config, net, tx, parallel.create_mesh(1, 2))
  steps_lib.create(config, net, tx, parallel.create_mesh(2, 1))  # Data parallel.
