"""Ensembles: the softmax of several networks averaged (the paper's "5 CNNs").

  python -m alexnet_jax.ensemble --workdirs runs/a runs/b runs/c \
      [--config.eval_crops=10] [--config.data_dir=DIR]

`--config.KEY=VALUE` changes the first member's config, which names the
data, for this evaluation (as for alexnet_jax.evaluate); `--crops` and
`--data_dir` are the same as `--config.eval_crops` and `--config.data_dir`.

Each member is a workdir or one checkpoint; each sees the evaluation split
through its own preprocessing (its mean image, crop size and, with 10 crops,
the paper's test views averaged), and the members' class probabilities are
averaged. Prints one JSON object: the ensemble's top-1 / top-5 error and each
member's own.
"""

import json
import sys
from typing import Dict, Optional, Sequence

import numpy as np

from alexnet_jax import cli
from alexnet_jax import errors
from alexnet_jax import evaluation
from alexnet_jax import features
from alexnet_jax import input_pipeline
from alexnet_jax.datasets import store as store_lib

PROG = 'alexnet_jax.ensemble'


def evaluate(paths: Sequence[str], crops: Optional[int] = None,
             split: Optional[str] = None, batch_size: int = 128,
             data_dir: Optional[str] = None,
             overrides: Sequence[str] = ()) -> Dict:
  """Top-1 / top-5 error of the averaged softmax of the networks in `paths`."""
  if not paths:
    raise errors.UserError('an ensemble needs at least one --workdirs entry.')
  nets = [features.load(p) for p in paths]
  first = nets[0].config
  for p, net in zip(paths, nets):
    if net.config.model.num_classes != first.model.num_classes:
      raise errors.UserError(
          f'{p} has {net.config.model.num_classes} classes, {paths[0]} '
          f'{first.model.num_classes}: ensemble members must share classes.')
  config = first.copy_and_resolve_references()
  if overrides:
    config, changed = cli.parse_config(overrides, config=config, prog=PROG)
    if crops is None and 'eval_crops' in changed:
      crops = config.eval_crops
  if data_dir:
    config.data_dir = data_dir
  # Host preprocessing at the largest image size any member needs; each
  # member resizes from there exactly as from the original images.
  config.image_size = max(n.config.image_size for n in nets)
  data = store_lib.get(config, splits=[split or config.eval_split])
  member_probs = [[] for _ in nets]
  labels = []
  for batch in input_pipeline.eval_batches(
      data.split(split or config.eval_split),
      input_pipeline.Reading.from_config(config)):
    keep = batch['mask'] > 0
    images = batch['image'][keep]
    labels.append(batch['label'][keep])
    for i, net in enumerate(nets):
      member_probs[i].append(net.extract(images, 'probs', crops=crops,
                                         batch_size=batch_size))
  labels = np.concatenate(labels)
  member_probs = [np.concatenate(p) for p in member_probs]
  out = evaluation.topk_errors(np.mean(member_probs, axis=0), labels)
  out.update(num_examples=int(len(labels)), members=[
      dict(path=p, **evaluation.topk_errors(pr, labels))
      for p, pr in zip(paths, member_probs)])
  return out


def main(argv=None):
  overrides, rest = cli.saved_config_overrides(
      sys.argv[1:] if argv is None else argv, PROG)
  parser = cli.ArgumentParser(
      prog='python -m alexnet_jax.ensemble',
      description='Evaluate the averaged softmax of several networks.',
      epilog='--config.KEY=VALUE changes the first member\'s config (the '
      'data) for this evaluation, e.g. --config.eval_crops=10.')
  parser.add_argument('--workdirs', nargs='+', required=True)
  parser.add_argument('--crops', type=int, default=None, choices=(1, 10),
                      help="views per image (default: each run's eval_crops)")
  parser.add_argument('--split', default=None,
                      help="evaluation split (default: the first run's)")
  parser.add_argument('--data_dir', default=None,
                      help='tfds data dir, when not where the runs had it')
  args = parser.parse_args(rest)
  try:
    result = evaluate(args.workdirs, args.crops, args.split,
                      data_dir=args.data_dir, overrides=overrides)
  except errors.UserError as e:
    return cli.error(str(e), prog=PROG)
  print(json.dumps(result))
  return 0


if __name__ == '__main__':
  sys.exit(main())
