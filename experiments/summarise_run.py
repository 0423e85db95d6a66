"""One training run's results, as committed under experiments/results/NAME/.

  python -m experiments.summarise_run --workdir RUN --out experiments/results/imagenette \
      [--label main] [--runs LABEL=OTHER_RUN ...]
  python -m experiments.summarise_run --add LABEL=RUN --out experiments/results/imagenette

Reads RUN/metrics.jsonl and RUN's newest checkpoint and writes into --out:
results.json (the last centre-crop and 10-crop evaluations, epochs, wall
time and img/s, conv1's colour index per tower, and a `runs` list with the
same figures for every run given), results.md (the same as a table),
curves.png (viz.curves), conv1_kernels.png and colour_index.json (viz,
Figure 3), and metrics.jsonl and config.json copied from each run. Nothing
here shows a dataset photo: Figure 4 is drawn by the command in command.txt.

`--add` puts one more run (another seed) into an existing --out without the
main run's workdir: its figures join (or replace, by label) the `runs` list,
with its own conv1 colour index, and its kernels go to LABEL_conv1_kernels.png
and LABEL_colour_index.json; the main run's figures stay as they were.

The last evaluation is the final checkpoint's; an evaluation with 10 crops
comes from rerunning the finished workdir with --config.eval_crops=10 (the
loop then only evaluates).
"""

import json
import os
import shutil
import sys
from typing import Dict, List

from alexnet_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _records(workdir: str) -> List[Dict]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]


def summary(workdir: str) -> Dict:
  """The run's figures from its metrics.jsonl and config.json."""
  records = _records(workdir)
  with open(os.path.join(workdir, 'config.json')) as f:
    config = json.load(f)
  train = [r for r in records if r['split'] == 'train']
  evals = [r for r in records if r['split'] == 'eval']
  # Evaluations record their crops (records from before they did: the
  # run's eval_crops).
  for r in evals:
    r.setdefault('crops', config['eval_crops'])
  last_step = train[-1]['step'] if train else 0
  centre = [r for r in evals if r['crops'] == 1]
  ten = [r for r in evals if r['crops'] == 10 and r['step'] == last_step]
  out = {
      'workdir': os.path.abspath(workdir),
      'epochs': train[-1]['epoch'] if train else 0.0,
      'steps': last_step,
      'train_seconds': sum(config['batch_size'] * 1.0 / r['img_per_sec'] *
                           _window(train, i) for i, r in enumerate(train)),
      'train_img_per_sec_median': _median([r['img_per_sec'] for r in train]),
      'final_train_loss': train[-1]['loss'] if train else None,
      'model.init': config['model']['init'],
      'evals': [{k: r[k] for k in ('step', 'epoch', 'crops', 'top1_err',
                                   'top5_err', 'loss', 'img_per_sec',
                                   'num_examples')} for r in evals],
  }
  final = [r for r in centre if r['step'] == last_step]
  if final:
    out['val_top1_err_centre'] = final[-1]['top1_err']
    out['val_top5_err_centre'] = final[-1]['top5_err']
  if ten:
    out['val_top1_err_10crop'] = ten[-1]['top1_err']
    out['val_top5_err_10crop'] = ten[-1]['top5_err']
  if centre:
    best = min(centre, key=lambda r: r['top1_err'])
    out['best_val_top1_err_centre_selected_on_val'] = best['top1_err']
    out['best_epoch_selected_on_val'] = best['epoch']
  return out


def _window(train, i):
  """Steps in train record i's window."""
  return train[i]['step'] - (train[i - 1]['step'] if i else 0)


