"""Several processes (hosts) through jax.distributed: two local CPU processes
with a localhost coordinator train exactly as one process does."""

import os
import socket
import subprocess
import sys

import pytest

from alexnet_jax import train
from tests.conftest import ROOT
from tests.conftest import tiny_config
from tests.train_test import assert_same_run

STEPS = 6


def free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def launch(args, process_id, devices):
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['TF_CPP_MIN_LOG_LEVEL'] = '2'
  return subprocess.Popen(
      [sys.executable, '-m', 'alexnet_jax.main'] + args +
      [f'--config.distributed.process_id={process_id}'], cwd=ROOT, env=env,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# (devices per process, mesh data, mesh model): the towers within a process
# (data parallel across hosts), or each tower on its own host.
@pytest.mark.parametrize('devices,data,model', [(2, 2, 2), (1, 1, 2)])
def test_two_processes_train_like_one(digits_dir, tmp_path, devices, data,
                                      model):
  workdir = str(tmp_path / 'two')
  args = ['--config', 'configs/digits.py', '--workdir', workdir,
          f'--config.data_dir={digits_dir}', '--config.image_size=72',
          '--config.model.input_size=64', '--config.model.width=0.0625',
          '--config.model.fc_features=256', '--config.batch_size=16',
          '--config.eval_batch_size=40', '--config.log_every_steps=2',
          '--config.checkpoint_every_steps=4',
          f'--config.num_train_steps={STEPS}', f'--config.mesh.data={data}',
          f'--config.mesh.model={model}',
          f'--config.distributed.coordinator_address=localhost:{free_port()}',
          '--config.distributed.num_processes=2']
  procs = [launch(args, i, devices) for i in range(2)]
  outs = []
  for p in procs:
    try:
      outs.append(p.communicate(timeout=400))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
  # Process 0 reports; process 1 stays quiet (warnings only).
  assert 'Done: 6 steps' in outs[0][1], outs[0][1][-3000:]
  assert 'Process 0 of 2' in outs[0][1]
  assert 'step 6/6' not in outs[1][1], outs[1][1][-3000:]

  config = tiny_config(digits_dir)
  config.num_train_steps = STEPS
  config.mesh.data, config.mesh.model = data, model
  one = str(tmp_path / 'one')
  train.train_and_evaluate(config, one)
  assert_same_run(one, workdir)
