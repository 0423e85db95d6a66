"""Command line entry point.

  python -m alexnet_jax.main --config configs/digits.py --workdir runs/digits

Any config field can be overridden: --config.batch_size=64. All logic lives in
`alexnet_jax.train.train_and_evaluate`, importable from a notebook.
"""

import logging as std_logging
import os
import re
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from alexnet_jax import errors
from alexnet_jax import parallel
from alexnet_jax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file, e.g. configs/digits.py.',
    lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints and metrics.')
flags.mark_flags_as_required(['config', 'workdir'])


class _QuietLibraries(std_logging.Filter):
  """Drops the libraries' INFO chatter (orbax logs every file it writes)."""

  def filter(self, record):
    if record.levelno >= std_logging.WARNING:
      return True
    return not any(f'{os.sep}{lib}{os.sep}' in record.pathname
                   for lib in ('orbax', 'tensorflow_datasets', 'etils', 'jax'))


def _fail(message: str):
  print(f'alexnet_jax: error: {message}', file=sys.stderr)
  sys.exit(2)


def parse_flags(argv):
  """absl flag parsing with one-line errors instead of tracebacks."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    _fail(' '.join(lines[:1] + lines[-1:]) if len(lines) > 1 else lines[0])
  except (AttributeError, KeyError) as e:
    # ml_collections' locked config refuses keys it does not have.
    text = str(e).replace('\\', '')
    found = re.search(r"'(\w+)'", text)
    key = found.group(1) if found else text
    hint = re.search(r'Did you mean "(\w+)"', text)
    given = [a.split('=')[0] for a in argv if a.startswith('--config.')
             and key in a.split('=')[0].split('.')]
    _fail(f'{given[0] if given else key}: unknown config key {key!r}' +
          (f'; did you mean {hint.group(1)!r}?' if hint else
           '; the keys and their meaning are in configs/default.py.'))
  except (TypeError, ValueError) as e:
    _fail(f'bad --config override: {e}; see configs/default.py.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  try:
    config = FLAGS.config
    config.keys()  # Config files load lazily: fail here, in one line.
  except OSError as e:
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    _fail(f'--config: could not load the config file ({lines[-1]}); pass a '
          'path such as configs/digits.py.')
  try:
    if parallel.initialize_distributed(config) and jax.process_index():
      logging.set_verbosity(logging.WARNING)  # Process 0 reports progress.
    train.train_and_evaluate(config, FLAGS.workdir)
  except errors.UserError as e:
    logging.flush()
    _fail(str(e))


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
