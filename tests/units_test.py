"""Fast checks of the small modules the end-to-end tests cover slowly:
durations, figures, the ensemble's and fine-tuning's refusals."""

import json
import os

import numpy as np
import pytest

from alexnet_jax import durations
from alexnet_jax import ensemble
from alexnet_jax import errors
from alexnet_jax import finetune
from alexnet_jax import viz
from tests.helpers import tiny_config


def test_durations_turn_epochs_into_steps():
  config = tiny_config()
  config.num_epochs, config.eval_every_epochs = 2.5, 0.5
  config.log_every_steps, config.checkpoint_every_steps = 3, 4
  d = durations.Durations.from_config(config, steps_per_epoch=10)
  assert (d.total_steps, d.eval_every, d.num_epochs) == (25, 5, 2.5)
  assert [s for s in range(1, 26) if d.is_eval(s)] == [5, 10, 15, 20, 25]
  assert [s for s in range(1, 26) if d.is_log(s)] == [3, 6, 9, 12, 15, 18,
                                                      21, 24, 25]
  assert [s for s in range(1, 26) if d.is_checkpoint(s)] == [4, 8, 12, 16,
                                                             20, 24, 25]
  assert d.position(23) == {'epoch': 2, 'batch': 3} and d.epoch(5) == 0.5
  config.num_train_steps = 7  # Overrides the epochs.
  assert durations.Durations.from_config(config, 10).total_steps == 7
  assert durations.fmt_time(59) == '0m59s'
  assert durations.fmt_time(3723) == '1h02m03s'
  assert d.eta(2.0, 24) == '0m02s'


def test_figures_from_parameters_and_metrics(tmp_path):
  rng = np.random.RandomState(0)
  params = {'conv1': {'kernel': rng.normal(size=(2, 11, 11, 3, 8))}}
  kernels = viz.conv1_kernels(params, str(tmp_path / 'k.png'))
  metrics = tmp_path / 'metrics.jsonl'
  metrics.write_text('\n'.join(json.dumps(
      {'step': s, 'epoch': s / 10, 'split': split, 'loss': 1 / s,
       'top1_err': 0.5 / s, 'top5_err': 0.1 / s, 'lr': 0.01})
                               for s in (1, 2, 3) for split in ('train',
                                                                'eval')))
  curves = viz.curves(str(metrics), str(tmp_path / 'c.png'))
  for path in (kernels, curves):
    assert os.path.getsize(path) > 1000
  with pytest.raises(errors.UserError, match='does not exist'):
    viz.read_metrics(str(tmp_path / 'none.jsonl'))


def test_ensemble_of_missing_runs_is_one_line(tmp_path, capsys):
  assert ensemble.main(['--workdirs', str(tmp_path / 'a'),
                        str(tmp_path / 'b')]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and 'neither a workdir' in err[0], err


def test_finetune_refusals_name_the_fix(tmp_path):
  config = tiny_config()
  assert finetune.source(config) == (config, None)  # From scratch.
  config.finetune.init_from = str(tmp_path)
  config.finetune.freeze = ('conv9',)
  with pytest.raises(errors.ConfigError, match='unknown layer'):
    finetune.source(config)
  config.finetune.freeze = ('conv1',)
  with pytest.raises(errors.ConfigError, match='finetune.init_from: .*neither'):
    finetune.source(config)


def test_colour_index_of_grey_coloured_and_mixed_kernels():
  rng = np.random.RandomState(0)
  grey = np.repeat(rng.normal(size=(11, 11, 1)), 3, axis=2) + 5.0
  assert viz.colour_index(grey) == pytest.approx(0.0, abs=1e-12)
  # No grey component: every pixel's channels sum to the kernel's mean.
  coloured = rng.normal(size=(11, 11, 3))
  coloured -= coloured.mean(2, keepdims=True)
  assert viz.colour_index(coloured + 3.0) == pytest.approx(1.0)
  # Only the scalar mean is removed, not one per channel: a constant red
  # kernel is colour, not nothing.
  red = np.zeros((11, 11, 3))
  red[..., 0] = 1.0
  # p - mean = (2/3, -1/3, -1/3): its grey part is 0, so all of it is colour.
  assert viz.colour_index(red) == pytest.approx(1.0)
  mixed = grey - grey.mean() + coloured
  want = (coloured ** 2).sum() / ((grey - grey.mean() + coloured) ** 2).sum()
  assert viz.colour_index(mixed) == pytest.approx(want)


def test_colour_indices_per_tower_say_whether_it_shows():
  rng = np.random.RandomState(0)
  grey = np.repeat(rng.normal(size=(11, 11, 1, 8)), 3, axis=2)
  coloured = rng.normal(size=(11, 11, 3, 8))
  params = {'conv1': {'kernel': np.stack([grey + 0.1 * coloured, coloured])}}
  got = viz.colour_indices(params)
  assert got['tower1']['median'] < 0.05 < 0.5 < got['tower2']['median']
  assert got['shows_it'] and got['ratio'] > 2
  assert len(got['tower2']['values']) == 8
  params = {'conv1': {'kernel': np.stack([coloured, coloured * 2])}}
  assert not viz.colour_indices(params)['shows_it']


def test_true_labels_from_the_images_folders():
  names = ['cat', 'dog']
  assert viz.labels_from_folders(['v/dog/1.jpg', 'v/cat/2.jpg', 'x/3.jpg'],
                                 names) == [1, 0, None]
  assert viz.labels_from_folders(['x/3.jpg'], names) is None
  # A sorted val/ gives one image of each class first, not the first class's.
  paths = ['v/cat/1.jpg', 'v/cat/2.jpg', 'v/cat/3.jpg', 'v/dog/1.jpg',
           'v/eel/1.jpg', 'v/eel/2.jpg']
  assert viz.spread_over_classes(paths, 5) == [
      'v/cat/1.jpg', 'v/dog/1.jpg', 'v/eel/1.jpg', 'v/cat/2.jpg', 'v/eel/2.jpg']
  probs = np.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]])
  table = viz.figure4_table(
      ['v/dog/1.jpg', 'v/cat/1.jpg'], probs, ['cat', 'dog', 'eel'], [1, 0],
      [[('t/dog/a.jpg', 0, 1.0), ('t/cat/b.jpg', 1, 2.0)],
       [('t/cat/b.jpg', 1, 0.5), ('t/dog/a.jpg', 0, 3.0)]],
      images_root='v', gallery_root='t', gallery_labels=[1, 0])
  assert table['queries'][0]['image'] == 'dog/1.jpg'
  assert table['queries'][0]['top5'][0] == ['dog', 0.7]
  assert table['top1_correct'] == 2 and table['top5_correct'] == 2
  assert [q['same_class'] for q in table['queries']] == [1, 1]
  assert table['neighbours_same_class'] == 2 and table['neighbours'] == 4
  assert table['labelled'] == 2 and table['gallery'] == 't'
  # Without a gallery or labels: the top-5 alone, and nothing counted.
  alone = viz.figure4_table(['x/1.jpg'], probs[:1], ['cat', 'dog', 'eel'],
                            [None])
  assert alone['labelled'] == 0 and alone['top1_correct'] == 0
  assert 'neighbours' not in alone['queries'][0] and 'neighbours' not in alone
  assert [t[0] for t in alone['queries'][0]['top5']] == ['dog', 'eel', 'cat']
