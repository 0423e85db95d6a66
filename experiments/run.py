"""Runs one of the paper's experiments and writes its table and plot.

  python -m experiments.run ablations [--seeds 3] [--variants a,b] [--small]

Each experiment is a base config and named variants (config overrides), run
over seeds. Results go to experiments/results/NAME/ (or --out): results.md (the
table: mean and standard deviation over seeds, our deltas beside the paper's),
results.json, a plot, command.txt (the exact command and the git commit) and
configs/ (every resolved config). Runs live under --workdir_root and are
resumed, not repeated, when the command is run again.

--small shrinks everything to toy size (tiny images and widths, a few steps):
for tests of the runner, not for results.
"""

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Variant:
  name: str
  overrides: Dict[str, object] = dataclasses.field(default_factory=dict)
  # The paper's reported effect (top-1, top-5 error points) of this change.
  paper_delta: Optional[Tuple[Optional[float], Optional[float]]] = None
  # Evaluation-only: evaluate the base variant's checkpoints with these
  # overrides instead of training again.
  eval_only: bool = False

  @property
  def slug(self) -> str:
    return re.sub(r'[^a-z0-9]+', '_', self.name.lower()).strip('_')


@dataclasses.dataclass(frozen=True)
class Experiment:
  description: str
  base: Callable[[], object]
  variants: Sequence[Variant]
  caveat: str = ''


def _ablation_base():
  from configs import digits  # pylint: disable=g-import-not-at-top
  config = digits.get_config()
  # The paper's training and test protocol on top of the digits recipe.
  config.augment.pca_lighting = 0.1
  config.eval_crops = 10
  return config


EXPERIMENTS = {
    'ablations': Experiment(
        description=(
            "The paper's ablations (Sections 3.3-3.5, 4.1, 4.2), each one "
            'change to one base config: configs/digits.py with PCA lighting '
            '(0.1) and 10-crop testing, as in the paper.'),
        base=_ablation_base,
        variants=(
            Variant('base'),
            Variant('no LRN', {'model.lrn.enabled': False}, (1.4, 1.2)),
            Variant('2x2 pooling (not overlapping)',
                    {'model.pool_window': 2, 'model.pool_stride': 2},
                    (0.4, 0.3)),
            Variant('one tower, half the kernels',
                    {'model.layout': 'one_tower_half'}, (1.7, 1.2)),
            Variant('no PCA lighting', {'augment.pca_lighting': 0.0},
                    (1.0, None)),
            Variant('no dropout', {'model.dropout_rate': 0.0}),
            Variant('centre crop at test', {'eval_crops': 1}, (1.5, 1.3),
                    eval_only=True),
        ),
        caveat=(
            'Digits are 8x8 greyscale images upsampled, 1,438 for training: '
            'PCA lighting is only a brightness jitter on grey images, '
            '10-crop testing includes mirror images (a mirrored digit is '
            'another symbol), and a network this size barely overfits 1,438 '
            'images in 20 epochs. Expect these small-scale deltas to differ '
            "from the paper's ImageNet ones, in size and sometimes in sign.")),
}

PAPER_NOTE = {
    (1.4, 1.2): 'Section 3.3',
    (0.4, 0.3): 'Section 3.4',
    (1.7, 1.2): 'Section 3.5 (one GPU, half the kernels)',
    (1.0, None): 'Section 4.1: "over 1%" top-1',
    (1.5, 1.3): 'Section 6: 39.0 / 18.3 vs 37.5 / 17.0 (ILSVRC-2010)',
}


def _set(config, key: str, value):
  *parents, name = key.split('.')
  node = config
  for p in parents:
    node = node[p]
  node[name] = value


def shrink(config, steps: int = 6):
  """Toy size: for tests of the runner, not for results."""
  config.image_size, config.model.input_size = 72, 64
  config.model.width, config.model.fc_features = 1 / 16, 256
  config.batch_size, config.eval_batch_size = 16, 40
  config.num_train_steps = steps
  config.log_every_steps = config.checkpoint_every_steps = steps
  config.mesh.data = config.mesh.model = 1
  return config


