"""Progress you can trust: window timing from completion events, the ETA,
progress lines during long loops, and the training loop's rates end to end."""

import math
import threading
import time
import types

import numpy as np
import pytest

from alexnet_jax import durations as durations_lib
from alexnet_jax import errors
from alexnet_jax import progress
from alexnet_jax import train
from tests.helpers import timed_writes


def test_window_clock_times_each_window_by_its_own_completion():
  clock = progress.WindowClock()
  # Dispatch runs ahead: each window's first step is dispatched long before
  # the previous window finished, so a window is done-to-done.
  assert clock.window(started=0.5, done=10.0) == pytest.approx(9.5)
  assert clock.window(started=1.0, done=20.0) == pytest.approx(10.0)
  # An evaluation from 20 to 50: the next window's first step is dispatched
  # only after it (at 50.2), so the evaluation is not training time.
  assert clock.window(started=50.2, done=60.2) == pytest.approx(10.0)
  # A checkpoint save that held the loop until 61.0.
  assert clock.window(started=61.0, done=71.0) == pytest.approx(10.0)
  # The end of the run: a short last window, still done-to-done.
  assert clock.window(started=65.0, done=73.5) == pytest.approx(2.5)
  assert clock.seconds == pytest.approx(42.0)


def _durations(total=30, per_epoch=73, eval_every=10, log=5, ckpt=10):
  return durations_lib.Durations(steps_per_epoch=per_epoch, total_steps=total,
                                 eval_every=eval_every, log_every=log,
                                 checkpoint_every=ckpt)


@pytest.mark.parametrize('total,every,step,want', [
    (10, 4, 0, 3), (10, 4, 4, 2), (10, 4, 8, 1), (10, 4, 9, 1),
    (10, 4, 10, 0), (8, 4, 0, 2), (8, 4, 4, 1), (8, 4, 7, 1)])
def test_remaining_evals(total, every, step, want):
  d = _durations(total=total, eval_every=every)
  assert progress.remaining_evals(d, step) == want
  # The same count, step by step.
  assert want == sum(d.is_eval(s) for s in range(step + 1, total + 1))


def test_eta_counts_the_evaluations_to_come():
  d = _durations(total=30, eval_every=10)
  # 20 steps at 2 s, and 2 evaluations (20, 30) at 15 s each.
  assert progress.eta(d, 10, 2.0, 15.0) == '1m10s'
  assert progress.eta(d, 10, 2.0, None) == '0m40s + 2 evals'
  assert progress.eta(d, 30, 2.0, 15.0) == '0m00s'


class FakeLog:

  def __init__(self):
    self.records = []

  def write(self, record):
    self.records.append(record)


class Device:
  """Windows that finish when the test says, on a clock the test sets."""

  def __init__(self):
    self.now = 0.0
    self.finish = {}  # step -> (threading.Event, completion time)

  def clock(self):
    return self.now

  def fetch(self, window):
    event, at = self.finish[window[-1]['step']]
    event.wait(10)
    self.now = at
    return [{k: np.float32(v) for k, v in m.items()} for m in window]


def _metrics(step, loss=1.0):
  return {'step': step, 'loss': loss, 'top1_err': 0.5, 'top5_err': 0.1,
          'lr': 0.01, 'grad_norm': 2.0}


def _records(device, d, batch=128):
  ckpt = types.SimpleNamespace(latest_step=lambda: 0, directory='ckpts')
  return train._TrainRecords(FakeLog(), d, batch, ckpt,  # pylint: disable=protected-access
                             clock=device.clock, fetch=device.fetch)


def _wait_for(predicate):
  for _ in range(1000):
    if predicate():
      return
    time.sleep(0.01)
  raise AssertionError('the records thread did not write in 10 s')


def test_each_window_is_logged_when_its_steps_finish(monkeypatch):
  messages = []
  # absl's handlers vary with what ran before in the process: catch the
  # lines at the call.
  monkeypatch.setattr(train.logging, 'info',
                      lambda fmt, *args: messages.append(fmt % args))
  d = _durations(total=20, per_epoch=50, eval_every=10, log=5)
  device = Device()
  records = _records(device, d)
  events = {s: threading.Event() for s in (5, 10, 15, 20)}
  device.finish = {5: (events[5], 10.0), 10: (events[10], 20.0),
                   15: (events[15], 60.0), 20: (events[20], 70.0)}
  try:
    for step in range(1, 11):  # Dispatched at t = 0, far ahead of the device.
      records.add(_metrics(step), input_wait=1.0 if step <= 5 else 0.0)
      if step % 5 == 0:
        records.close_window(step)
    # Nothing is logged before its steps are done, and the first window's
    # record is written as soon as they are, with no call from the loop.
    assert not records.log.records
    events[5].set()
    _wait_for(lambda: len(records.log.records) == 1)
    events[10].set()
    records.flush()  # The loop's flush before its evaluation at step 10.
    # An evaluation (20 to 50), then dispatch resumes at t = 50.
    device.now = 50.0
    records.eval_seconds.append(30.0)
    for step in range(11, 21):
      records.add(_metrics(step))
      if step % 5 == 0:
        records.close_window(step)
    events[15].set()
    events[20].set()
    records.flush()
  finally:
    records.close()
  got = [(r['step'], r['img_per_sec']) for r in records.log.records]
  # 5 steps x 128 images in 10 s, every window: the evaluation is left out.
  assert got == [(5, 64.0), (10, 64.0), (15, pytest.approx(64.0)),
                 (20, pytest.approx(64.0))]
  # The first window waited 1 s for each of its batches but the first (whose
  # wait came before the window began): 4 of its 10 s. CPU reports no memory.
  first = records.log.records[0]
  assert (first['input_wait_s'], first['input_wait_share']) == (4.0, 0.4)
  assert records.log.records[1]['input_wait_share'] == 0.0
  assert first['device_memory_gb'] is None
  lines = [m for m in messages if 'step 5/20' in m]
  # Epochs as two decimals on both sides; the ETA counts the 2 evaluations
  # still due (at 10 and 20) before one was timed.
  assert lines[0].startswith('epoch 0.10/0.40  step 5/20  loss 1.0000')
  assert lines[0].endswith('64.0 img/s  input wait 40%  ETA 0m30s + 2 evals')
  last = [m for m in messages if 'step 15/20' in m][0]
  assert last.endswith('ETA 0m40s')  # 5 steps at 2 s and one 30 s eval.


