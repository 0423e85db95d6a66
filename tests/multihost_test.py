"""Several processes (hosts) through jax.distributed: two local CPU processes
with a localhost coordinator train exactly as one process does.

Both commands are README's ("From a laptop to a cluster"): the two-process one
as written, and the SLURM one with the variables `srun` would set.
"""

import os
import random
import socket
import subprocess
import sys

from alexnet_jax import train
from tests.conftest import ROOT
from tests.readme_test import command, config_from, with_digits
from tests.train_test import assert_same_run

STEPS = 6


def port_free(port):
  with socket.socket() as s:
    try:
      s.bind(('localhost', port))
    except OSError:
      return False
  return True


def run_processes(args, envs):
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'alexnet_jax.main'] + args[i], cwd=ROOT,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', **envs[i]),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  errs = []
  try:
    for p in procs:
      errs.append(p.communicate(timeout=400)[1])
  finally:
    for p in procs:
      p.kill()
  for p, err in zip(procs, errs):
    assert p.returncode == 0, err[-4000:]
  # Process 0 reports; process 1 stays quiet (warnings only).
  assert f'Done: {STEPS} steps' in errs[0], errs[0][-3000:]
  assert 'Process 0 of 2' in errs[0]
  assert f'step {STEPS}/{STEPS}' not in errs[1], errs[1][-3000:]


def check_like_one_process(args, tmp_path, data):
  config = config_from(args)
  config.mesh.data = data
  one = str(tmp_path / 'one')
  train.train_and_evaluate(config, one)
  assert_same_run(one, str(tmp_path / 'two'))


def test_two_processes_with_a_coordinator(digits_dir, tmp_path):
  # 2 processes x 2 devices, mesh 2 x 2: the towers within each process,
  # each process reading (decoding) its own half of every batch.
  env, args, _ = command('distributed.num_processes=2')
  port = next(p for p in iter(lambda: random.randint(20000, 60000), None)
              if port_free(p))
  args = [a.replace('localhost:12355', f'localhost:{port}') for a in args]
  args = with_digits(args, digits_dir, str(tmp_path / 'two'), STEPS)
  run_processes([args + [f'--config.distributed.process_id={i}']
                 for i in range(2)], [env, env])
  check_like_one_process(args, tmp_path, 2)


def test_slurm_srun_command(digits_dir, tmp_path):
  # 2 tasks x 1 device, mesh 1 x 2: one tower per host, so both hosts feed
  # the same rows. jax.distributed finds everything in SLURM's variables.
  _, args, launcher = command('srun')
  assert launcher == ['srun']
  args = with_digits(args, digits_dir, str(tmp_path / 'two'), STEPS)
  # jax picks the coordinator port from the job id.
  job = next(j for j in iter(lambda: random.randint(1, 10**6), None)
             if port_free(j % 4096 + 61440))
  envs = [{'SLURM_JOB_ID': str(job), 'SLURM_STEP_NODELIST': 'localhost',
           'SLURM_NTASKS': '2', 'SLURM_STEP_NUM_TASKS': '2',
           'SLURM_PROCID': str(i), 'SLURM_LOCALID': str(i),
           'SLURM_STEP_NUM_NODES': '1',
           'XLA_FLAGS': '--xla_force_host_platform_device_count=1'}
          for i in range(2)]
  run_processes([args, args], envs)
  check_like_one_process(args, tmp_path, 1)
