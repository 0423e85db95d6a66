"""Never lose a run: crashes, preemption, damaged checkpoints, divergence,
config drift and disk trouble."""

import json
import os
import random
import shutil
import socket
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import checkpoint
from alexnet_jax import errors
from alexnet_jax import preemption
from alexnet_jax import train
from alexnet_jax import workdir as workdir_lib
from alexnet_jax import writer_lock
from tests.helpers import ROOT
from tests.helpers import assert_same_run
from tests.helpers import read_metrics
from tests.helpers import tiny_config

TINY = ['--config.mesh.data=1', '--config.log_every_steps=1',
        '--config.checkpoint_every_steps=2', '--config.eval_every_epochs=100']


def short_config(digits_dir, steps=6):
  config = tiny_config(digits_dir)
  config.num_train_steps = steps
  config.checkpoint_every_steps = 2
  config.eval_every_epochs = 100.0
  return config


@pytest.mark.slow
def test_damaged_latest_checkpoint_falls_back(digits_dir, tmp_path):
  workdir = str(tmp_path)
  train.train_and_evaluate(short_config(digits_dir), workdir)
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  assert sorted(os.listdir(ckpt_dir)) == ['2', '4', '6']
  # Truncate every data file of the newest checkpoint.
  for root, _, files in os.walk(os.path.join(ckpt_dir, '6', 'state')):
    for f in files:
      with open(os.path.join(root, f), 'r+b') as fh:
        fh.truncate(3)
  train.train_and_evaluate(short_config(digits_dir, steps=8), workdir)
  damaged = os.listdir(os.path.join(workdir, 'checkpoints_damaged'))
  assert len(damaged) == 1 and damaged[0].startswith('6-')  # Kept, not deleted.
  ckpt = checkpoint.Checkpointer(workdir)
  assert ckpt.latest_step() == 8
  ckpt.close()
  steps = [r['step'] for r in read_metrics(workdir) if r['split'] == 'train']
  assert steps == [2, 4, 6, 8]  # Resumed from 4: step 6's record redone once.
  with open(os.path.join(workdir, 'metrics.jsonl.rolled_back')) as f:
    assert {json.loads(l)['step'] for l in f} == {6}  # Train and eval.


def test_no_readable_checkpoint_stops_and_changes_nothing(digits_dir,
                                                          tmp_path):
  workdir = str(tmp_path)
  train.train_and_evaluate(short_config(digits_dir, steps=4), workdir)
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  for step in ('2', '4'):
    shutil.rmtree(os.path.join(ckpt_dir, step, 'state'))
  before = sorted(os.listdir(ckpt_dir))
  with pytest.raises(checkpoint.CheckpointError, match='none of the'):
    train.train_and_evaluate(short_config(digits_dir, steps=6), workdir)
  assert sorted(os.listdir(ckpt_dir)) == before
  assert not os.path.exists(os.path.join(workdir, 'checkpoints_damaged'))


@pytest.mark.slow
def test_divergence_stops_without_saving(digits_dir, tmp_path):
  config = short_config(digits_dir, steps=8)
  config.learning_rate = 1e12
  with pytest.raises(errors.UserError, match='diverged') as e:
    train.train_and_evaluate(config, str(tmp_path))
  assert 'not saved' in str(e.value)
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  for step in ckpt.all_steps():  # Whatever was saved is finite.
    assert np.isfinite(
        [r['loss'] for r in read_metrics(str(tmp_path))
         if r['step'] == step and r['split'] == 'train']).all()
  ckpt.close()


@pytest.mark.slow
def test_config_drift(digits_dir, tmp_path):
  workdir = str(tmp_path)
  train.train_and_evaluate(short_config(digits_dir, steps=2), workdir)
  config = short_config(digits_dir, steps=4)
  config.model.width = 0.125
  config.batch_size = 32
  with pytest.raises(errors.ConfigError) as e:
    train.train_and_evaluate(config, workdir)
  message = str(e.value)
  assert 'model.width: 0.0625 -> 0.125' in message
  assert 'batch_size: 16 -> 32' in message and '\n' not in message
  config = short_config(digits_dir, steps=4)
  config.lr_override = 0.003
  config.log_every_steps = 1
  train.train_and_evaluate(config, workdir)
  assert read_metrics(workdir)[-1]['lr'] == pytest.approx(0.003)


