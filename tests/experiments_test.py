"""The experiment runner end to end at toy size."""

import json
import os

from tests.conftest import ROOT  # pylint: disable=unused-import


def test_ablations_runner_at_toy_size(digits_dir, tmp_path, monkeypatch):
  from experiments import run  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('TFDS_DATA_DIR', digits_dir)
  out = str(tmp_path / 'results')
  argv = ['ablations', '--small', '--seeds', '2', '--variants',
          'centre_crop_at_test', '--out', out, '--workdir_root',
          str(tmp_path / 'runs')]
  run.main(argv)
  with open(os.path.join(out, 'results.json')) as f:
    results = json.load(f)
  assert results['command'] == 'python -m experiments.run ' + ' '.join(argv)
  names = [v['variant'] for v in results['variants']]
  assert names == ['base', 'centre crop at test']
  assert all(v['n'] == 2 for v in results['variants'])
  # The evaluation-only variant evaluated the base run's checkpoints.
  runs = results['runs']
  assert [r['workdir'] for r in runs['centre_crop_at_test']] == [
      r['workdir'] for r in runs['base']]
  assert runs['base'][0]['top1_err'] != runs['base'][1]['top1_err'] or (
      runs['base'][0]['top5_err'] != runs['base'][1]['top5_err'])
  table = open(os.path.join(out, 'results.md')).read()
  assert 'Toy size' in table and '+1.5 / +1.3 (Section 6' in table
  assert '| centre crop at test |' in table and 'Caveat:' in table
  assert os.path.exists(os.path.join(out, 'results.png'))
  assert sorted(os.listdir(os.path.join(out, 'configs'))) == [
      f'{v}_seed{s}.json' for v in ('base', 'centre_crop_at_test')
      for s in (0, 1)]
  with open(os.path.join(out, 'configs', 'centre_crop_at_test_seed1.json')) as f:
    config = json.load(f)
  assert config['eval_crops'] == 1 and config['seed'] == 1
  # Every variant's overrides are real config keys.
  base = run.EXPERIMENTS["ablations"].base()
  base.lock()  # Unknown keys raise.
  for v in run.EXPERIMENTS['ablations'].variants:
    for key, value in v.overrides.items():
      run._set(base, key, value)  # pylint: disable=protected-access
