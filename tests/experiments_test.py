"""The experiment runner end to end at toy size."""

import json
import os

import pytest

from alexnet_jax import cpu_kernels
from tests.helpers import ROOT
from tests.helpers import tiny_config


@pytest.mark.slow
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
  # Each row names the code that trained it, and the table says so.
  assert all(r['commit'] for rs in runs.values() for r in rs)
  assert runs['base'][0]['top1_err'] != runs['base'][1]['top1_err'] or (
      runs['base'][0]['top5_err'] != runs['base'][1]['top5_err'])
  table = open(os.path.join(out, 'results.md')).read()
  assert 'Toy size' in table and '+1.5 / +1.3 (Section 6' in table
  assert '| centre crop at test |' in table and 'Caveat:' in table
  assert 'runs trained at: ' in table and 'base seed 1' in table
  # command.txt names the machine that trained each run.
  assert all('jax ' in r['machine'] for rs in runs.values() for r in rs)
  command_txt = open(os.path.join(out, 'command.txt')).read()
  assert f"# runs trained on: {runs['base'][0]['machine']}: base seed 0" in (
      command_txt)
  assert os.path.exists(os.path.join(out, 'results.png'))
  assert sorted(os.listdir(os.path.join(out, 'configs'))) == [
      f'{v}_seed{s}.json' for v in ('base', 'centre_crop_at_test')
      for s in (0, 1)]
  # Each trained run's metrics outlive its workdir; the evaluation-only
  # variant trained nothing of its own.
  assert sorted(os.listdir(os.path.join(out, 'metrics'))) == [
      'base_seed0.jsonl', 'base_seed1.jsonl']
  with open(os.path.join(out, 'metrics', 'base_seed1.jsonl')) as f:
    assert f.read() == open(os.path.join(
        runs['base'][1]['workdir'], 'metrics.jsonl')).read()
  with open(os.path.join(out, 'configs', 'centre_crop_at_test_seed1.json')) as f:
    config = json.load(f)
  assert config['eval_crops'] == 1 and config['seed'] == 1
  # Every variant's overrides are real config keys.
  base = run.EXPERIMENTS["ablations"].base()
  base.lock()  # Unknown keys raise.
  for v in run.EXPERIMENTS['ablations'].variants:
    base.update_from_flattened_dict(dict(v.overrides))


@pytest.mark.slow
def test_figure1_runner_at_toy_size(digits_dir, tmp_path, monkeypatch):
  from experiments import run  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('TFDS_DATA_DIR', digits_dir)
  out = str(tmp_path / 'results')
  argv = ['figure1', '--small', '--seeds', '2', '--variants',
          'relu_lr_0_005,tanh_lr_0_01', '--out', out, '--workdir_root',
          str(tmp_path / 'runs')]
  run.main(argv)
  with open(os.path.join(out, 'results.json')) as f:
    results = json.load(f)
  variants = {v['slug']: v for v in results['variants']}
  assert sorted(variants) == ['relu_lr_0_005', 'tanh_lr_0_01']
  for slug, v in variants.items():
    runs = results['runs'][slug]
    assert len(runs) == 2 and v['group'] == slug.split('_')[0]
    # One training record per step at toy size (log_every_steps=1).
    for r in runs:
      assert [c[1] for c in r['train_curve']] == [1, 2, 3, 4, 5, 6]
    # The summary's epochs to target agree with the curves it came from.
    hits = [run.first_reaching(r['train_curve'], 0.05) for r in runs]
    reached = [h[0] for h in hits if h is not None]
    assert v['reached'] == len(reached)
    if reached:
      assert abs(v['epochs_to_target'] - sum(reached) / len(reached)) < 1e-9
    assert len(v['curve']) == 6
  with open(os.path.join(out, 'configs', 'tanh_lr_0_01_seed1.json')) as f:
    config = json.load(f)
  assert config['model']['arch'] == 'four_layer_cnn'
  assert config['model']['activation'] == 'tanh'
  assert config['weight_decay'] == 0 and config['model']['dropout_rate'] == 0
  table = open(os.path.join(out, 'results.md')).read()
  assert 'Toy size' in table and 'Figure 1 (CIFAR-10)' in table
  assert '| relu, lr 0.005' in table or '| **relu, lr 0.005**' in table
  assert os.path.exists(os.path.join(out, 'results.png'))


