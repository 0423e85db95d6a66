"""Command lines: one convention for every command, failing in one line.

Every command takes `--flag=value` or `--flag value`, and each flag in either
spelling, `--max_images` or `--max-images`; where a config is involved,
`--config FILE` and ml_collections' `--config.KEY=VALUE` (keys spelled as in
configs/default.py). Errors are one line,
`PROG: error: ...`, with exit status 2. The commands built on a config (main,
bench, prepare) parse with absl, as flax's examples do; the others with
`ArgumentParser` here, which keeps the same rules.
"""

import argparse
import logging as std_logging
import os
import re
import sys
from typing import Callable, List, Optional, Sequence

from absl import flags
from absl import logging


def error(message: str, prog: str = 'alexnet_jax') -> int:
  """Prints the one error line every command uses; returns exit status 2.
  The prefix is the module ('alexnet_jax.features'), however `prog` says it."""
  if prog.startswith('python -m '):
    prog = prog[len('python -m '):]
  print(f'{prog}: error: {message}', file=sys.stderr)
  return 2


def fail(message: str, prog: str = 'alexnet_jax'):
  sys.exit(error(message, prog))


def run_main(main: Callable[[], Optional[int]], prog: str):
  """Runs a command's main() and exits with its status; a SystemExit that
  carries a message ('PROG: error: ...' or bare) becomes the one error line
  and exit status 2, as every command's errors are."""
  try:
    status = main()
  except SystemExit as e:
    if not isinstance(e.code, str):
      raise
    message = e.code.split(': error: ', 1)[-1]
    status = error(message, prog)
  sys.exit(status or 0)


def split_config_args(argv: Sequence[str]):
  """(--config FILE or None, [--config.KEY=VALUE ...], the other arguments).

  '--config.KEY VALUE' takes VALUE unless it is another flag; a bare
  '--config.KEY' (or '--noconfig.KEY') is a boolean, as absl reads it.
  """
  path, overrides, rest = None, [], []
  argv = list(argv)
  i = 0
  while i < len(argv):
    a = argv[i]
    i += 1
    if a == '--config':
      path = argv[i] if i < len(argv) else ''
      i += 1
    elif a.startswith('--config='):
      path = a.split('=', 1)[1]
    elif a.startswith(('--config.', '--noconfig.')):
      if ('=' not in a and a.startswith('--config.') and i < len(argv) and
          not argv[i].startswith('--')):
        a = f'{a}={argv[i]}'
        i += 1
      overrides.append(a)
    else:
      rest.append(a)
  return path, overrides, rest


def saved_config_overrides(argv: Sequence[str], prog: str):
  """([--config.KEY=VALUE ...], the other arguments) of a command that works
  on a run's saved config, where --config FILE has no meaning."""
  path, overrides, rest = split_config_args(argv)
  if path is not None:
    fail('--config FILE: the config is the run\'s saved one; change it with '
         '--config.KEY=VALUE.', prog)
  return overrides, rest


def config_path(path: str) -> str:
  """A --config value ('FILE[:ARG]'), found from any working directory: a
  `configs/NAME.py` that is not there names the shipped one
  (alexnet_jax/configs/, installed with the package)."""
  file, sep, arg = path.partition(':')
  shipped = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                         'configs', os.path.basename(file))
  if (not os.path.exists(file) and os.path.dirname(os.path.normpath(file)) ==
      'configs' and os.path.exists(shipped)):
    return shipped + sep + arg
  return path


def _with_config_paths(argv: Sequence[str]) -> List[str]:
  out = list(argv)
  for i, a in enumerate(out):
    if a.startswith('--config='):
      out[i] = '--config=' + config_path(a[len('--config='):])
    elif a == '--config' and i + 1 < len(out):
      out[i + 1] = config_path(out[i + 1])
  return out


def underscored(argv: Sequence[str]) -> List[str]:
  """argv with each flag's name in absl's spelling: '--vs-torch' ->
  '--vs_torch' (values, positional arguments and config keys, which are
  spelled as in configs/default.py, unchanged)."""
  out = list(argv)
  for i, a in enumerate(out):
    if a == '--':
      break  # What follows is not flags.
    if a.startswith('--') and len(a) > 2 and not a.startswith(
        ('--config.', '--noconfig.')):
      name, sep, value = a[2:].partition('=')
      if name.startswith('no-'):  # absl's negation, '--no-vs-torch'.
        name = 'no' + name[3:]
      out[i] = '--' + name.replace('-', '_') + sep + value
  return out


