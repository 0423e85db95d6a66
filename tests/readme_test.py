"""README's "From a laptop to a cluster" commands are the ones that run.

The laptop command runs as written (plus overrides that make it tiny); the GPU
commands are checked against simulated device counts (training on their mesh
shapes is tested in parallel_test); the two-process and SLURM commands run in
multihost_test.
"""

import os
import re
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
  _, schedule = optim.create(config, steps_per_epoch=1)
  assert schedule.base_lr == pytest.approx(0.01 * 8 ** 0.5)


def job_script():
  """README's SLURM job script that requeues a preempted run."""
  with open(os.path.join(ROOT, 'README.md')) as f:
    text = f.read()
  section = text.split('## From a laptop to a cluster')[1].split('\n## ')[0]
  scripts = re.findall(r'```sh\n(.*?)```', section, re.S)
  assert len(scripts) == 1
  return '\n'.join(line.strip() for line in scripts[0].splitlines())


@pytest.mark.parametrize('status, requeued', [(75, True), (0, False),
                                              (1, False), (2, False)])
def test_job_script_requeues_only_a_preempted_run(tmp_path, status,
                                                  requeued):
  # Stand-ins for srun (exits as a run would) and scontrol (records calls).
  from alexnet_jax import preemption  # pylint: disable=g-import-not-at-top
  assert preemption.EXIT_PREEMPTED == 75
  bin_dir, log = tmp_path / 'bin', tmp_path / 'calls'
  bin_dir.mkdir()
  for name, code in (('srun', status), ('scontrol', 0)):
    (bin_dir / name).write_text(
        f'#!/bin/sh\necho "{name} $*" >> {log}\nexit {code}\n')
    (bin_dir / name).chmod(0o755)
  (tmp_path / 'job.sh').write_text(job_script())
  proc = subprocess.run(
      ['bash', str(tmp_path / 'job.sh')], capture_output=True, text=True,
      env=dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}',
               SLURM_JOB_ID='4242'), check=False)
  assert proc.returncode == status, proc.stderr
  calls = log.read_text().splitlines()
  assert calls[0].startswith('srun python -m alexnet_jax.main ')
  _, args, _ = split_command(calls[0][len('srun '):])
  assert config_from(args).mesh.model == 2
  assert calls[1:] == (['scontrol requeue 4242'] if requeued else [])


def test_the_layout_table_names_every_module():
  # docs/design.md's Layout table (README links it): a newcomer finds each
  # piece from the file names, so every module of the package is listed.
  with open(os.path.join(ROOT, 'docs', 'design.md')) as f:
    table = f.read().split('## Layout', 1)[1].split('\n## ', 1)[0]
  package = os.path.join(ROOT, 'alexnet_jax')
  missing = []
  for folder in ('', 'datasets'):
    for name in sorted(os.listdir(os.path.join(package, folder))):
      if name.endswith('.py') and name != '__init__.py':
        path = '/'.join(p for p in ('alexnet_jax', folder, name) if p)
        if f'`{path}`' not in table:
          missing.append(path)
  assert not missing, f'not in docs/design.md\'s Layout table: {missing}'
