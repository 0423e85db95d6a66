"""How long a run is, when each periodic action falls, and times for people.

Configs write durations in epochs (`num_epochs`, `eval_every_epochs`); this is
the one place they become steps.
"""

import dataclasses
import math
from typing import Dict


def every(step: int, n: int, total: int) -> bool:
  """Whether `step` (1-based, after it ran) is due for an action every `n`
  steps; the last step always is."""
  return step % n == 0 or step == total


def fmt_time(seconds: float) -> str:
  """'1h02m03s' or '2m03s'."""
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


@dataclasses.dataclass(frozen=True)
class Durations:
  """A run's length and periods, in steps."""
  steps_per_epoch: int
  total_steps: int
  eval_every: int
  log_every: int
  checkpoint_every: int

  @classmethod
  def from_config(cls, config, steps_per_epoch: int) -> 'Durations':
    if config.num_train_steps > 0:
      total = int(config.num_train_steps)
    else:
      total = int(math.ceil(config.num_epochs * steps_per_epoch))
    return cls(steps_per_epoch=steps_per_epoch, total_steps=total,
               eval_every=max(1, int(round(config.eval_every_epochs *
                                           steps_per_epoch))),
               log_every=config.log_every_steps,
               checkpoint_every=config.checkpoint_every_steps)

  @property
  def num_epochs(self) -> float:
    return self.total_steps / self.steps_per_epoch

  def epoch(self, step: int) -> float:
    return step / self.steps_per_epoch

  def position(self, step: int) -> Dict[str, int]:
    """Where the input stream stands after `step` steps."""
    return {'epoch': step // self.steps_per_epoch,
            'batch': step % self.steps_per_epoch}

  def is_log(self, step: int) -> bool:
    return every(step, self.log_every, self.total_steps)

  def is_eval(self, step: int) -> bool:
    return every(step, self.eval_every, self.total_steps)

  def is_checkpoint(self, step: int) -> bool:
    return every(step, self.checkpoint_every, self.total_steps)

  def eta(self, seconds_per_step: float, step: int) -> str:
    return fmt_time(seconds_per_step * (self.total_steps - step))
