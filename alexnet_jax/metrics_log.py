"""A run's metrics: `metrics.jsonl` and the same scalars for TensorBoard.

metrics.jsonl is a documented interface (docs/runs.md): one JSON object per
line. Resume repairs it (torn lines, records past the checkpoint), so its
readers see each step once.
"""

import itertools
import json
import os
import socket
import time
from typing import Any, Dict

from absl import logging
import jax

METRICS_FILE = 'metrics.jsonl'
TENSORBOARD = 'tensorboard'


class MetricsLog:
  """Writes metrics to `workdir/metrics.jsonl` and TensorBoard event files.

  metrics.jsonl is a documented interface: one JSON object per line with at
  least step, epoch, split ('train' | 'eval'), loss, top1_err, top5_err, lr,
  img_per_sec. Only process 0 writes.
  """

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, METRICS_FILE)
    self.events = (_EventFile(os.path.join(workdir, TENSORBOARD))
                   if self.active else None)

  def roll_back(self, step: int):
    """Repairs metrics.jsonl and drops records past `step` (work a crash
    undid, redone on resume).

    A line a kill -9 or a full disk cut short is moved to metrics.jsonl.torn
    with a warning; records past `step` go to metrics.jsonl.rolled_back.
    Nothing is lost, and readers of metrics.jsonl see only whole lines.
    TensorBoard is told of the restart, and hides those records too.
    """
    if not self.active:
      return
    # TensorBoard's restart marker: its readers drop the earlier files'
    # events from this step on, so each step appears once (harmless on a
    # fresh run).
    self.events.write_restart(step + 1)
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = f.readlines()
    records, torn = [], []
    for line in lines:
      try:
        record = json.loads(line)
        records.append((record['step'], line if line.endswith('\n')
                        else line + '\n'))
      except (ValueError, KeyError, TypeError):
        if line.strip():
          torn.append(line if line.endswith('\n') else line + '\n')
    keep = [l for s, l in records if s <= step]
    later = [l for s, l in records if s > step]
    if keep == lines:
      return
    if torn:
      with open(self.path + '.torn', 'a') as f:
        f.writelines(torn)
      logging.warning('metrics.jsonl: %d torn line(s) (cut short by a crash '
                      'or a full disk) moved to %s.torn.', len(torn),
                      self.path)
    if later:
      with open(self.path + '.rolled_back', 'a') as f:
        f.writelines(later)
      logging.info('metrics.jsonl: %d record(s) after step %d rolled back to '
                   '%s.rolled_back', len(later), step, self.path)
    tmp = self.path + '.tmp'
    with open(tmp, 'w') as f:
      f.writelines(keep)
    os.replace(tmp, self.path)

  def write(self, record: Dict[str, Any]):
    if not self.active:
      return
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    scalars = {f'{record["split"]}/{k}': v for k, v in record.items()
               if k not in ('step', 'split', 'epoch')
               and isinstance(v, (int, float))}
    self.events.write_scalars(record['step'], scalars)


_EVENT_FILES = itertools.count()  # Several runs in one process, one second.


class _EventFile:
  """A TensorBoard event file of scalars, through tensorboard's own record
  writer and protos. Not a ready-made writer: clu's and tensorboard's import
  TensorFlow (about 6 s of every run's start; the training path needs no
  TensorFlow), and tensorboardX (2.6.5) imports PyTorch wherever it is
  installed (writer.py; 1.7 s against these imports' 0.3 s on a 2-core VM,
  and PyTorch inside every training process of a GPU host that has it)."""

  def __init__(self, directory: str):
    # pylint: disable=g-import-not-at-top
    from tensorboard.compat.proto import event_pb2
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.summary.writer import record_writer
    # pylint: enable=g-import-not-at-top
    self._event, self._summary = event_pb2.Event, summary_pb2.Summary
    self._session_log = event_pb2.SessionLog
    os.makedirs(directory, exist_ok=True)
    # TensorBoard's file name: it reads files named events.out.tfevents.*.
    name = (f'events.out.tfevents.{int(time.time()):010d}.'
            f'{socket.gethostname()}.{os.getpid()}.{next(_EVENT_FILES)}')
    # Open for the run (each record is flushed); closed when the process ends.
    self._file = open(os.path.join(directory, name), 'ab')  # pylint: disable=consider-using-with
    self._records = record_writer.RecordWriter(self._file)
    self._write(self._event(wall_time=time.time(),
                            file_version='brain.Event:2'))

  def write_scalars(self, step: int, scalars: Dict[str, float]):
    values = [self._summary.Value(tag=k, simple_value=float(v))
              for k, v in scalars.items()]
    self._write(self._event(wall_time=time.time(), step=step,
                            summary=self._summary(value=values)))

  def write_restart(self, step: int):
    """Marks a restart at `step`: TensorBoard drops the events of earlier
    files at `step` and after (its purge of orphaned data)."""
    self._write(self._event(wall_time=time.time(), step=step,
                            session_log=self._session_log(
                                status=self._session_log.START)))

  def _write(self, event):
    self._records.write(event.SerializeToString())
    self._records.flush()
