"""The benchmark at toy size: its JSON fields, and the PyTorch twin model."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from alexnet_jax import bench
from alexnet_jax import model as model_lib
from alexnet_jax import peaks
from alexnet_jax import torch_twin
from alexnet_jax.configs import default
from tests.helpers import ROOT

try:
  import torch  # pylint: disable=unused-import,g-import-not-at-top
  HAVE_TORCH = True
except ImportError:
  HAVE_TORCH = False

FIELDS = {'train_img_per_sec', 'eval_img_per_sec', 'eval10_img_per_sec',
          'compile_seconds', 'train_step_ms',
          'peak_rss_mb', 'num_params', 'gflops_per_sec', 'matmul_peak_gflops',
          'batch', 'mesh', 'devices'}


def test_counted_flops_match_the_paper():
  assert model_lib.forward_macs(model_lib.AlexNet()) == pytest.approx(
      724e6, rel=1e-3)  # Figure 2's layer sizes at 224 x 224.


def test_four_layer_cnn_flops_by_hand():
  from alexnet_jax import four_layer_cnn  # pylint: disable=g-import-not-at-top
  model = four_layer_cnn.FourLayerCNN()
  by_hand = [32 * 32 * 25 * 3 * 32, 16 * 16 * 25 * 32 * 32,
             8 * 8 * 25 * 32 * 64, 4 * 4 * 64 * 10]
  assert four_layer_cnn.layer_macs(model) == by_hand
  assert model_lib.forward_macs(model) == sum(by_hand) == 12_298_240
  assert model_lib.train_macs(model) == 3 * sum(by_hand) - by_hand[0]


def _arch_config(arch):
  """Each registered architecture's own config, at toy size."""
  from alexnet_jax.configs import figure1_cifar10  # pylint: disable=g-import-not-at-top
  from tests.helpers import shrink  # pylint: disable=g-import-not-at-top
  if arch == 'four_layer_cnn':
    config = figure1_cifar10.get_config()
    config.mesh.data = config.mesh.model = 1
    config.batch_size = config.eval_batch_size = 16
    return config
  return shrink(default.get_config())


def test_every_registered_architecture_has_a_bench_config():
  assert set(model_lib.ARCHS) == {'alexnet', 'four_layer_cnn'}, (
      'a new architecture: give it a config in _arch_config and the twin')


@pytest.mark.parametrize('arch', sorted(model_lib.ARCHS))
def test_the_benchmark_times_every_architecture(arch):
  config = _arch_config(arch)
  assert config.model.arch == arch
  result = bench.run(config, steps=1, warmup=1, vs_torch=HAVE_TORCH,
                     torch_compile=False)
  assert FIELDS <= set(result) and result['arch'] == arch
  assert result['train_img_per_sec'] > 0 and result['gflops_per_sec'] > 0
  if HAVE_TORCH:
    assert result['torch_train_img_per_sec'] > 0
    assert result['train_speedup_vs_torch'] > 0


def test_torch_twin_of_the_four_layer_cnn_matches_ours():
  torch = pytest.importorskip('torch')
  config = _arch_config('four_layer_cnn')
  model = model_lib.create_model(config.model)
  net = torch_twin.build(model)
  import jax  # pylint: disable=g-import-not-at-top
  params = model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
  assert sum(p.numel() for p in net.parameters()) == model_lib.count_params(
      params)
  assert tuple(net(torch.zeros(2, 3, 32, 32)).shape) == (2, 10)


def test_torch_twin_has_the_same_parameter_count():
  torch = pytest.importorskip('torch')
  model = model_lib.create_model(default.get_config().model)
  net = torch_twin.alexnet(model)
  assert sum(p.numel() for p in net.parameters()) == 60_965_224
  out = net(torch.zeros(2, 3, 224, 224))
  assert tuple(out.shape) == (2, 1000)


def test_torch_lrn_matches_ours():
  torch = pytest.importorskip('torch')
  from alexnet_jax import ops  # pylint: disable=g-import-not-at-top
  model = model_lib.AlexNet()
  lrn = torch_twin.alexnet(model)[2]  # conv1's TowerLRN.
  x = np.random.RandomState(0).normal(0, 30, (2, 96, 5, 5)).astype(np.float32)
  got = lrn(torch.from_numpy(x)).numpy()
  towers = x.transpose(0, 2, 3, 1).reshape(2, 5, 5, 2, 48).transpose(3, 0, 1, 2, 4)
  want = ops.local_response_norm(towers)  # Paper constants, per tower.
  want = np.asarray(want).transpose(1, 2, 3, 0, 4).reshape(2, 5, 5, 96)
  np.testing.assert_allclose(got, want.transpose(0, 3, 1, 2), rtol=1e-4,
                             atol=1e-4)


