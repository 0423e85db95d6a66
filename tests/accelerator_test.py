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
from alexnet_jax import input_pipeline
from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import parallel
from alexnet_jax import train
from tests.conftest import tiny_config
from tests.parallel_test import STATS

pytestmark = pytest.mark.accelerator


def _losses(devices, dtype='float32', precision='highest', steps=3):
  config = tiny_config()
  config.model.dtype = dtype
  config.model.matmul_precision = precision
  config.augment.flip = True
  mesh = parallel.create_mesh(1, 1, devices[:1])
  model = model_lib.create_model(config.model)
  tx, _ = optim.create(config, steps_per_epoch=10)
  step_lib = train.Steps(config, model, tx, mesh)
  state = step_lib.init_state(jax.random.key(0))
  stats = jax.device_put(STATS(config.image_size), parallel.replicated(mesh))
  rng = np.random.RandomState(0)
  size = config.image_size
  losses = []
  for _ in range(steps):
    batch = {'image': rng.randint(0, 256, (config.batch_size, size, size, 3),
                                  dtype=np.uint8),
             'label': rng.randint(0, 10, (config.batch_size,)).astype(np.int32)}
    state, metrics = step_lib.train_step(
        state, input_pipeline.to_global(batch, mesh), stats, jax.random.key(1))
    losses.append(float(metrics['loss']))
  return np.array(losses)


def test_train_step_matches_cpu(accelerator_devices):
  # XLA's convolutions on the accelerator, the CPU kernels here: the same
  # training at full float32 precision.
  got = _losses(accelerator_devices)
  want = _losses(jax.devices('cpu'))
  np.testing.assert_allclose(got, want, rtol=1e-3)


def test_bfloat16_train_step_is_close(accelerator_devices):
  got = _losses(accelerator_devices, 'bfloat16', 'default')
  want = _losses(jax.devices('cpu'))
  assert np.isfinite(got).all()
  np.testing.assert_allclose(got, want, rtol=0.05)


def test_bench_reports_device_memory_and_peak(accelerator_devices):
  config = tiny_config()
  config.mesh.data = config.mesh.model = 1
  result, _ = bench.bench_train(config, steps=3, warmup=1,
                                devices=accelerator_devices[:1])
  assert result['train_img_per_sec'] > 0
  assert result['device_peak_memory_gb'] > 0