def test_a_non_finite_window_stops_the_loop():
  d = _durations(total=10, log=5)
  device = Device()
  ready = threading.Event()
  ready.set()
  device.finish = {5: (ready, 1.0), 10: (ready, 2.0)}
  records = _records(device, d)
  try:
    for step in range(1, 6):
      records.add(_metrics(step, loss=math.nan if step == 3 else 1.0))
    records.close_window(5)
    with pytest.raises(errors.UserError, match='loss became nan by step 5'):
      records.flush()
    with pytest.raises(errors.UserError):
      records.close_window(10)
  finally:
    records.close()
  assert not records.log.records


def test_float16_windows_of_skipped_steps_stop_only_at_the_smallest_scale():
  # A window of overflows at scale 4 is the scale coming down: logged, with
  # no gradient norm; the same at scale 1 is a divergence.
  d = _durations(total=15, log=5)
  device = Device()
  ready = threading.Event()
  ready.set()
  device.finish = {5: (ready, 1.0), 10: (ready, 2.0), 15: (ready, 3.0)}
  records = _records(device, d)

  def f16(step, skipped, scale):
    # A skipped step's forward pass may have overflowed too: its loss is inf.
    return dict(_metrics(step, loss=math.inf if skipped else 1.0),
                grad_norm=0.0 if skipped else 2.0, skipped=float(skipped),
                loss_scale=scale)
  try:
    for step in range(1, 6):
      records.add(f16(step, True, 2.0 ** (7 - step)))
    records.close_window(5)
    for step in range(6, 11):
      records.add(f16(step, step < 8, 1.0 if step < 8 else 2.0))
    records.close_window(10)
    records.flush()
    first, second = records.log.records
    assert first['skipped_steps'] == 5 and first['grad_norm'] is None
    assert first['loss'] is None and first['top1_err'] is None
    assert first['loss_scale'] == 4.0
    # The averages are the applied steps': the skipped ones' inf is not a
    # divergence.
    assert second['skipped_steps'] == 2 and second['grad_norm'] == 2.0
    assert second['loss'] == 1.0
    for step in range(11, 16):
      records.add(f16(step, True, 1.0))
    records.close_window(15)
    with pytest.raises(errors.UserError,
                       match='overflowed float16, even at loss scale 1;'):
      records.flush()
  finally:
    records.close()
  assert len(records.log.records) == 2


def test_progress_lines_at_an_interval_count_only_finished_work():
  now = [0.0]
  lines, readies = [], []
  bar = progress.Progress(1000, 'eval (10 crops)', interval=30, tty=False,
                          clock=lambda: now[0], log=lines.append)
  for _ in range(10):
    now[0] += 10.0
    bar.update(100, lambda: readies.append(now[0]))
  # One line every 30 s, each after waiting for what had been dispatched.
  assert readies == [30.0, 60.0, 90.0]
  assert lines == [
      'eval (10 crops): 300/1,000 img (30%), 10.0 img/s, 0m30s elapsed, ETA '
      '1m10s',
      'eval (10 crops): 600/1,000 img (60%), 10.0 img/s, 1m00s elapsed, ETA '
      '0m40s',
      'eval (10 crops): 900/1,000 img (90%), 10.0 img/s, 1m30s elapsed, ETA '
      '0m10s']


def test_progress_bar_on_a_terminal_waits_for_each_update(capsys):
  readies = []
  with progress.Progress(3, 'features', tty=True) as bar:
    for _ in range(3):
      bar.update(1, lambda: readies.append(bar.done))
  assert readies == [0, 1, 2] and bar.done == 3
  assert 'features' in capsys.readouterr().err


@pytest.mark.slow
def test_reported_rates_match_the_wall_clock_on_the_figure1_network(
    digits_dir, tmp_path, monkeypatch):
  """Every window's img/s against the wall time between its record and the
  previous one, on the small network, where a window timed by the wrong
  step is furthest off."""
  from alexnet_jax.configs import figure1_digits  # pylint: disable=g-import-not-at-top
  config = figure1_digits.get_config()
  config.data_dir = digits_dir
  config.mesh.data = config.mesh.model = 1
  config.num_epochs = 8
  config.log_every_steps = 22  # Two epochs of 11 steps a window.
  config.eval_every_epochs = 4
  config.checkpoint_every_steps = 10_000  # Only at the end.
  written = timed_writes(monkeypatch)
  train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert [(r['split'], r['step']) for _, r in written] == [
      ('train', 22), ('train', 44), ('eval', 44), ('train', 66),
      ('train', 88), ('eval', 88)]
  checked = 0
  for k in range(1, len(written)):
    t, record = written[k]
    if record['split'] != 'train':
      continue
    # The previous record: a window's, or an evaluation's, written once
    # that evaluation was over.
    wall = t - written[k - 1][0]
    reported = 22 * config.batch_size / record['img_per_sec']
    assert 0.5 <= reported / wall <= 2.0, (record['step'], reported, wall)
    checked += 1
  assert checked == 3