@pytest.mark.slow
def test_bench_command_prints_json():
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', XLA_FLAGS='')
  proc = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.bench', '--config',
       'configs/digits.py:toy', '--config.batch_size=8', '--steps=1'] + (
           ['--vs-torch'] if HAVE_TORCH else []),
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
      check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout)
  assert FIELDS <= set(result), FIELDS - set(result)
  for k in FIELDS - {'mesh', 'devices'}:
    assert result[k] > 0, k
  assert result['batch'] == 8 and result['mesh'] == {'data': 1, 'model': 1}
  # CPU: no device memory count, no published peak (the matmul is measured).
  assert result['device_peak_memory_gb'] is None
  assert result['step_memory_gb'] > 0
  assert 'fraction_of_peak' not in result
  assert ('train_speedup_vs_torch' in result) == HAVE_TORCH
  if HAVE_TORCH:
    # Eager and torch.compile (inductor: CI has a C++ compiler), each timed
    # in alternation with the JAX step; compile times apart.
    assert 'torch_compile_error' not in result, result['torch_compile_error']
    for name in ('torch', 'torch_compile'):
      pairs = result[f'train_speedup_vs_{name}_pairs']
      assert len(pairs) == 1, name
      assert result[f'train_speedup_vs_{name}'] == pairs[0] > 0, name
      assert result[f'{name}_train_img_per_sec'] > 0, name
      assert result[f'{name}_alternating_step_s'] > 0, name
    assert result['jax_alternating_step_s'] > 0
    assert result['torch_compile_seconds'] >= 0
    assert 'backward' in result['torch_compiled']


def test_peak_table():
  assert peaks.peak_tflops('NVIDIA H100 80GB HBM3', 'bfloat16') == 989.4
  assert peaks.peak_tflops('NVIDIA H100 PCIe', 'bfloat16') == 756.0
  # float32 runs as TF32 by default on Ampere; 'highest' is true float32.
  assert peaks.peak_tflops('NVIDIA A100-SXM4-40GB', 'float32') == 156.0
  assert peaks.peak_tflops('NVIDIA A100-SXM4-40GB', 'float32',
                           'highest') == 19.5
  assert peaks.peak_tflops('TPU v5 lite', 'bfloat16') == 197.0
  assert peaks.peak_tflops('Tesla T4', 'float16') == 65.0
  assert peaks.peak_tflops('Tesla V100-SXM2-16GB', 'float16') == 125.0
  assert peaks.peak_tflops('TPU v4', 'float16') is None
  assert peaks.peak_tflops('cpu', 'float32') is None
  assert bench.device_file_name('NVIDIA H100 80GB HBM3') == (
      'nvidia_h100_80gb_hbm3')


@pytest.mark.slow
def test_sweep_writes_a_dtype_batch_mesh_table(tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2',
             XLA_FLAGS='--xla_force_host_platform_device_count=2')
  out = tmp_path / 'cpu.json'
  proc = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.bench', '--sweep', '--config',
       'configs/digits.py:toy', '--batch_sizes=8', '--steps=2',
       f'--out={out}'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
      check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  table = json.loads(out.read_text())
  assert table['platform'] == 'cpu' and table['local_devices'] == 2
  got = {(r['mesh'], r['dtype'], r['batch']) for r in table['rows']}
  assert got == {(m, d, 8) for m in ('2x1', '1x2')
                 for d in ('float32', 'bfloat16')}
  for row in table['rows']:
    assert 'error' not in row, row
    assert row['train_img_per_sec'] > 0 and row['train_step_ms'] > 0
    assert row['step_memory_gb'] > 0
  assert len(proc.stderr.strip().splitlines()) >= 4  # A line per row.


def test_bench_refuses_an_unknown_dtype_with_one_line():
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', XLA_FLAGS='')
  proc = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.bench', '--config',
       'configs/digits.py', '--dtype=float8'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
      check=False)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert "'float16')" in proc.stderr.strip().splitlines()[-1]


PIPELINE_FIELDS = {'pipeline_img_per_sec', 'pipeline_cores',
                   'pipeline_bytes_per_image', 'pipeline_jpeg_img_per_sec',
                   'pipeline_img_per_sec_per_core', 'prepare_img_per_sec'}


@pytest.mark.slow
def test_pipeline_bench_on_an_image_folder(tmp_path):
  # The documented command on a folder of real photos (a few of them).
  import glob  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  photos = sorted(glob.glob(os.path.join(ROOT, '..', 'shared', 'photos',
                                         '*.JPEG')))[:12]
  if len(photos) < 12:
    pytest.skip('no ../shared/photos here')
  for split in ('train', 'val'):
    for i, p in enumerate(photos):
      d = tmp_path / split / f'c{i % 2}'
      d.mkdir(parents=True, exist_ok=True)
      shutil.copy(p, d / os.path.basename(p))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', XLA_FLAGS='')
  proc = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.bench', '--pipeline', '--config',
       'configs/image_folder.py', f'--config.data_dir={tmp_path}',
       '--config.model.num_classes=2', '--config.image_size=64',
       '--config.batch_size=4', '--batches=5'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
      check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout[proc.stdout.index('{'):])
  assert PIPELINE_FIELDS <= set(result), PIPELINE_FIELDS - set(result)
  for k in PIPELINE_FIELDS:
    assert result[k] > 0, k
  assert result['pipeline_bytes_per_image'] == 64 * 64 * 3
  assert result['pipeline_store_format'] == 'raw'
  # Without the folder: one line naming the fix, no traceback.
  proc = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.bench', '--pipeline', '--config',
       'configs/image_folder.py', f'--config.data_dir={tmp_path}/nothing'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
      check=False)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert 'train/<class>' in proc.stderr.splitlines()[-1]