@pytest.mark.slow
def test_disk_trouble_is_a_clear_error(digits_dir, tmp_path, monkeypatch):
  workdir = str(tmp_path)
  train.train_and_evaluate(short_config(digits_dir, steps=2), workdir)

  def full_disk(*args, **kwargs):
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(checkpoint.ocp.CheckpointManager, 'save', full_disk)
  with pytest.raises(checkpoint.CheckpointError,
                     match='free disk space.*earlier checkpoints are intact'):
    train.train_and_evaluate(short_config(digits_dir, steps=4), workdir)
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['2']


def cli(workdir, digits_dir, steps, cache_dir):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', XLA_FLAGS='',
             JAX_COMPILATION_CACHE_DIR=cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0.2')
  return subprocess.Popen(
      [sys.executable, '-m', 'alexnet_jax.main', '--config',
       'configs/digits.py:toy', '--workdir', workdir,
       f'--config.data_dir={digits_dir}',
       f'--config.num_train_steps={steps}'] + TINY,
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)


def wait_for_records(workdir, n, proc, timeout=120):
  path = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(path):
      with open(path) as f:
        if sum(1 for _ in f) >= n:
          return True
    time.sleep(0.01)
  return False


@pytest.mark.slow
def test_sigterm_saves_and_resumes(digits_dir, tmp_path):
  workdir, cache = str(tmp_path / 'w'), str(tmp_path / 'cache')
  proc = cli(workdir, digits_dir, 400, cache)
  assert wait_for_records(workdir, 3, proc), proc.communicate()[1][-3000:]
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == preemption.EXIT_PREEMPTED, err[-3000:]
  assert 'SIGTERM: saved checkpoint' in err
  saved = checkpoint.Checkpointer(workdir)
  step = saved.latest_step()
  saved.close()
  assert 3 <= step < 400
  proc = cli(workdir, digits_dir, step + 2, cache)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  assert f'Resuming from step {step}' in err


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume(digits_dir, tmp_path):
  steps, cache = 16, str(tmp_path / 'cache')
  straight = str(tmp_path / 'straight')
  proc = cli(straight, digits_dir, steps, cache)
  assert proc.wait(timeout=300) == 0, proc.communicate()[1][-3000:]
  rng = random.Random(0)
  for trial in range(2):
    workdir = str(tmp_path / f'killed{trial}')
    # Kill at a random record count, then a random delay (often mid-save).
    proc = cli(workdir, digits_dir, steps, cache)
    wait_for_records(workdir, rng.randint(2, steps - 4), proc)
    time.sleep(rng.uniform(0, 0.3))
    proc.kill()
    assert proc.wait() == -signal.SIGKILL  # Killed before it finished.
    proc = cli(workdir, digits_dir, steps, cache)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert_same_run(straight, workdir)


class _FakeCheckpoints:
  directory = '/runs/x/checkpoints'

  def __init__(self, saved):
    self.saved = saved

  def all_steps(self):
    return [10]

  def read_meta(self, step):
    del step
    return {'config': self.saved}


def test_keys_newer_than_a_checkpoint_are_fine_at_their_default():
  config = tiny_config()
  saved = json.loads(json.dumps(config.to_dict()))
  del saved['lr_scaling']  # Written before these keys existed.
  del saved['finetune']  # (Its defaults are tuples: [] in JSON.)
  workdir_lib.check_config_drift(_FakeCheckpoints(saved), config.to_dict())
  config.lr_scaling = 'linear'  # Not the old behaviour: refused.
  with pytest.raises(errors.ConfigError, match='lr_scaling: None'):
    workdir_lib.check_config_drift(_FakeCheckpoints(saved), config.to_dict())


def test_a_key_newer_than_a_checkpoint_means_what_the_old_code_did():
  # Checkpoints from before PCA lighting trained without it: today's default
  # (0.1) would change their training, so resuming needs 0.0.
  config = tiny_config()
  saved = json.loads(json.dumps(config.to_dict()))
  del saved['augment']['pca_lighting']
  config.augment.pca_lighting = 0.1
  with pytest.raises(errors.ConfigError, match='augment.pca_lighting'):
    workdir_lib.check_config_drift(_FakeCheckpoints(saved), config.to_dict())
  config.augment.pca_lighting = 0.0
  workdir_lib.check_config_drift(_FakeCheckpoints(saved), config.to_dict())
  # Readers of old checkpoints see the same values.
  old = workdir_lib.saved_config({'config': saved}, 'test')
  assert old.augment.pca_lighting == 0.0
  del saved['store'], saved['input']  # From before the prepared store.
  old = workdir_lib.saved_config({'config': saved}, 'test')
  assert (old.store.format, old.input.workers) == ('raw', 0)


