"""python -m alexnet_jax.evaluate: a run's figures, again, on any mesh."""

import json

import pytest

from alexnet_jax import evaluate
from alexnet_jax import train
from tests.helpers import read_metrics
from tests.helpers import tiny_config


@pytest.mark.slow
def test_evaluate_equals_the_runs_own_final_evaluation(digits_dir, tmp_path,
                                                       capsys):
  workdir = str(tmp_path / 'run')
  config = tiny_config(digits_dir)
  config.num_train_steps = 4
  train.train_and_evaluate(config, workdir)
  final = [r for r in read_metrics(workdir) if r['split'] == 'eval'][-1]
  out = str(tmp_path / 'eval.json')
  assert evaluate.main(['--workdir', workdir, '--out', out]) == 0
  with open(out) as f:
    result = json.load(f)
  assert json.loads(capsys.readouterr().out) == result
  for key in ('top1_err', 'top5_err', 'num_examples'):
    assert result[key] == final[key], key
  assert result['loss'] == pytest.approx(final['loss'], rel=1e-6)
  assert (result['step'], result['crops']) == (4, config.eval_crops)
  # Another mesh and the paper's 10 views: overrides of the saved config.
  ten = evaluate.evaluate_workdir(workdir, ['--config.eval_crops=10',
                                            '--config.mesh.data=2'])
  assert ten['crops'] == 10 and ten['num_examples'] == final['num_examples']


def test_evaluate_refuses_bad_input_in_one_line(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    evaluate.main(['--workdir', str(tmp_path)])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and 'neither a workdir' in err[0], err


def test_an_import_without_its_data_says_how_to_give_it(tmp_path, capsys,
                                                        monkeypatch):
  # Imported ImageNet weights, no ImageNet prepared: one line naming the
  # image_folder route.
  import numpy as np  # pylint: disable=g-import-not-at-top
  from alexnet_jax import pretrained  # pylint: disable=g-import-not-at-top
  from tests.pretrained_test import caffe_weights  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'tfds'))
  path = str(tmp_path / 'bvlc_alexnet.npy')
  np.save(path, caffe_weights(classes=1000), allow_pickle=True)
  workdir = str(tmp_path / 'import')
  assert pretrained.main(['--format', 'caffe', '--weights', path,
                          '--workdir', workdir]) == 0
  capsys.readouterr()
  with pytest.raises(SystemExit) as e:
    evaluate.main(['--workdir', workdir])
  assert e.value.code == 2
  err = [l for l in capsys.readouterr().err.splitlines() if ': error:' in l]
  assert len(err) == 1 and 'holds imported weights' in err[0], err
  assert '--config.dataset=image_folder --config.data_dir=DIR' in err[0]