def _two_seeds(curve):
  """Two seeds' runner rows with the same training curve."""
  return [{'train_curve': curve, 'top1_err': 0.1, 'top5_err': 0.0,
           'seed': seed} for seed in (0, 1)]


def test_first_reaching_and_fastest():
  from experiments import run  # pylint: disable=g-import-not-at-top
  curve = [(1.0, 11, 0.6), (2.0, 22, 0.3), (3.0, 33, 0.2), (4.0, 44, 0.1)]
  assert run.first_reaching(curve, 0.25) == (3.0, 33)
  assert run.first_reaching(curve, 0.3) == (2.0, 22)
  assert run.first_reaching(curve, 0.05) is None
  slow = [(e, s, err + 0.15) for e, s, err in curve]
  variants = [run.Variant('a', {'learning_rate': 0.1}, group='relu'),
              run.Variant('b', {'learning_rate': 0.2}, group='relu'),
              run.Variant('c', {'learning_rate': 0.1}, group='tanh')]
  rows = {'a': _two_seeds(slow), 'b': _two_seeds(curve),
          'c': _two_seeds(slow)}
  summary = run._summarise_speed(variants, rows, 0.25)  # pylint: disable=protected-access
  by = {s['slug']: s for s in summary}
  assert by['a']['epochs_to_target'] == 4.0 and by['b']['epochs_to_target'] == 3.0
  assert by['b']['fastest_in_group'] and not by['a']['fastest_in_group']
  assert by['c']['fastest_in_group']
  # A variant that never reaches the target is never the fastest.
  rows['c'] = _two_seeds([(1.0, 11, 0.9)])
  summary = run._summarise_speed(variants, rows, 0.25)  # pylint: disable=protected-access
  assert not any(s['fastest_in_group'] for s in summary if s['group'] == 'tanh')


def test_speed_headline_says_which_activation_is_faster():
  from experiments import run  # pylint: disable=g-import-not-at-top
  fast = [(1.0, 11, 0.6), (2.0, 22, 0.2)]
  slow = [(1.0, 11, 0.6), (2.0, 22, 0.4), (3.0, 33, 0.2), (4.0, 44, 0.1)]
  slower = [(1.0, 11, 0.6), (2.0, 22, 0.5), (3.0, 33, 0.4), (4.0, 44, 0.2)]
  variants = [run.Variant('relu, lr 0.1', {'learning_rate': 0.1}, group='relu'),
              run.Variant('relu, lr 0.2', {'learning_rate': 0.2}, group='relu'),
              run.Variant('relu, lr 0.4', {'learning_rate': 0.4}, group='relu'),
              run.Variant('tanh, lr 0.1', {'learning_rate': 0.1}, group='tanh'),
              run.Variant('tanh, lr 0.3', {'learning_rate': 0.3}, group='tanh')]
  exp = run.TrainingSpeed('d', config_file='', variants=variants,
                          target_train_err=0.25)
  def headline(rows):
    summary = run._summarise_speed(variants, rows, 0.25)  # pylint: disable=protected-access
    return run._markdown_speed('d', exp, summary, 'cmd', 2, False)  # pylint: disable=protected-access
  # ReLU's fastest is mid-grid, tanh's the largest rate tried.
  text = headline({'relu_lr_0_1': _two_seeds(slow),
                   'relu_lr_0_2': _two_seeds(fast),
                   'relu_lr_0_4': _two_seeds(slow),
                   'tanh_lr_0_1': _two_seeds(slower),
                   'tanh_lr_0_3': _two_seeds(slow)})
  assert '1.5x faster with ReLU' in text
  assert 'lr 0.3 is the largest rate tried for tanh' in text
  assert 'rate tried for relu' not in text
  text = headline({'relu_lr_0_1': _two_seeds(slow),
                   'relu_lr_0_2': _two_seeds(slow),
                   'relu_lr_0_4': _two_seeds(slow),
                   'tanh_lr_0_1': _two_seeds(fast),
                   'tanh_lr_0_3': _two_seeds(slow)})
  assert "1.5x faster with tanh (the paper's ReLU advantage" in text
  assert 'lr 0.1 is the smallest rate tried for relu' in text