def _commit() -> str:
  try:
    sha = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=ROOT, text=True,
                         capture_output=True, check=True).stdout.strip()
    # The code that ran; the results being written are not part of it.
    dirty = subprocess.run(['git', 'status', '--porcelain', '--',
                            'alexnet_jax', 'configs', 'experiments',
                            ':!experiments/results'],
                           cwd=ROOT, text=True, capture_output=True,
                           check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return 'unknown (not a git checkout)'
  return sha + (' (with uncommitted changes)' if dirty else '')


def run_experiment(name: str, seeds: int = 3, variants: Optional[List[str]] = None,
                   out: Optional[str] = None, workdir_root: str = 'runs/experiments',
                   small: bool = False, argv: Sequence[str] = ()) -> Dict:
  """Runs (or resumes) every variant x seed; writes the results directory."""
  from alexnet_jax import train  # pylint: disable=g-import-not-at-top
  if name not in EXPERIMENTS:
    raise SystemExit(f'experiments.run: error: unknown experiment {name!r}; '
                     f'choose from {sorted(EXPERIMENTS)}.')
  exp = EXPERIMENTS[name]
  chosen = list(exp.variants)
  if variants:
    by_slug = {v.slug: v for v in exp.variants}
    unknown = [v for v in variants if v not in by_slug]
    if unknown:
      raise SystemExit(f'experiments.run: error: unknown variant(s) {unknown}; '
                       f'choose from {sorted(by_slug)}.')
    chosen = [v for v in exp.variants if v.slug in variants or v.slug == 'base']
  out = out or os.path.join(ROOT, 'experiments', 'results', name)
  os.makedirs(os.path.join(out, 'configs'), exist_ok=True)
  rows = {v.slug: [] for v in chosen}
  start = time.time()
  for seed in range(seeds):
    for v in chosen:
      config = exp.base()
      if small:
        shrink(config)
      config.seed = seed
      for key, value in v.overrides.items():
        _set(config, key, value)
      source = v.slug if not v.eval_only else 'base'
      workdir = os.path.join(workdir_root, name, source, f'seed{seed}')
      print(f'[{name}] {v.name}, seed {seed} -> {workdir}', flush=True)
      result = train.train_and_evaluate(config, workdir)
      rows[v.slug].append({'seed': seed, 'top1_err': result['top1_err'],
                           'top5_err': result['top5_err'],
                           'workdir': workdir})
      with open(os.path.join(out, 'configs', f'{v.slug}_seed{seed}.json'),
                'w') as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  summary = _summarise(chosen, rows)
  command = 'python -m experiments.run ' + ' '.join(argv or [name])
  with open(os.path.join(out, 'results.json'), 'w') as f:
    json.dump({'experiment': name, 'command': command, 'commit': _commit(),
               'seeds': seeds, 'small': small, 'variants': summary,
               'runs': rows}, f, indent=1)
  with open(os.path.join(out, 'command.txt'), 'w') as f:
    f.write(f'{command}\n# commit {_commit()}\n# this invocation: '
            f'{time.time() - start:.0f} s (runs finished earlier are reused, '
            'not trained again)\n')
  with open(os.path.join(out, 'results.md'), 'w') as f:
    f.write(_markdown(name, exp, summary, command, seeds, small))
  _plot(summary, os.path.join(out, 'results.png'), name)
  print(f'[{name}] wrote {out}/results.md')
  return summary


def _summarise(chosen, rows):
  base = rows['base']
  out = []
  for v in chosen:
    r = rows[v.slug]
    top1 = np.array([x['top1_err'] for x in r]) * 100
    top5 = np.array([x['top5_err'] for x in r]) * 100
    b1 = np.array([x['top1_err'] for x in base]) * 100
    b5 = np.array([x['top5_err'] for x in base]) * 100
    out.append({
        'variant': v.name, 'slug': v.slug, 'n': len(r),
        'top1_err': float(top1.mean()), 'top1_std': float(top1.std(ddof=1))
                                                   if len(r) > 1 else 0.0,
        'top5_err': float(top5.mean()), 'top5_std': float(top5.std(ddof=1))
                                                   if len(r) > 1 else 0.0,
        # The ablation's cost: how much worse without the paper's choice.
        'delta_top1': float((top1 - b1).mean()),
        'delta_top1_std': float((top1 - b1).std(ddof=1)) if len(r) > 1 else 0.0,
        'delta_top5': float((top5 - b5).mean()),
        'paper_delta': v.paper_delta,
        'paper_source': PAPER_NOTE.get(v.paper_delta, ''),
    })
  return out


def _fmt(x):
  return '—' if x is None else f'+{x:.1f}' if x >= 0 else f'{x:.1f}'


def _markdown(name, exp, summary, command, seeds, small):
  lines = [f'# {name}', '', exp.description, '',
           f'Command: `{command}` (commit {_commit()}); {seeds} seed(s) per '
           'variant; errors in % on the validation split, mean ± standard '
           'deviation over seeds; Δ = variant minus base, paired by seed '
           '(positive: the paper\'s choice helps).', '']
  if small:
    lines += ['**Toy size (--small): these numbers test the runner and mean '
              'nothing.**', '']
  lines += ['| variant | top-1 err | top-5 err | Δ top-1 (ours) | Δ top-5 '
            '(ours) | Δ top-1 / top-5 (paper, ImageNet) |',
            '|---|---|---|---|---|---|']
  for s in summary:
    paper = ('' if s['paper_delta'] is None else
             f"{_fmt(s['paper_delta'][0])} / {_fmt(s['paper_delta'][1])} "
             f"({s['paper_source']})")
    ours = (['', ''] if s['slug'] == 'base' else
            [f"{_fmt(s['delta_top1'])} ± {s['delta_top1_std']:.2f}",
             _fmt(s['delta_top5'])])
    cells = [s['variant'], f"{s['top1_err']:.2f} ± {s['top1_std']:.2f}",
             f"{s['top5_err']:.2f} ± {s['top5_std']:.2f}"] + ours + [paper]
    lines.append('| ' + ' | '.join(cells) + ' |')
  if exp.caveat:
    lines += ['', f'Caveat: {exp.caveat}']
  return '\n'.join(lines) + '\n'


def _plot(summary, path, name):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(1.2 * len(summary) + 2, 3.5))
  x = np.arange(len(summary))
  ax.bar(x, [s['top1_err'] for s in summary],
         yerr=[s['top1_std'] for s in summary], capsize=4)
  ax.set_xticks(x)
  ax.set_xticklabels([s['variant'] for s in summary], rotation=30,
                     ha='right', fontsize=8)
  ax.set_ylabel('top-1 validation error (%)')
  ax.set_title(name)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(prog='python -m experiments.run',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('name', help=f'one of {sorted(EXPERIMENTS)}')
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--variants', default='',
                      help='comma-separated variant slugs (base always runs)')
  parser.add_argument('--out', default=None,
                      help='results directory (default experiments/results/NAME)')
  parser.add_argument('--workdir_root', default='runs/experiments')
  parser.add_argument('--small', action='store_true',
                      help='toy size, for tests of the runner')
  args = parser.parse_args(argv)
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  run_experiment(args.name, args.seeds,
                 [v for v in args.variants.split(',') if v] or None, args.out,
                 args.workdir_root, args.small, argv)


if __name__ == '__main__':
  main()
