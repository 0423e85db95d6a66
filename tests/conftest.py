"""Shared test setup.

Eight simulated CPU devices, so mesh tests run in-process; this must be set
before jax is first imported, which is why it lives here.

On a machine with a GPU or TPU (and its jax plugin) the suite runs unchanged:
in this process the CPU is made jax's default platform, so `jax.devices()`
(and every mesh a test builds) is the simulated CPU devices, and the
accelerator is second, for the tests marked `accelerator`
(`accelerator_devices`). The commands the tests start as subprocesses get
JAX_PLATFORMS=cpu: a TPU can be held by one process only, and each process
on a GPU would take its own share of the memory.
"""

import importlib.util
import os
import sys
import tempfile

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# tfds' default data dir, and so the default store root: a fresh directory,
# never the user's ~/tensorflow_datasets.
os.environ['TFDS_DATA_DIR'] = tempfile.mkdtemp(prefix='alexnet_jax_tests_')


def _has_module(name: str) -> bool:
  try:
    return importlib.util.find_spec(name) is not None
  except ImportError:  # A missing parent package.
    return False


def platforms_for_tests(environ=os.environ) -> str:
  """JAX_PLATFORMS for the tests: 'cpu' first, then an installed accelerator.

  jax makes the first platform of the list its default. It skips 'cuda' by
  itself where no NVIDIA GPU is visible; 'tpu' is listed only where a TPU
  device file exists, since jax would fail without one.
  """
  if environ.get('JAX_PLATFORMS'):
    return environ['JAX_PLATFORMS']
  platforms = ['cpu']
  if any(_has_module(f'jax_plugins.xla_cuda{v}') or
         _has_module(f'jax_cuda{v}_plugin') for v in (12, 13)):
    platforms.append('cuda')
  if _has_module('libtpu') and (os.path.exists('/dev/accel0') or
                                os.path.exists('/dev/vfio/0')):
    platforms.append('tpu')
  return ','.join(platforms)


_PLATFORMS = platforms_for_tests()
os.environ['JAX_PLATFORMS'] = _PLATFORMS.split(',')[0]  # For subprocesses.
os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

jax.config.update('jax_platforms', _PLATFORMS)  # Before any backend starts.
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


@pytest.fixture
def accelerator_devices():
  """The GPU or TPU devices, for tests marked `accelerator`; else skips."""
  import jax  # pylint: disable=g-import-not-at-top
  for platform in ('cuda', 'tpu'):
    try:
      return jax.devices(platform)
    except RuntimeError:
      continue
  pytest.skip('no accelerator (GPU or TPU with its jax plugin) here')


@pytest.fixture(scope='session')
def digits_dir(tmp_path_factory):
  """A tfds data dir with the digits dataset and its store prepared once per
  session."""
  from alexnet_jax.datasets import store  # pylint: disable=g-import-not-at-top
  from tests.helpers import tiny_config  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  store.get(tiny_config(data_dir))
  return data_dir
