"""Shared test setup.

Eight simulated CPU devices, so mesh tests run in-process; this must be set
before jax is first imported, which is why it lives here.
"""

import os
import sys

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope='session', autouse=True)
def compilation_cache(tmp_path_factory):
  """Tests compile the same tiny steps many times: cache them on disk."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_compilation_cache_dir',
                    str(tmp_path_factory.mktemp('jax_cache')))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.2)
  yield


def shrink(config, batch_size=16, eval_batch_size=40):
  """Any config with tiny images and widths (experiments.run.TOY), 1x1 mesh."""
  from experiments import run  # pylint: disable=g-import-not-at-top
  run.shrink(config, steps=None)
  config.batch_size = batch_size
  config.eval_batch_size = eval_batch_size
  return config


def tiny_config(data_dir=None):
  """The digits config shrunk so a train step takes milliseconds."""
  from configs import digits  # pylint: disable=g-import-not-at-top
  config = shrink(digits.get_config())
  config.data_dir = data_dir
  config.log_every_steps = 2
  config.checkpoint_every_steps = 4
  return config


@pytest.fixture(scope='session')
def digits_dir(tmp_path_factory):
  """A tfds data dir with the digits dataset and its store prepared once per
  session."""
  from alexnet_jax.datasets import store  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  store.get(tiny_config(data_dir))
  return data_dir
