"""Tests that run on a GPU or TPU where one is present (marker `accelerator`).

Everywhere else they skip: the rest of the suite proves on CPU what can be
proved there (tests/lowering_test.py lowers the train step for 'cuda' and
'tpu'). conftest.py keeps the CPU jax's default platform, so these tests
name their devices (`accelerator_devices`).
"""

import jax
import numpy as np
import pytest

from alexnet_jax import bench
from alexnet_jax import synthetic
from tests.helpers import run_steps
from tests.helpers import tiny_config

pytestmark = pytest.mark.accelerator


def _losses(devices, dtype='float32', precision='highest'):
  config = tiny_config()
  config.model.dtype = dtype
  config.model.matmul_precision = precision
  return np.array(run_steps((1, 1), config, devices=devices[:1])[0])


def test_train_step_matches_cpu(accelerator_devices):
  # XLA's convolutions on the accelerator, the CPU kernels here: the same
  # training at full float32 precision.
  got = _losses(accelerator_devices)
  want = _losses(jax.devices('cpu'))
  np.testing.assert_allclose(got, want, rtol=1e-3)


@pytest.mark.parametrize('dtype', ['bfloat16', 'float16'])
def test_half_precision_train_step_is_close(accelerator_devices, dtype):
  # float16 with its loss scale (2**15 at first): no step overflows here.
  got = _losses(accelerator_devices, dtype, 'default')
  want = _losses(jax.devices('cpu'))
  assert np.isfinite(got).all()
  np.testing.assert_allclose(got, want, rtol=0.05)


def test_bench_reports_device_memory_and_peak(accelerator_devices):
  config = tiny_config()
  config.mesh.data = config.mesh.model = 1
  result, _ = bench.bench_train(
      synthetic.setup(config, accelerator_devices[:1]), steps=3, warmup=1)
  assert result['train_img_per_sec'] > 0
  assert result['device_peak_memory_gb'] > 0