class ArgumentParser(argparse.ArgumentParser):
  """argparse with the package's rules: every '--a_b' option also answers
  to '--a-b' (and the reverse), no abbreviations (absl has none either), and
  an error is one line, exit status 2."""

  def __init__(self, *args, **kwargs):
    kwargs.setdefault('allow_abbrev', False)
    super().__init__(*args, **kwargs)

  def add_argument(self, *names, **kwargs):
    spelled = list(names)
    for n in names:
      if n.startswith('--'):
        other = '--' + (n[2:].replace('_', '-') if '_' in n else
                        n[2:].replace('-', '_'))
        if other not in spelled:
          spelled.append(other)
    return super().add_argument(*spelled, **kwargs)

  def error(self, message):
    fail(message, self.prog)


def parse_flags(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS,
                prog: str = 'alexnet_jax') -> List[str]:
  """flag_values(argv), with one-line errors naming the bad flag or key, and
  dashed flag names taken as underscored."""
  try:
    return flag_values(_with_config_paths(underscored(argv)))
  except flags.Error as e:
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    fail(' '.join(lines[:1] + lines[-1:]) if len(lines) > 1 else lines[0],
         prog)
  except (AttributeError, KeyError) as e:
    # ml_collections' locked config refuses keys it does not have.
    text = str(e).replace('\\', '')
    found = re.search(r"'(\w+)'", text)
    key = found.group(1) if found else text
    hint = re.search(r'Did you mean "(\w+)"', text)
    given = [a.split('=')[0] for a in argv if a.startswith('--config.')
             and key in a.split('=')[0].split('.')]
    fail(f'{given[0] if given else key}: unknown config key {key!r}' +
         (f'; did you mean {hint.group(1)!r}?' if hint else
          '; the keys and their meaning are in configs/default.py.'), prog)
  except (TypeError, ValueError) as e:
    fail(f'bad --config override: {e}; see configs/default.py.', prog)


def loaded_config(flag_values: flags.FlagValues = flags.FLAGS,
                  prog: str = 'alexnet_jax'):
  """The --config flag's ConfigDict; a file that will not load is one line."""
  try:
    config = flag_values.config
    config.keys()  # Config files load lazily: fail here, in one line.
  except OSError as e:
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    fail(f'--config: could not load the config file ({lines[-1]}); pass a '
         'path such as configs/digits.py.', prog)
  return config


class _QuietLibraries(std_logging.Filter):
  """Drops the libraries' INFO chatter (orbax logs every file it writes)."""

  def filter(self, record):
    if record.levelno >= std_logging.WARNING:
      return True
    return not any(f'{os.sep}{lib}{os.sep}' in record.pathname
                   for lib in ('orbax', 'tensorflow_datasets', 'etils', 'jax'))


def quiet_libraries():
  """Our INFO lines only (once per process)."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
    handler.addFilter(_QuietLibraries())


def parse_config(overrides, path=None, config=None, prog='alexnet_jax'):
  """(config, {key: value}): a config file (`path`, 'FILE[:ARG]') or a
  ConfigDict, with '--config.KEY=VALUE' arguments applied as
  alexnet_jax.main applies them, on a private flag registry (nothing global
  changes); bad ones fail in one line."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  registry = flags.FlagValues()
  argv = [prog] + ([f'--config={config_path(path)}'] if path else []) + list(
      overrides)
  # sys_argv: where config_flags finds the --config.KEY flags to define.
  if path:
    config_flags.DEFINE_config_file('config', None, 'the config',
                                    flag_values=registry, lock_config=True,
                                    sys_argv=argv)
  else:
    config_flags.DEFINE_config_dict('config', config, flag_values=registry,
                                    lock_config=True, sys_argv=argv)
  parse_flags(argv, registry, prog=prog)
  return (loaded_config(registry, prog),
          dict(config_flags.get_override_values(registry['config'])))
