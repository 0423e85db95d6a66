"""README's "From a laptop to a cluster" commands are the ones that run.

The laptop command runs as written (plus overrides that make it tiny); the GPU
commands are checked against simulated device counts (training on their mesh
shapes is tested in parallel_test); the two-process and SLURM commands run in
multihost_test.
"""

import os
import subprocess
import sys

import pytest

from alexnet_jax import parallel
from alexnet_jax import train
from tests.helpers import ROOT
from tests.helpers import assert_one_line_error
from tests.helpers import cluster_commands
from tests.helpers import command
from tests.helpers import config_from
from tests.helpers import run_cli
from tests.helpers import split_command
from tests.helpers import with_digits


@pytest.mark.slow
def test_laptop_command_runs(digits_dir, tmp_path):
  env, args, launcher = command('runs/digits_split')
  assert not launcher
  workdir = str(tmp_path / 'w')
  proc = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.main'] +
      with_digits(args, digits_dir, workdir, 3),
      cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', **env),
      capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Mesh: {'data': 1, 'model': 2} on 2 cpu device(s)" in proc.stderr
  assert 'step 3/3' in proc.stderr and 'ETA' in proc.stderr
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '3'))

  # A failing rerun on the same workdir leaves the checkpoints alone.
  proc = run_cli(['--config', 'configs/digits.py', '--workdir', workdir,
                  f'--config.data_dir={digits_dir}', '--config.mesh.data=2',
                  '--config.batch_size=15'])
  assert_one_line_error(proc, 'batch_size=15', 'multiple of 2')
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '3'))


@pytest.mark.parametrize('gpus,ending,mesh', [
    (1, 'ilsvrc2012 --config.manual_dir=$HOME/ilsvrc', (1, 1)),
    (2, '$HOME/ilsvrc --config.mesh.model=2', (1, 2)),
    (8, '--config.mesh.data=4 --config.mesh.model=2', (4, 2)),
])
def test_gpu_commands_configure_their_mesh(gpus, ending, mesh):
  found = [c for c in cluster_commands() if c.endswith(ending)]
  assert len(found) == 1, found
  _, args, _ = split_command(found[0])
  config = config_from(args)
  train.validate_config(config)
  assert config.dataset == 'imagenet2012' and config.batch_size == 128
  shape = parallel.mesh_shape(config.mesh.data, config.mesh.model, gpus)
  assert shape == mesh
  assert config.batch_size % shape[0] == 0


def test_slurm_command_scales_the_learning_rate():
  _, args, launcher = command('srun')
  assert launcher == ['srun']
  config = config_from(args)
  train.validate_config(config)
  assert config.batch_size == 1024 and config.lr_scaling == 'sqrt'
  from alexnet_jax import optim  # pylint: disable=g-import-not-at-top
  assert optim.scaled_learning_rate(config) == pytest.approx(0.01 * 8 ** 0.5)
