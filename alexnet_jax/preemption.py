"""When to stop for a preemption: at one step, agreed by every process.

One process: SIGTERM or SIGINT sets a flag that the loop reads once per step.

Several processes (jax.distributed): a signal reaches one process, or several
at different steps, so each acting on its own flag would leave one in the
checkpoint save while another waits in the next step's all-reduce (a hang).
JAX's preemption service agrees instead: it owns SIGTERM, tells every process
of the notice through the coordinator and picks the step at which all stop
(`multihost_utils.reached_preemption_sync_point`, what orbax's
`multihost.reached_preemption` calls). SIGINT is handed to it as a SIGTERM.

Either way the run saves one checkpoint at that step and the command exits
with `EXIT_PREEMPTED`, so a scheduler can requeue it.
"""

import signal
import threading
from typing import Optional

from absl import logging
import jax
from jax.experimental import multihost_utils

# EX_TEMPFAIL of sysexits.h: "a temporary failure; the user is invited to
# retry". Neither success (0) nor a failure (1, or 2 for bad input).
EXIT_PREEMPTED = 75


def _agreed() -> bool:
  """Whether JAX's preemption service runs (jax.distributed, >1 process)."""
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  return (jax.process_count() > 1 and
          distributed.global_state.preemption_sync_manager is not None)


class StopRequests:
  """Signals that ask the training loop to checkpoint and stop.

  Used as a context manager around the loop (handlers are only installed from
  the main thread); `stop_at(step)` is called once after every step, with the
  same steps on every process. A second SIGINT interrupts at once.
  """

  def __init__(self):
    self.agreed = _agreed()
    self.signal = None
    self._old = {}

  def _handle(self, signum, frame):
    del frame
    if self.signal is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signal = signal.Signals(signum).name
    logging.warning('%s received: checkpointing at the end of this step%s.',
                    self.signal, ' that every process agrees on'
                    if self.agreed else '')
    if self.agreed:
      # The preemption service's own SIGTERM handler (in C++) tells the
      # others; Python's handler for SIGTERM is never installed here.
      signal.raise_signal(signal.SIGTERM)

  def stop_at(self, step: int) -> Optional[str]:
    """The reason to stop after `step` steps, or None to go on."""
    if not self.agreed:
      return self.signal
    if multihost_utils.reached_preemption_sync_point(step):
      return self.signal or 'a preemption notice (SIGTERM)'
    return None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in ((signal.SIGINT,) if self.agreed else
                (signal.SIGTERM, signal.SIGINT)):
        self._old[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, handler in self._old.items():
      signal.signal(s, handler)
    self._old = {}