def _median(values):
  values = sorted(values)
  return values[len(values) // 2] if values else None


def _pct(x):
  return '-' if x is None else f'{100 * x:.2f}%'


def markdown(name: str, results: Dict) -> str:
  lines = [f'# {name}', '',
           '| run | init | epochs | centre top-1 err | centre top-5 err | '
           '10-crop top-1 err | 10-crop top-5 err | train img/s (median) | '
           'training time |', '|---|---|---|---|---|---|---|---|---|']
  for run in results['runs']:
    lines.append(
        f"| {run['label']} | {run['model.init']} | {run['epochs']:.2f} | "
        f"{_pct(run.get('val_top1_err_centre'))} | "
        f"{_pct(run.get('val_top5_err_centre'))} | "
        f"{_pct(run.get('val_top1_err_10crop'))} | "
        f"{_pct(run.get('val_top5_err_10crop'))} | "
        f"{run['train_img_per_sec_median'] or 0:.1f} | "
        f"{run['train_seconds'] / 3600:.2f} h |")
  for label, index in [(results['runs'][0]['label'],
                        results.get('colour_index'))] + [
      (run['label'], run.get('colour_index')) for run in results['runs'][1:]]:
    if index:
      lines += ['', f'{label}: conv1 colour index (0 grey, 1 no grey; median '
                'and quartiles per tower): ' + '; '.join(
                    f"{t} {index[t]['median']:.3f} ({index[t]['q1']:.3f}-"
                    f"{index[t]['q3']:.3f})" for t in ('tower1', 'tower2')
                    if t in index) +
                f". Shows the paper's split (one median at least twice the "
                f"other): {index.get('shows_it')}."]
  lines += ['', 'Training time is the training windows\' own time (the '
            'sum of their steps over their img/s): evaluations, checkpoints, '
            'restarts and compilation left out.']
  lines += ['', 'Every evaluation of the main run:', '',
            '| epoch | crops | top-1 err | top-5 err |', '|---|---|---|---|']
  for r in results['runs'][0]['evals']:
    lines.append(f"| {r['epoch']:.2f} | {r['crops']} | "
                 f"{_pct(r['top1_err'])} | {_pct(r['top5_err'])} |")
  return '\n'.join(lines) + '\n'


def _colour_index(workdir: str, kernels_png: str, index_json: str) -> Dict:
  """Figure 3 of the run's newest checkpoint: conv1's kernels drawn, and
  the colour index per tower (its summary returned, every value saved)."""
  from alexnet_jax import features  # pylint: disable=g-import-not-at-top
  from alexnet_jax import viz  # pylint: disable=g-import-not-at-top
  net = features.load(workdir)
  viz.conv1_kernels(net.params, kernels_png)
  index = viz.colour_indices(net.params)
  with open(index_json, 'w') as f:
    json.dump(index, f, indent=1)
  out = {t: {k: v for k, v in index[t].items() if k != 'values'}
         for t in ('tower1', 'tower2') if t in index}
  out.update({k: index[k] for k in ('ratio', 'shows_it') if k in index})
  return out


def _write(out: str, results: Dict):
  with open(os.path.join(out, 'results.json'), 'w') as f:
    json.dump(results, f, indent=1)
  with open(os.path.join(out, 'results.md'), 'w') as f:
    f.write(markdown(os.path.basename(out.rstrip('/')), results))


def add(out: str, label: str, workdir: str) -> Dict:
  """One more run into the results already in `out` (see the docstring)."""
  with open(os.path.join(out, 'results.json')) as f:
    results = json.load(f)
  if label == results['runs'][0]['label']:
    raise ValueError(f'{label!r} is the main run\'s label: rewrite the main '
                     'run with --workdir, or --add under another label.')
  run = dict(summary(workdir), label=label)
  run['colour_index'] = _colour_index(
      workdir, os.path.join(out, f'{label}_conv1_kernels.png'),
      os.path.join(out, f'{label}_colour_index.json'))
  for name in ('metrics.jsonl', 'config.json'):
    shutil.copy(os.path.join(workdir, name),
                os.path.join(out, f'{label}_{name}'))
  runs = [r for r in results['runs'] if r['label'] != label]
  results['runs'] = runs + [run]
  _write(out, results)
  return results


def main(argv=None):
  parser = cli.ArgumentParser(prog='python -m experiments.summarise_run')
  parser.add_argument('--workdir')
  parser.add_argument('--out', required=True)
  parser.add_argument('--label', default='main')
  parser.add_argument('--runs', nargs='*', default=[],
                      help='other runs, as LABEL=WORKDIR')
  parser.add_argument('--add', help='one more run into an existing --out, '
                      'as LABEL=WORKDIR')
  args = parser.parse_args(argv)
  sys.path.insert(0, ROOT)
  if args.add:
    if '=' not in args.add or not os.path.exists(
        os.path.join(args.out, 'results.json')):
      parser.error('--add LABEL=WORKDIR adds to an --out that holds a '
                   'results.json; write one first with --workdir.')
    label, workdir = args.add.split('=', 1)
    try:
      add(args.out, label, workdir)
    except ValueError as e:
      parser.error(str(e))
    print(f'added {label} to {args.out}: results.json, results.md, '
          f'{label}_conv1_kernels.png, {label}_colour_index.json')
    return 0
  if not args.workdir:
    parser.error('give --workdir RUN (or --add LABEL=RUN).')
  from alexnet_jax import viz  # pylint: disable=g-import-not-at-top
  os.makedirs(args.out, exist_ok=True)
  runs = [(args.label, args.workdir)] + [tuple(r.split('=', 1))
                                         for r in args.runs]
  results = {'runs': []}
  for label, workdir in runs:
    run = dict(summary(workdir), label=label)
    results['runs'].append(run)
    for name in ('metrics.jsonl', 'config.json'):
      shutil.copy(os.path.join(workdir, name),
                  os.path.join(args.out, f'{label}_{name}'))
  main_run = results['runs'][0]
  for key in ('val_top1_err_centre', 'val_top5_err_centre',
              'val_top1_err_10crop', 'val_top5_err_10crop', 'epochs'):
    results[key] = main_run.get(key)
  results['colour_index'] = _colour_index(
      args.workdir, os.path.join(args.out, 'conv1_kernels.png'),
      os.path.join(args.out, 'colour_index.json'))
  viz.curves(os.path.join(args.workdir, 'metrics.jsonl'),
             os.path.join(args.out, 'curves.png'))
  _write(args.out, results)
  print(f'wrote {args.out}: results.json, results.md, curves.png, '
        'conv1_kernels.png, colour_index.json')
  return 0


if __name__ == '__main__':
  sys.exit(main())