def test_documented_experiment_commands_name_real_experiments():
  import glob  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  from experiments import run  # pylint: disable=g-import-not-at-top
  named = set()
  for path in [os.path.join(ROOT, 'README.md')] + glob.glob(
      os.path.join(ROOT, 'configs', '*.py')):
    named |= set(re.findall(r'python -m experiments\.run ([a-z]\w*)',
                            open(path).read()))
  assert {'figure1', 'figure1_cifar10', 'ablations'} <= named
  assert named <= set(run.EXPERIMENTS), named - set(run.EXPERIMENTS)
  for exp in run.EXPERIMENTS.values():  # Every override is a real key.
    base = exp.base()
    base.lock()
    for v in exp.variants:
      base.update_from_flattened_dict(dict(v.overrides))


def test_conv_layers_times_ours_xla_and_torch():
  # In-process at batch 2: every implementation of each layer computed and
  # timed, PyTorch's where it is installed (the full figures: batch 128).
  from experiments import conv_layers  # pylint: disable=g-import-not-at-top
  have_torch = True
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    have_torch = False
  for name in ('conv1', 'conv4'):
    row = conv_layers.measure(name, batch=2, repeats=1, with_torch=have_torch)
    impls = ('ours', 'xla') + (('torch',) if have_torch else ())
    for impl in impls:
      assert row[f'{impl}_fwd_ms'] > 0 and row[f'{impl}_fwd_bwd_ms'] > 0, row
    assert ('torch_fwd_ms' in row) == have_torch
  # conv4 at batch 2: 2 x 13^2 outputs x 192 x 192 x 9 multiply-adds.
  assert row['forward_gflop'] == pytest.approx(2 * 2 * 169 * 192 * 192 * 9 / 1e9)


def test_conv_layers_refuses_an_unknown_layer(monkeypatch, capsys):
  from experiments import conv_layers  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr('sys.argv', ['conv_layers', '--layers', 'conv9'])
  with pytest.raises(SystemExit, match="unknown layers \\['conv9'\\]"):
    conv_layers.main()


def test_winograd_step_times_both_builds(capsys):
  # Both builds of the toy step, timed in turn (at toy width both are the
  # matmuls: its layers are narrower than WINOGRAD_MIN_CHANNELS).
  from experiments import winograd_step  # pylint: disable=g-import-not-at-top
  floors = dict(cpu_kernels.WINOGRAD_MIN_CHANNELS)
  result = winograd_step.compare(tiny_config(), rounds=2, sizes=(5,))
  assert result['matmuls_step_s'] > 0 and result['winograd_step_s'] > 0
  assert result['speedup'] > 0 and result['rounds'] == 2
  assert result['winograd_sizes'] == [5]
  assert capsys.readouterr().out.count('round ') == 2
  assert cpu_kernels.WINOGRAD_MIN_CHANNELS == floors  # Restored.
  # --xla-options: the same step against XLA:CPU's default options.
  options = dict(cpu_kernels.XLA_CPU_OPTIONS)
  result = winograd_step.compare(tiny_config(), rounds=1, options=True)
  assert result['xla_defaults_step_s'] > 0 and result['ours_step_s'] > 0
  assert result['xla_cpu_options'] == options
  assert cpu_kernels.XLA_CPU_OPTIONS == options  # Restored.


