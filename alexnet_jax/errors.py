"""Errors caused by the user's input rather than by a bug.

`alexnet_jax.main` prints these as one line naming the fix and exits non-zero;
anything else keeps its traceback.
"""


class UserError(Exception):
  """Bad configuration, data or environment; the message names the fix."""


class ConfigError(UserError, ValueError):
  """A config value that cannot work."""


class DataError(UserError):
  """A dataset that cannot be found, prepared or read."""


def not_writable(workdir: str, error: OSError) -> UserError:
  """The one line for a workdir that cannot be written."""
  return UserError(f'workdir {workdir!r} is not writable ({error.strerror}); '
                   'pass a --workdir you can write to.')
