"""One writer per workdir: a lock file with its holder and a heartbeat.

`WORKDIR/writer.lock` holds the holder's host, pid and start time (JSON); it
is created atomically (O_EXCL, which network filesystems honour, unlike
flock on many), and its modification time is the heartbeat, refreshed every
`HEARTBEAT_S` by a thread while the run lives. A second run finds it and
stops in one line, unless the lock is stale:
- on this host, when its process is gone (kill -9, a crash): taken over at
  once, with a warning;
- from another host, when its heartbeat is older than `STALE_S`, as after a
  SLURM requeue onto another node: taken over, with a warning. (Clocks of
  the hosts must agree to well within that.)
The lock is removed when the run ends.
"""

import contextlib
import json
import os
import socket
import threading
import time
import uuid

from absl import logging

from alexnet_jax import errors

LOCK_FILE = 'writer.lock'
HEARTBEAT_S = 60.0
STALE_S = 600.0


class LockError(errors.UserError):
  """The workdir is another live run's."""


def _process_start(pid: int):
  """The process's start time in clock ticks since boot (Linux), or None:
  tells a live process from a new one that reuses the pid."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return int(f.read().rsplit(')', 1)[1].split()[19])
  except (OSError, IndexError, ValueError):
    return None


def _alive(pid: int, start) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # Someone else's process: alive.
  return start is None or _process_start(pid) in (None, start)


def _read(path: str):
  """(holder dict, heartbeat age in s), or (None, None) if there is none."""
  try:
    with open(path) as f:
      text = f.read()
    age = time.time() - os.stat(path).st_mtime
  except FileNotFoundError:
    return None, None
  except OSError:
    return {}, 0.0  # Unreadable for now (NFS): live until proven stale.
  try:
    holder = json.loads(text)
  except ValueError:
    holder = {}  # Being written, or damaged: judged by its age alone.
  return (holder if isinstance(holder, dict) else {}), age


def _stale(holder, age, stale_s):
  """Why the lock may be taken over, or None while its holder is alive."""
  if age > stale_s:  # A live holder refreshes it, whatever its host.
    return f'its heartbeat is {age:.0f} s old, over {stale_s:.0f} s'
  pid, start = holder.get('pid'), holder.get('pid_start')
  if holder.get('host') == socket.gethostname() and isinstance(pid, int):
    if pid == os.getpid():  # This process, or a dead one of the same pid.
      if start is not None and start != _process_start(pid):
        return f'its process {pid} on this host is gone'
      return None
    if not _alive(pid, start):
      return f'its process {pid} on this host is gone'
  return None


def _describe(holder, age):
  if not holder:
    return f'unreadable lock, written {age:.0f} s ago'
  return (f"pid {holder.get('pid')} on {holder.get('host')}, since "
          f"{holder.get('started')}, heartbeat {age:.0f} s ago")


def _write(path: str, me) -> None:
  tmp = f'{path}.{me["token"]}'
  with open(tmp, 'w') as f:
    json.dump(me, f)
  os.replace(tmp, path)


def _take(workdir: str, path: str, stale_s: float):
  me = {'host': socket.gethostname(), 'pid': os.getpid(),
        'pid_start': _process_start(os.getpid()),
        'started': time.strftime('%Y-%m-%d %H:%M:%S'),
        'token': uuid.uuid4().hex}
  for _ in range(3):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      holder, age = _read(path)
      if holder is None:
        continue  # Released meanwhile.
      reason = _stale(holder, age, stale_s)
      if reason is None:
        raise LockError(
            f'{workdir} is in use by another run ({_describe(holder, age)}); '
            'wait for it to end (or stop it), or pass another --workdir. A '
            f'lock from another host is taken over once its heartbeat is '
            f'{stale_s:.0f} s old.') from None
      logging.warning('Taking over the workdir lock of %s: %s.',
                      _describe(holder, age), reason)
      _write(path, me)
      if (_read(path)[0] or {}).get('token') != me['token']:
        raise LockError(f'{workdir}: another run took it over at the same '
                        'moment; pass another --workdir.')
      return me
    try:
      with os.fdopen(fd, 'w') as f:
        json.dump(me, f)
    except BaseException:
      os.remove(path)  # Never leave an empty lock behind (ENOSPC, ^C).
      raise
    return me
  raise LockError(f'{workdir}: its lock keeps changing hands; pass another '
                  '--workdir.')


@contextlib.contextmanager
def hold(workdir: str, heartbeat_s: float = HEARTBEAT_S,
         stale_s: float = STALE_S):
  """This process as the workdir's only writer while the block runs."""
  path = os.path.join(workdir, LOCK_FILE)
  try:
    os.makedirs(workdir, exist_ok=True)
    me = _take(workdir, path, stale_s)
  except OSError as e:  # Read-only, full, over quota, not ours.
    raise errors.not_writable(workdir, e) from e
  done = threading.Event()

  def beat():
    while not done.wait(heartbeat_s):
      holder, _ = _read(path)
      if holder and holder.get('token') != me['token']:
        logging.error('The lock %s was taken over by another run (%s): two '
                      'runs may now write this workdir.', path,
                      _describe(holder, 0))
        return
      try:
        os.utime(path)
      except OSError as e:  # Transient (NFS): the next beat tries again.
        logging.warning('Could not refresh the lock %s (%s).', path, e)

  thread = threading.Thread(target=beat, daemon=True, name='writer-lock')
  thread.start()
  try:
    yield
  finally:
    done.set()
    thread.join()
    if (_read(path)[0] or {}).get('token') == me['token']:
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)