@pytest.mark.slow
def test_summarise_run_reports_centre_and_ten_crops(digits_dir, tmp_path):
  from alexnet_jax import train  # pylint: disable=g-import-not-at-top
  from experiments import summarise_run  # pylint: disable=g-import-not-at-top
  config = tiny_config(digits_dir)
  config.num_train_steps = 4
  config.eval_crops = 1
  workdir = str(tmp_path / 'run')
  centre = train.train_and_evaluate(config, workdir)
  # The finished run, evaluated again with 10 crops: appended to its log.
  config.eval_crops = 10
  ten = train.train_and_evaluate(config, workdir)
  out = str(tmp_path / 'results')
  assert summarise_run.main(['--workdir', workdir, '--out', out]) == 0
  with open(os.path.join(out, 'results.json')) as f:
    results = json.load(f)
  assert results['val_top1_err_centre'] == pytest.approx(centre['top1_err'])
  assert results['val_top1_err_10crop'] == pytest.approx(ten['top1_err'])
  assert results['val_top5_err_10crop'] == pytest.approx(ten['top5_err'])
  assert results['epochs'] == pytest.approx(4 / 89)
  run = results['runs'][0]
  assert [e['crops'] for e in run['evals']] == [1, 10]
  assert set(results['colour_index']) >= {'tower1', 'tower2', 'shows_it'}
  for name in ('results.md', 'curves.png', 'conv1_kernels.png',
               'colour_index.json', 'main_metrics.jsonl', 'main_config.json'):
    assert os.path.exists(os.path.join(out, name)), name
  with open(os.path.join(out, 'results.md')) as f:
    table = f.read()
  assert f"| main | {config.model.init} | 0.04 |" in table
  assert " h |" in table  # Training time.
  # Another seed joins without the main run's workdir (here: the same run
  # again, under another label); the main run's figures stay.
  os.rename(os.path.join(out, 'conv1_kernels.png'),
            os.path.join(out, 'main_kernels.png'))
  assert summarise_run.main(['--add', f'seed1={workdir}', '--out', out]) == 0
  with open(os.path.join(out, 'results.json')) as f:
    added = json.load(f)
  assert [r['label'] for r in added['runs']] == ['main', 'seed1']
  assert added['colour_index'] == results['colour_index']
  assert added['runs'][1]['colour_index'] == results['colour_index']
  assert added['runs'][1]['val_top1_err_10crop'] == pytest.approx(
      ten['top1_err'])
  for name in ('seed1_conv1_kernels.png', 'seed1_colour_index.json',
               'seed1_metrics.jsonl', 'seed1_config.json'):
    assert os.path.exists(os.path.join(out, name)), name
  assert not os.path.exists(os.path.join(out, 'conv1_kernels.png'))
  with open(os.path.join(out, 'results.md')) as f:
    table = f.read()
  assert '| seed1 |' in table and 'seed1: conv1 colour index' in table
  assert summarise_run.main(['--add', f'seed1={workdir}', '--out', out]) == 0
  with open(os.path.join(out, 'results.json')) as f:
    assert [r['label'] for r in json.load(f)['runs']] == ['main', 'seed1']
  with pytest.raises(SystemExit):  # The main run is not replaced this way.
    summarise_run.main(['--add', f'main={workdir}', '--out', out])


def test_runner_config_is_file_then_protocol_then_yours_then_variant():
  from experiments import run  # pylint: disable=g-import-not-at-top
  exp = run.EXPERIMENTS['ablations']
  no_lrn = next(v for v in exp.variants if v.slug == 'no_lrn')
  config = run.configure(exp, no_lrn, 1, os.path.join(ROOT, 'configs',
                                                      'imagenette.py'),
                         ['--config.eval_crops=1', '--config.num_epochs=10'])
  assert config.dataset.startswith('imagenette')  # The file given.
  assert config.augment.pca_lighting == 0.1  # The ablations' protocol.
  assert config.eval_crops == 1 and config.num_epochs == 10  # Yours win.
  assert not config.model.lrn.enabled and config.seed == 1  # The variant's.
  # Without --config: the experiment's own base file.
  assert run.configure(exp, no_lrn, 0).dataset == 'digits'
  figure1 = run.EXPERIMENTS['figure1_cifar10']
  config = run.configure(figure1, figure1.variants[0], 0)
  assert config.stop_at_train_err == 0.25 and config.num_epochs == 60


