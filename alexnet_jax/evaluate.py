"""Evaluates a trained or imported network: top-1 and top-5 error.

  python -m alexnet_jax.evaluate --workdir RUN [--split validation] \
      [--out result.json] [--config.eval_crops=10] [--config.mesh.data=N] ...

RUN is a workdir (its newest checkpoint) or one checkpoint
(RUN/checkpoints/STEP). The checkpoint's own config says the model, the data
and the preprocessing; `--config.KEY=VALUE` changes any of it for this
evaluation (the views, the mesh, the batch, where the data is). The network
sees the split through training's own sharded evaluation step, so the figures
equal the eval lines of the run's metrics.jsonl for the same checkpoint and
settings. Prints one JSON object and, with --out, writes it there. One host.
"""

import json
import os
import sys
from typing import Dict, Optional, Sequence

import jax

from alexnet_jax import cli
from alexnet_jax import errors
from alexnet_jax import input_pipeline
from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import parallel
from alexnet_jax import steps as steps_lib
from alexnet_jax import train
from alexnet_jax import workdir as workdir_lib
from alexnet_jax.datasets import store as store_lib

PROG = 'python -m alexnet_jax.evaluate'


def evaluate_workdir(path: str, overrides: Sequence[str] = (),
                     split: Optional[str] = None) -> Dict:
  """Top-1 / top-5 error and loss of the checkpoint at `path`."""
  workdir, step = workdir_lib.locate(path)
  params, meta = workdir_lib.read_params(workdir, step)
  where = f'checkpoint {step} in {workdir}'
  config = workdir_lib.saved_config(meta, where)
  if overrides:  # '--config.KEY=VALUE' arguments (cli.parse_config).
    config = cli.parse_config(overrides, config=config, prog=PROG)[0]
  split = split or config.eval_split
  train.validate_config(config)
  mesh = parallel.create_mesh(config.mesh.data, config.mesh.model)
  model = model_lib.create_model(config.model)
  tx, _ = optim.create(config, steps_per_epoch=1)
  steps = steps_lib.create(config, model, tx, mesh)
  params = jax.device_put(params, steps.state_sharding.params)
  try:
    data = store_lib.get(config, splits=[split])
  except errors.DataError as e:
    if not meta.get('imported') or overrides:
      raise
    # Imported weights come without their data: say how to give it.
    raise errors.DataError(
        f'{workdir} holds imported weights, and their dataset '
        f'({config.dataset}) is not prepared here; evaluate them on labelled '
        'images with --config.dataset=image_folder --config.data_dir=DIR, '
        'where DIR/val/ holds one folder per class of the network, named as '
        'in classes.json, or prepare the dataset (features and viz need '
        f'none). [{e}]') from e
  eval_split = data.split(split)
  stats_path = os.path.join(workdir, workdir_lib.STATS_FILE)
  if not os.path.exists(stats_path):
    raise errors.UserError(
        f'{stats_path} is missing: the input statistics the network was '
        'trained with; copy it from the training run.')
  stats = jax.device_put(workdir_lib.read_stats(stats_path),
                         parallel.replicated(mesh))
  if eval_split.classes and len(eval_split.classes) != (
      config.model.num_classes):
    raise errors.ConfigError(
        f'the {split} split has {len(eval_split.classes)} classes but the '
        f'network {config.model.num_classes}; evaluate it on its own data.')
  result = train.evaluate(steps, params, eval_split, stats,
                          input_pipeline.Reading.from_config(config),
                          config.eval_crops)
  result.update(workdir=workdir, step=step, split=split,
                crops=config.eval_crops, dataset=config.dataset)
  return result


def main(argv=None):
  overrides, rest = cli.saved_config_overrides(
      sys.argv[1:] if argv is None else argv, PROG)
  parser = cli.ArgumentParser(
      prog=PROG, description=__doc__.split('\n')[0],
      epilog='--config.KEY=VALUE changes the checkpoint\'s config for this '
      'evaluation, e.g. --config.eval_crops=10.')
  parser.add_argument('--workdir', required=True,
                      help='a workdir or one of its checkpoints')
  parser.add_argument('--split', default=None,
                      help="the split (default: the run's eval_split)")
  parser.add_argument('--out', default=None, help='also write the JSON here')
  args = parser.parse_args(rest)
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)
  cli.quiet_libraries()
  try:
    result = evaluate_workdir(args.workdir, overrides, args.split)
  except errors.UserError as e:
    logging.flush()
    cli.fail(str(e), prog=PROG)
  text = json.dumps(result, indent=1, sort_keys=True)
  print(text)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
