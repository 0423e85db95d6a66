"""Several processes (hosts) through jax.distributed: two local CPU processes
with a localhost coordinator train exactly as one process does.

Both commands are README's ("From a laptop to a cluster"): the two-process one
as written, and the SLURM one with the variables `srun` would set.
"""

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from alexnet_jax import train
from tests.helpers import ROOT
from tests.helpers import assert_same_run
from tests.helpers import command
from tests.helpers import config_from
from tests.helpers import final_params
from tests.helpers import read_metrics
from tests.helpers import tiny_config
from tests.helpers import with_digits

STEPS = 6


def port_free(port):
  with socket.socket() as s:
    try:
      s.bind(('localhost', port))
    except OSError:
      return False
  return True


def start_processes(args, env):
  """Both processes of a README coordinator command."""
  return [subprocess.Popen(
      [sys.executable, '-m', 'alexnet_jax.main'] + args +
      [f'--config.distributed.process_id={i}'], cwd=ROOT,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', **env),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for i in range(2)]


def outputs(procs, timeout):
  """Each process's (stdout, stderr) once it ends; all are killed if one
  overruns `timeout` or the test fails."""
  try:
    return [p.communicate(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      p.kill()


def assert_same_one_line(procs, errs, needle):
  """Every process exited 2 with the same one-line error containing
  `needle`."""
  lines = []
  for p, err in zip(procs, errs):
    assert p.returncode == 2, err[-3000:]
    found = [l for l in err.splitlines() if l.startswith('alexnet_jax: error:')]
    assert len(found) == 1 and needle in found[0], err[-3000:]
    lines.append(found[0])
  assert lines[0] == lines[1]


def run_processes(args, envs):
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'alexnet_jax.main'] + args[i], cwd=ROOT,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', **envs[i]),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  errs = [err for _, err in outputs(procs, 400)]
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


def coordinator_command(digits_dir, workdir, steps):
  """README's two-process command, on a free port, made tiny."""
  env, args, _ = command('distributed.num_processes=2')
  port = next(p for p in iter(lambda: random.randint(20000, 60000), None)
              if port_free(p))
  args = [a.replace('localhost:12355', f'localhost:{port}') for a in args]
  return env, with_digits(args, digits_dir, workdir, steps)


@pytest.mark.slow
def test_two_processes_with_a_coordinator(digits_dir, tmp_path):
  # 2 processes x 1 device, mesh 2 x 1: each process reads (decodes) its own
  # half of every batch.
  env, args = coordinator_command(digits_dir, str(tmp_path / 'two'), STEPS)
  run_processes([args + [f'--config.distributed.process_id={i}']
                 for i in range(2)], [env, env])
  check_like_one_process(args, tmp_path, 2)


@pytest.mark.slow
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


READER = r'''
import json, os, sys
from alexnet_jax import input_pipeline, parallel
from alexnet_jax.datasets import store
from tests.helpers import tiny_config
# conftest asks for 8 devices; this process has 2 (before jax starts).
os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=2'
config = tiny_config(sys.argv[1])
config.distributed.coordinator_address = sys.argv[2]
config.distributed.num_processes = 2
config.distributed.process_id = int(sys.argv[3])
config.input.workers, config.input.prefetch = 1, 1
parallel.initialize_distributed(config.distributed)
mesh = parallel.create_mesh(2, 2)
train_split = store.get(config).split('train')
rows = input_pipeline.default_rows(config.batch_size, mesh)
reading = input_pipeline.Reading.from_config(config)
stream = input_pipeline.train_stream(train_split, reading, 2, 5, rows)
labels = [next(stream)['label'].tolist() for _ in range(10)]
val = store.get(config).split('validation')
eval_labels = [b['label'].tolist() for b in input_pipeline.eval_batches(
    val, reading, input_pipeline.default_rows(config.eval_batch_size, mesh))]
print(json.dumps({'rows': rows, 'labels': labels, 'eval': eval_labels,
                  'train_read': train_split.records_read,
                  'eval_read': val.records_read}))
'''


@pytest.mark.slow
def test_two_processes_each_read_only_their_rows(digits_dir):
  # Two jax.distributed processes, 2 devices each, mesh 2 x 2: each reads its
  # half of every global batch and nothing else, and together they read the
  # batches one process reads.
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from alexnet_jax.datasets import store  # pylint: disable=g-import-not-at-top
  port = next(p for p in iter(lambda: random.randint(20000, 60000), None)
              if port_free(p))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2',
             XLA_FLAGS='--xla_force_host_platform_device_count=2')
  procs = [subprocess.Popen(
      [sys.executable, '-c', READER, digits_dir, f'localhost:{port}', str(i)],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  outs = outputs(procs, 300)
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  hosts = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
  assert [h['rows'] for h in hosts] == [[0, 8], [8, 16]]
  config = tiny_config(digits_dir)
  one = store.get(config)
  reading = input_pipeline.Reading.from_config(config)
  stream = input_pipeline.train_stream(one.split('train'), reading, 2, 5)
  for b in range(10):
    assert next(stream)['label'].tolist() == (hosts[0]['labels'][b] +
                                              hosts[1]['labels'][b])
  whole = [b['label'].tolist() for b in input_pipeline.eval_batches(
      one.split('validation'), reading)]
  assert whole == [a + b for a, b in zip(hosts[0]['eval'], hosts[1]['eval'])]
  for h in hosts:
    # 10 batches of 8 rows, plus at most two read ahead; 359 = 8 x 40 + 39
    # validation images, split 180 / 179 by rows.
    assert 80 <= h['train_read'] <= 96, h['train_read']
  assert [h['eval_read'] for h in hosts] == [180, 179]


@pytest.mark.slow
def test_process_zero_failing_stops_every_process_with_its_line(digits_dir,
                                                                tmp_path):
  # A damaged store: process 0 finds it while the other waits for it; both
  # stop at once with process 0's one line, not a coordinator timeout.
  from alexnet_jax.datasets import store  # pylint: disable=g-import-not-at-top
  env, args = coordinator_command(digits_dir, str(tmp_path / 'two'), STEPS)
  args += [f'--config.store.dir={tmp_path / "stores"}']
  split = os.path.join(
      store.Spec.from_config(config_from(args)).directory, 'train')
  store.get(config_from(args))
  data = os.path.join(split, 'data-00000.array_record')
  with open(data, 'r+b') as f:
    f.truncate(os.path.getsize(data) - 1000)
  start = time.time()
  procs = start_processes(args, env)
  errs = [err for _, err in outputs(procs, 240)]
  assert time.time() - start < 120  # Startup included; no 300 s timeout.
  assert_same_one_line(procs, errs, 'truncated')


PREEMPT_STEPS = 200


def records(workdir):
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    return sum(1 for _ in f)


def wait_until(condition, procs, timeout=180):
  deadline = time.time() + timeout
  while not condition():
    assert time.time() < deadline and all(p.poll() is None for p in procs)
    time.sleep(0.02)


@pytest.fixture(scope='module')
def uninterrupted(digits_dir, tmp_path_factory):
  """The same two processes trained straight through: what a preempted and
  resumed run must equal (one process would sum in another order)."""
  workdir = str(tmp_path_factory.mktemp('straight'))
  env, args = coordinator_command(digits_dir, workdir, PREEMPT_STEPS)
  procs = start_processes(args + ['--config.checkpoint_every_steps=100'], env)
  errs = [err for _, err in outputs(procs, 300)]
  for p, err in zip(procs, errs):
    assert p.returncode == 0, err[-3000:]
  return workdir


def preempt(args, env, workdir, signalled):
  """Starts both processes; once both are stepping, sends each (process,
  signal) of `signalled` a step apart; returns the step each says it saved."""
  from alexnet_jax import preemption  # pylint: disable=g-import-not-at-top
  procs = start_processes(args, env)
  try:
    start = records(workdir)
    wait_until(lambda: records(workdir) >= start + 10, procs)  # Stepping.
    for i, signum in signalled:
      n = records(workdir)
      procs[i].send_signal(signum)
      wait_until(lambda: records(workdir) > n, procs)  # A step later.
    errs = [p.communicate(timeout=120)[1] for p in procs]
  finally:
    for p in procs:
      p.kill()
  saved = []
  for p, err in zip(procs, errs):
    assert p.returncode == preemption.EXIT_PREEMPTED, err[-3000:]
    found = re.findall(r'saved checkpoint (\d+) in', err)
    assert len(found) == 1, err[-3000:]
    saved.append(int(found[0]))
  return saved


@pytest.mark.slow
def test_preemption_stops_every_process_at_one_step(digits_dir, tmp_path,
                                                    uninterrupted):
  # SIGTERM to one process; then, resumed, SIGINT (Ctrl-C) to one and
  # SIGTERM to the other a step later. Each time both save the same step and
  # exit 75; the last rerun ends exactly where the uninterrupted run does.
  from alexnet_jax import checkpoint  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'two')
  env, args = coordinator_command(digits_dir, workdir, PREEMPT_STEPS)
  args += ['--config.checkpoint_every_steps=100']
  first = preempt(args, env, workdir, [(1, signal.SIGTERM)])
  assert first[0] == first[1] < PREEMPT_STEPS
  second = preempt(args, env, workdir,
                   [(0, signal.SIGINT), (1, signal.SIGTERM)])
  assert first[0] < second[0] == second[1] < PREEMPT_STEPS
  ckpt = checkpoint.Checkpointer(workdir)
  assert ckpt.latest_step() == second[0]
  ckpt.close()
  procs = start_processes(args, env)
  errs = [err for _, err in outputs(procs, 300)]
  for p, err in zip(procs, errs):
    assert p.returncode == 0, err[-3000:]
  assert f'Resuming from step {second[0]}' in errs[0]
  # Exactly where the uninterrupted run ends (the log windows differ only
  # around each stop, which closed one early).
  jax.tree.map(np.testing.assert_array_equal,
               final_params(uninterrupted), final_params(workdir))
  ends = [[r for r in read_metrics(w) if r['split'] == 'eval'][-1]
          for w in (uninterrupted, workdir)]
  assert ends[0]['step'] == ends[1]['step'] == PREEMPT_STEPS
  assert ends[0]['loss'] == ends[1]['loss']


@pytest.mark.slow
def test_a_held_workdir_stops_every_process_of_a_job(digits_dir, tmp_path):
  # Process 0 takes the lock for the job; refused, both processes stop with
  # its one line.
  from alexnet_jax import writer_lock  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'two')
  env, args = coordinator_command(digits_dir, workdir, STEPS)
  with writer_lock.hold(workdir):
    procs = start_processes(args, env)
    errs = [err for _, err in outputs(procs, 240)]
  assert_same_one_line(procs, errs, 'in use by another run')
  assert not os.path.exists(os.path.join(workdir, 'checkpoints'))