def test_runner_refuses_bad_overrides_in_one_line(capsys):
  from experiments import run  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit) as e:
    run.main(['ablations', '--config.model.no_such_key=1'])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "unknown config key 'no_such_key'" in err[0], err
  with pytest.raises(SystemExit, match='--seed 3 is not one of the 3 seeds'):
    run.main(['ablations', '--seed', '3'])


@pytest.mark.slow
def test_runner_runs_one_variant_and_seed_and_aggregates_all(
    digits_dir, tmp_path, monkeypatch):
  from experiments import run  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('TFDS_DATA_DIR', digits_dir)
  out, root = str(tmp_path / 'results'), str(tmp_path / 'runs')
  common = ['figure1', '--small', '--seeds', '2', '--out', out,
            '--workdir_root', root, '--config',
            os.path.join(ROOT, 'configs', 'figure1_digits.py'),
            '--config.log_every_steps=2']  # Yours win over --small's 1.
  first = common + ['--variants', 'relu_lr_0_005,tanh_lr_0_01', '--seed', '0']
  run.main(first)
  second = common + ['--variants', 'tanh_lr_0_01', '--seed', '1']
  run.main(second)
  with open(os.path.join(out, 'results.json')) as f:
    results = json.load(f)
  # The second command ran one (variant, seed); the first one's rows stay.
  assert {k: [r['seed'] for r in v] for k, v in results['runs'].items()} == {
      'relu_lr_0_005': [0], 'tanh_lr_0_01': [0, 1]}
  for runs in results['runs'].values():
    assert all([c[1] for c in r['train_curve']] == [2, 4, 6] for r in runs)
    assert all(r['train_seconds'] > 0 and r['img_per_sec'] > 0 for r in runs)
  assert results['commands'] == [
      'python -m experiments.run ' + ' '.join(c) for c in (first, second)]
  assert sorted(os.listdir(os.path.join(out, 'configs'))) == [
      'relu_lr_0_005_seed0.json', 'tanh_lr_0_01_seed0.json',
      'tanh_lr_0_01_seed1.json']
  assert set(results['epochs_to_5pct']) <= {'relu', 'tanh'}
  # Rerun, a finished (variant, seed) is neither trained nor evaluated again.
  metrics = os.path.join(root, 'figure1', 'relu_lr_0_005', 'seed0',
                         'metrics.jsonl')
  before = open(metrics).read()
  run.main(first)
  assert open(metrics).read() == before
  # A longer run of the same (variant, seed) is not skipped: it resumes.
  run.main(first[:-2] + ['--seed', '0', '--variants', 'relu_lr_0_005',
                         '--config.num_train_steps=8'])
  with open(os.path.join(out, 'results.json')) as f:
    longer = json.load(f)['runs']['relu_lr_0_005'][0]
  assert [c[1] for c in longer['train_curve']] == [2, 4, 6, 8]
  results['runs']['relu_lr_0_005'] = [longer]
  # Aggregating alone trains nothing and gives the same rows.
  run.main(common + ['--aggregate_only'])
  with open(os.path.join(out, 'results.json')) as f:
    again = json.load(f)
  assert again['runs'] == results['runs']
  # The results directory outlives the workdirs: with them gone (another
  # machine, a new session), the recorded runs are neither trained again nor
  # dropped, and a new seed joins them.
  moved = common[:common.index('--workdir_root') + 1] + [
      str(tmp_path / 'elsewhere')] + common[common.index('--workdir_root') + 2:]
  run.main(moved + ['--variants', 'tanh_lr_0_01', '--seed', '1'])
  run.main(moved + ['--variants', 'relu_lr_0_005', '--seed', '0',
                    '--config.num_train_steps=8'])
  assert not os.path.exists(tmp_path / 'elsewhere' / 'figure1')
  # A seed under another config than the recorded ones' would mix two
  # experiments: refused in one line, the results as they were.
  with open(os.path.join(out, 'results.json')) as f:
    kept = f.read()
  with pytest.raises(SystemExit, match=r'records relu_lr_0_005 seed 0 under '
                     r'another config \(num_train_steps differ'):
    run.main(moved + ['--variants', 'relu_lr_0_005', '--seed', '1'])
  assert not os.path.exists(tmp_path / 'elsewhere' / 'figure1')  # Untrained.
  with open(os.path.join(out, 'results.json')) as f:
    assert f.read() == kept
  # Where it ran (another machine's workers, checkpoint interval) is not
  # another config.
  run.main(moved + ['--variants', 'relu_lr_0_005', '--seed', '1',
                    '--config.num_train_steps=8', '--config.input.workers=1',
                    '--config.checkpoint_every_steps=4'])
  with open(os.path.join(out, 'results.json')) as f:
    joined = json.load(f)['runs']
  assert {k: [r['seed'] for r in v] for k, v in joined.items()} == {
      'relu_lr_0_005': [0, 1], 'tanh_lr_0_01': [0, 1]}
  assert joined['tanh_lr_0_01'] == results['runs']['tanh_lr_0_01']
  assert joined['relu_lr_0_005'][0] == longer
  assert os.listdir(tmp_path / 'elsewhere' / 'figure1') == ['relu_lr_0_005']
  # Every seed rerun under a new config: nothing is left to mix, so it runs.
  run.main(common + ['--variants', 'tanh_lr_0_01', '--config.num_train_steps=8'])
  with open(os.path.join(out, 'results.json')) as f:
    rerun = json.load(f)['runs']['tanh_lr_0_01']
  assert [[c[1] for c in r['train_curve']] for r in rerun] == [[2, 4, 6, 8]] * 2
  with pytest.raises(SystemExit, match='no finished run of figure1'):
    run.main(['figure1', '--aggregate_only', '--workdir_root',
              str(tmp_path / 'empty'), '--out', str(tmp_path / 'none')])