@pytest.mark.slow
def test_a_torn_metrics_line_is_repaired_on_resume(digits_dir, tmp_path):
  # A kill -9 or a full disk during a write leaves half a line: the rerun
  # keeps it aside with a warning, and every reader sees only whole lines.
  from alexnet_jax import viz  # pylint: disable=g-import-not-at-top
  config = short_config(digits_dir, steps=4)
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  path = os.path.join(workdir, 'metrics.jsonl')
  with open(path) as f:
    whole = f.read()
  with open(path, 'w') as f:
    f.write(whole[:-40])
  fragment = whole[:-40].splitlines()[-1]
  assert len(viz.read_metrics(path)) == len(whole.splitlines()) - 1
  config.num_train_steps = 6
  train.train_and_evaluate(config, workdir)
  with open(path + '.torn') as f:
    assert f.read() == fragment + '\n'
  records = read_metrics(workdir)  # Every line parses.
  assert [r['step'] for r in records if r['split'] == 'train'] == [2, 4, 6]
  assert [r['step'] for r in records if r['split'] == 'eval'] == [6]


@pytest.mark.slow
def test_infinite_gradients_with_a_finite_loss_are_never_saved(
    digits_dir, tmp_path, monkeypatch):
  # Steps 1-4 train normally (checkpoints 2 and 4). Resumed with a loss whose
  # gradient is infinite (its value, computed before the update, stays
  # finite), the run stops at its next checkpoint without saving it and
  # names step 4; every logged record has a finite gradient norm.
  import optax  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path)
  config = short_config(digits_dir, steps=4)
  config.checkpoint_every_steps = 2
  train.train_and_evaluate(config, workdir)
  real = optax.softmax_cross_entropy_with_integer_labels

  @jax.custom_vjp
  def poisoned(logits, labels):
    return real(logits, labels)

  def fwd(logits, labels):
    return jax.vjp(real, logits, labels)[0], (logits, labels)

  def bwd(res, g):
    grad = jax.vjp(lambda x: real(x, res[1]), res[0])[1](g)[0]
    return grad * jnp.inf, None

  poisoned.defvjp(fwd, bwd)
  # The hook lives here only: the step's own code path is unchanged.
  monkeypatch.setattr(optax, 'softmax_cross_entropy_with_integer_labels',
                      poisoned)
  config = short_config(digits_dir, steps=8)
  config.checkpoint_every_steps = 2
  config.log_every_steps = 1  # Step 5's own record: its loss is finite.
  with pytest.raises(errors.UserError, match='the gradient norm became (inf|nan) '
                     'while the loss stayed finite by step 5; the run '
                     'diverged') as e:
    train.train_and_evaluate(config, workdir)
  assert 'Last good checkpoint: step 4' in str(e.value)
  ckpt = checkpoint.Checkpointer(workdir)
  assert sorted(ckpt.all_steps()) == [2, 4]
  ckpt.close()
  records = [r for r in read_metrics(workdir) if r['split'] == 'train']
  assert records and all(np.isfinite(r['grad_norm']) and r['grad_norm'] > 0
                         for r in records)


@pytest.mark.slow
def test_a_second_writer_on_a_workdir_stops_in_one_line(digits_dir, tmp_path):
  from tests.helpers import assert_one_line_error  # pylint: disable=g-import-not-at-top
  from tests.helpers import run_cli  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / 'run')
  with writer_lock.hold(path):
    # A live run holds the workdir: another process, and this one, refused.
    proc = run_cli(['--config', 'configs/digits.py:toy', '--workdir', path,
                    f'--config.data_dir={digits_dir}',
                    '--config.num_train_steps=2'])
    assert_one_line_error(proc, 'is in use by another run (pid',
                          'pass another --workdir')
    assert f'on {socket.gethostname()}, since' in proc.stderr
    with pytest.raises(errors.UserError, match='in use by another run'):
      train.train_and_evaluate(short_config(digits_dir, steps=2), path)
  assert not os.path.exists(os.path.join(path, 'checkpoints'))
  assert not os.path.exists(os.path.join(path, writer_lock.LOCK_FILE))
  # Once it has ended, the workdir is free again, and a second run in the
  # same process (a notebook, the experiment runner) works too.
  train.train_and_evaluate(short_config(digits_dir, steps=2), path)
  train.train_and_evaluate(short_config(digits_dir, steps=4), path)
  assert not os.path.exists(os.path.join(path, writer_lock.LOCK_FILE))


