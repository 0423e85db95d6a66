"""Errors caused by the user's input rather than by a bug.

`alexnet_jax.main` prints these as one line naming the fix and exits non-zero;
anything else keeps its traceback.
"""

import functools


class UserError(Exception):
  """Bad configuration, data or environment; the message names the fix."""


class ConfigError(UserError, ValueError):
  """A config value that cannot work."""


class DataError(UserError):
  """A dataset that cannot be found, prepared or read."""


def config_errors(factory):
  """Decorates a factory that builds from config values: the ValueError a
  bad value raises in it (or below it) is a ConfigError, one line."""
  @functools.wraps(factory)
  def build(*args, **kwargs):
    try:
      return factory(*args, **kwargs)
    except UserError:
      raise
    except ValueError as e:
      raise ConfigError(str(e).splitlines()[0]) from e
  return build


def not_writable(workdir: str, error: OSError) -> UserError:
  """The one line for a workdir that cannot be written."""
  return UserError(f'workdir {workdir!r} is not writable ({error.strerror}); '
                   'pass a --workdir you can write to.')
