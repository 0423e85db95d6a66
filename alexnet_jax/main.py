"""Command line entry point.

  python -m alexnet_jax.main --config configs/digits.py --workdir runs/digits

Any config field can be overridden: --config.batch_size=64. All logic lives in
`alexnet_jax.train.train_and_evaluate`, importable from a notebook.
"""

import logging as std_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from alexnet_jax import errors
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
                   for lib in ('orbax', 'tensorflow_datasets', 'etils', 'clu',
                               'jax'))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except errors.UserError as e:
    logging.flush()
    print(f'alexnet_jax: error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
