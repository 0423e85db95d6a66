"""Progress people can trust: window timing by completion, and progress bars.

JAX dispatches asynchronously, so the host reaches step N long before the
device has finished it. A training window's time therefore runs from when
its own first step could start (the later of the previous window's
completion and the dispatch of its own first step, which is after any
evaluation or checkpoint in between) to when its own last step's metrics were
ready (`WindowClock`). Long loops over a dataset (evaluation, features) show
a tqdm bar on a terminal and a log line at a fixed interval otherwise
(`Progress`), counting only work that has finished.

A leaf module: it imports nothing of ours but `durations`.
"""

import sys
import time
from typing import Callable, Optional

from absl import logging

from alexnet_jax import durations


class WindowClock:
  """Each training window's seconds, from its own steps' completion.

  `window(started, done)`: `started` is when the window's first step was
  dispatched (the call returned: compilation is not training time), `done`
  when its last step's results were on the host. Windows are given in order.
  """

  def __init__(self):
    self._last_done = None
    self.seconds = 0.0  # Training seconds so far (every window).

  def window(self, started: float, done: float) -> float:
    begin = started if self._last_done is None else max(self._last_done,
                                                         started)
    self._last_done = done
    seconds = max(done - begin, 1e-9)
    self.seconds += seconds
    return seconds


def remaining_evals(d: durations.Durations, step: int) -> int:
  """Evaluations still due after `step` (the last step always evaluates)."""
  if step >= d.total_steps:
    return 0
  due = d.total_steps // d.eval_every - step // d.eval_every
  return due + (1 if d.total_steps % d.eval_every else 0)


def eta(d: durations.Durations, step: int, seconds_per_step: float,
        eval_seconds: Optional[float]) -> str:
  """Time left: the remaining steps at the measured rate, plus the remaining
  evaluations at their measured cost ('+ N evals' before one was timed)."""
  left = seconds_per_step * (d.total_steps - step)
  evals = remaining_evals(d, step)
  if eval_seconds is not None:
    return durations.fmt_time(left + evals * eval_seconds)
  text = durations.fmt_time(left)
  return f'{text} + {evals} eval{"s" if evals != 1 else ""}' if evals else text


class Progress:
  """Progress of a loop over `total` items, honest about what has finished.

  On a terminal (stderr a tty) a tqdm bar; otherwise one log line every
  `interval` seconds, so the log of a background run is not flooded. The
  caller calls `update(n, ready)` after dispatching n items, where `ready`
  (optional) blocks until they are done; it is called before anything is
  shown, so every count and rate shown is of finished work.
  """

  def __init__(self, total: int, desc: str, unit: str = 'img',
               interval: float = 30.0, tty: Optional[bool] = None,
               clock: Callable[[], float] = time.time,
               log: Callable[..., None] = logging.info):
    self.total, self.desc, self.unit = total, desc, unit
    self.interval, self._clock, self._log = interval, clock, log
    self.done = 0
    self.start = self._last = clock()
    tty = sys.stderr.isatty() if tty is None else tty
    self._bar = None
    if tty:
      from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm.tqdm(total=total, desc=desc, unit=unit, leave=False)

  def update(self, n: int, ready: Optional[Callable[[], None]] = None):
    if self._bar is not None:
      if ready:
        ready()
      self.done += n
      self._bar.update(n)
      return
    self.done += n
    now = self._clock()
    if now - self._last >= self.interval:
      if ready:
        ready()
        now = self._clock()
      self._last = now
      self._log(self.line(now))

  def line(self, now: float) -> str:
    seconds = max(now - self.start, 1e-9)
    rate = self.done / seconds
    left = (self.total - self.done) / rate if rate > 0 else 0.0
    return (f'{self.desc}: {self.done:,}/{self.total:,} {self.unit} '
            f'({100 * self.done / max(self.total, 1):.0f}%), '
            f'{rate:,.1f} {self.unit}/s, {durations.fmt_time(seconds)} '
            f'elapsed, ETA {durations.fmt_time(left)}')

  def close(self):
    if self._bar is not None:
      self._bar.close()
      self._bar = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