def write_lock(path, age_s, **holder):
  os.makedirs(path, exist_ok=True)
  lock = os.path.join(path, writer_lock.LOCK_FILE)
  with open(lock, 'w') as f:
    json.dump(dict(started='2026-12-01 00:00:00', **holder) if holder
              else {}, f)
  os.utime(lock, (time.time() - age_s,) * 2)
  return lock


def test_stale_locks_are_taken_over_and_live_ones_refused(tmp_path,
                                                          caplog):
  here = socket.gethostname()
  gone = subprocess.Popen([sys.executable, '-c', 'pass'])
  gone.wait()  # A pid whose process has ended (kill -9, a crash).
  cases = [  # (holder, heartbeat age, taken over?)
      (dict(host=here, pid=gone.pid), 0, True),
      (dict(host=here, pid=os.getppid()), 5, False),  # Alive here.
      # Hung, or another container with this host name: no heartbeat.
      (dict(host=here, pid=os.getppid()), writer_lock.STALE_S + 5, True),
      # A restarted container: this pid, but another process's start.
      (dict(host=here, pid=os.getpid(), pid_start=-1), 5, True),
      (dict(host='node-7', pid=4), writer_lock.STALE_S + 5, True),  # Requeued.
      (dict(host='node-7', pid=4), writer_lock.STALE_S - 60, False),
      ({}, 1, False),  # Being written: judged by its age alone.
  ]
  for i, (holder, age, taken) in enumerate(cases):
    path = str(tmp_path / str(i))
    lock = write_lock(path, age, **holder)
    caplog.clear()
    if taken:
      with writer_lock.hold(path):
        with open(lock) as f:
          assert json.load(f)['pid'] == os.getpid()
      assert 'Taking over the workdir lock' in caplog.text, caplog.text
      assert not os.path.exists(lock)
    else:
      with pytest.raises(writer_lock.LockError,
                         match='in use by another run') as e:
        with writer_lock.hold(path):
          pass
      assert 'pass another --workdir' in str(e.value)
      assert os.path.exists(lock)  # Left to its holder.


def test_the_holder_refreshes_its_heartbeat(tmp_path):
  path = str(tmp_path)
  lock = os.path.join(path, writer_lock.LOCK_FILE)
  with writer_lock.hold(path, heartbeat_s=0.05):
    os.utime(lock, (time.time() - 1000,) * 2)
    deadline = time.time() + 10
    while time.time() - os.stat(lock).st_mtime > 100:
      assert time.time() < deadline
      time.sleep(0.02)


@pytest.mark.slow
def test_tensorboard_shows_each_step_once_after_a_crash(digits_dir, tmp_path):
  # A crash after step 6 was logged but before it was saved: the rerun
  # resumes from 4 and logs 5 and 6 again; TensorBoard's own reader sees
  # every step once, with the redone values.
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path)
  config = short_config(digits_dir, steps=6)
  config.log_every_steps = 1
  train.train_and_evaluate(config, workdir)
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '6'))
  train.train_and_evaluate(config, workdir)
  events = event_accumulator.EventAccumulator(
      os.path.join(workdir, workdir_lib.TENSORBOARD))
  events.Reload()
  steps = [e.step for e in events.Scalars('train/loss')]
  assert steps == [1, 2, 3, 4, 5, 6], steps
  last = {r['step']: r['loss'] for r in read_metrics(workdir)
          if r['split'] == 'train'}
  assert [e.value for e in events.Scalars('train/loss')] == pytest.approx(
      [last[s] for s in steps], rel=1e-6)


@pytest.mark.slow
def test_config_json_is_the_config_that_trained(digits_dir, tmp_path):
  # A first attempt fails before training (the wrong number of classes);
  # config.json is then the second attempt's, which trained. A resume keeps
  # it.
  workdir = str(tmp_path / 'run')
  wrong = short_config(digits_dir, steps=2)
  wrong.model.num_classes = 7
  with pytest.raises(errors.ConfigError, match='num_classes=10'):
    train.train_and_evaluate(wrong, workdir)
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['model']['num_classes'] == 7  # Written at the start.
  right = short_config(digits_dir, steps=2)
  train.train_and_evaluate(right, workdir)
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['model']['num_classes'] == 10
  longer = short_config(digits_dir, steps=4)
  train.train_and_evaluate(longer, workdir)
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['num_train_steps'] == 2
