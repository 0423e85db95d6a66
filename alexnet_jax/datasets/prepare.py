"""One-time preparation of a dataset: tfds records, then its statistics.

  python -m alexnet_jax.datasets.prepare --config configs/ilsvrc2012.py \
      --config.manual_dir=/path/to/ilsvrc_tars [--config.data_dir=DIR]

tfds converts the source files into its record format under
`config.data_dir` (tfds' default, ~/tensorflow_datasets, when unset), with
progress bars; then the training split's mean image and RGB eigenpairs are
computed in one streamed pass and cached beside it
(`alexnet_jax.datasets.stats`). Training does both on first use too; running
this first keeps the long ImageNet conversion (hours) out of a training job.
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from alexnet_jax import errors

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a config file.')
flags.mark_flags_as_required(['config'])


def main(argv):
  del argv
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from alexnet_jax.datasets import stats as stats_lib  # pylint: disable=g-import-not-at-top
  config = FLAGS.config
  try:
    builder = input_pipeline.get_builder(config)
  except errors.UserError as e:
    print(f'alexnet_jax: error: {e}', file=sys.stderr)
    sys.exit(2)
  for split, info in builder.info.splits.items():
    print(f'{builder.name} {split}: {info.num_examples:,} examples')
  stats = stats_lib.load_or_compute(builder, config)
  print(f'statistics: {stats_lib.stats_path(builder, config)} (mean RGB '
        f'{stats["mean"].mean((0, 1)).round(1).tolist()}, RGB eigenvalues '
        f'{stats["eigvals"].round(5).tolist()})')


if __name__ == '__main__':
  app.run(main)
