"""Command line entry point.

  python -m alexnet_jax.main --config configs/digits.py --workdir runs/digits

Any config field can be overridden: --config.batch_size=64. All logic lives in
`alexnet_jax.train.train_and_evaluate`, importable from a notebook.

Exit status: 0 finished, 2 bad input (one line), 75 stopped by SIGTERM/SIGINT
after saving a checkpoint (rerun the same command to resume), other non-zero
a failure.
"""

import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from alexnet_jax import cli
from alexnet_jax import errors
from alexnet_jax import parallel
from alexnet_jax import preemption
from alexnet_jax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file, e.g. configs/digits.py.',
    lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints and metrics.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.quiet_libraries()
  config = cli.loaded_config(FLAGS)
  try:
    joined = parallel.initialize_distributed(config.get('distributed'))
    if joined and jax.process_index():
      logging.set_verbosity(logging.WARNING)  # Process 0 reports progress.
    result = train.train_and_evaluate(config, FLAGS.workdir)
  except errors.UserError as e:
    logging.flush()
    cli.fail(str(e))
  if 'stopped_by' in result:  # Checkpointed on a signal: resumable.
    logging.flush()
    sys.exit(preemption.EXIT_PREEMPTED)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