def test_ablation_deltas_pair_seeds_that_the_base_ran():
  from experiments import run  # pylint: disable=g-import-not-at-top
  variants = [run.Variant('base'), run.Variant('no LRN')]
  row = lambda seed, err: {'seed': seed, 'top1_err': err, 'top5_err': err}
  rows = {'base': [row(0, 0.10), row(1, 0.20), row(2, 0.30)],
          'no_lrn': [row(2, 0.35)]}
  summary = {s['slug']: s for s in run._summarise(variants, rows)}  # pylint: disable=protected-access
  assert summary['no_lrn']['delta_top1'] == pytest.approx(5.0)  # 35 - 30.
  assert summary['no_lrn']['paired_seeds'] == 1


def test_ablation_table_shows_no_spread_for_one_seed_and_who_trained_it():
  from experiments import run  # pylint: disable=g-import-not-at-top
  exp = run.EXPERIMENTS['ablations']
  variants = [exp.variants[0], exp.variants[1]]  # base, no LRN.
  row = lambda seed, err, commit=None: dict(  # pylint: disable=g-long-lambda
      {'seed': seed, 'top1_err': err, 'top5_err': err / 10},
      **({'commit': commit} if commit else {}))
  one = {'base': [row(0, 0.20, 'aaa')], 'no_lrn': [row(0, 0.25, 'bbb')]}
  table = exp.markdown('t', run._summarise(variants, one), 'cmd', 1, False,  # pylint: disable=protected-access
                       default_base=False)
  assert '| base | 20.00 | 2.00 |' in table
  assert '| no LRN | 25.00 | 2.50 | +5.0 | +0.5 |' in table
  assert '±' not in table.split('|---|')[1]  # One seed: no spread shown.
  two = {'base': [row(0, 0.20), row(1, 0.30, 'aaa')],
         'no_lrn': [row(0, 0.25), row(1, 0.25, 'aaa')]}
  table = exp.markdown('t', run._summarise(variants, two), 'cmd', 2, False,  # pylint: disable=protected-access
                       default_base=False)
  assert '| base | 25.00 ± 7.07 | 2.50 ± 0.71 |' in table
  assert '| no LRN | 25.00 ± 0.00 | 2.50 ± 0.00 | +0.0 ± 7.07 |' in table
  assert run._grouped(two, 'commit', '; ') == (  # pylint: disable=protected-access
      'not recorded: base seed 0, no_lrn seed 0; aaa: base seed 1, '
      'no_lrn seed 1')
