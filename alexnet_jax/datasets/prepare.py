"""One-time preparation of a dataset: tfds records, the store, statistics.

  python -m alexnet_jax.datasets.prepare --config configs/ilsvrc2012.py \
      --config.manual_dir=/path/to/ilsvrc_tars [--config.data_dir=DIR] \
      [--config.store.format=raw|jpeg] [--config.store.dir=DIR]

1. For a tfds dataset, tfds converts the source files into its records
   under `config.data_dir` (tfds' default, ~/tensorflow_datasets, when
   unset), with progress bars. An image folder needs no such step: it is
   only read.
2. Every image of the train and eval splits is decoded and preprocessed once
   (RGB, shorter side to `image_size`, centre crop) into the store
   (`alexnet_jax.datasets.store`, under `store.dir` or the tfds data dir):
   it prints the size it will take and the free disk first, and writes each
   split atomically.
3. The training split's mean image and RGB eigenpairs are computed in one
   pass over the store and cached in it (`alexnet_jax.datasets.stats`).

Training does all three on first use too; running this first keeps the long
ImageNet conversion (hours) out of a training job. Rerunning it is cheap: it
checks what exists and writes only splits that are missing, damaged or
whose image folder changed (a
training run stops on a damaged split instead, naming this command).
"""


import functools

from absl import app
from absl import flags
from ml_collections import config_flags

from alexnet_jax import cli
from alexnet_jax import errors

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a config file.')
flags.mark_flags_as_required(['config'])


def main(argv):
  del argv
  from alexnet_jax.datasets import stats as stats_lib  # pylint: disable=g-import-not-at-top
  from alexnet_jax.datasets import store as store_lib  # pylint: disable=g-import-not-at-top
  config = FLAGS.config
  try:
    store = store_lib.get(config, repair=True)
    for name in (config.train_split, config.eval_split):
      split = store.split(name)
      print(f'{config.dataset} {name}: {len(split):,} examples in '
            f'{split.path} ({split.format}, {split.bytes_per_image:,.0f} '
            'bytes per image)')
    stats = stats_lib.load_or_compute(store, config.train_split)
  except errors.UserError as e:
    cli.fail(str(e), prog='alexnet_jax.datasets.prepare')
  print(f'statistics: {store.stats_path(config.train_split)} (mean RGB '
        f'{stats["mean"].mean((0, 1)).round(1).tolist()}, RGB eigenvalues '
        f'{stats["eigvals"].round(5).tolist()})')


if __name__ == '__main__':
  app.run(main, flags_parser=functools.partial(
      cli.parse_flags, prog='alexnet_jax.datasets.prepare'))
