"""The command line: bad input gets one line naming the fix.

(A real run from the command line: readme_test.py.)
"""

import os
import subprocess
import sys

import pytest
from alexnet_jax import cli
from tests.helpers import ROOT
from tests.helpers import assert_one_line_error
from tests.helpers import run_cli



@pytest.mark.parametrize('args,needles', [
    (['--config.bogus=1'], ['--config.bogus', 'unknown config key']),
    (['--config.model.widht=1'], ["did you mean 'width'"]),
    (['--config.batch_size=abc'], ['batch_size']),
    (['--config.mesh.data=8'], ['needs 8 devices', 'xla_force_host']),
    (['--config.learning_rate=-1'], ['learning_rate']),
    (['--config.model.input_size=300'], ['input_size', 'image_size']),
])
@pytest.mark.slow
def test_bad_overrides(tmp_path, args, needles):
  proc = run_cli(['--config', 'configs/digits.py', '--workdir',
                  str(tmp_path)] + args)
  assert_one_line_error(proc, *needles)


def test_bad_paths(tmp_path):
  proc = run_cli(['--config', 'configs/missing.py', '--workdir', str(tmp_path)])
  assert_one_line_error(proc, '--config', 'missing.py')
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')
  proc = run_cli(['--config', 'configs/digits.py', '--workdir',
                  str(blocker / 'run')])
  assert_one_line_error(proc, 'workdir', 'not writable')


@pytest.mark.slow
def test_imagenet_config_says_how_data_will_come(tmp_path):
  proc = run_cli(['--config', 'configs/ilsvrc2012.py', '--workdir',
                  str(tmp_path)])
  assert_one_line_error(proc, 'imagenet2012', 'manual_dir')


def test_missing_tensorflow_is_one_line(tmp_path):
  # setup.cfg leaves TensorFlow to the `cpu` extra (Colab has its own).
  code = '\n'.join([
      'import runpy, sys',
      'class NoTensorFlow:',
      '  def find_spec(self, name, path=None, target=None):',
      "    if name.split('.')[0] == 'tensorflow':",
      "      raise ImportError(f'No module named {name!r}', name=name)",
      'sys.meta_path.insert(0, NoTensorFlow())',
      "sys.argv = ['main'] + sys.argv[1:]",
      "runpy.run_module('alexnet_jax.main', run_name='__main__')"])
  env = dict(os.environ, XLA_FLAGS='', TF_CPP_MIN_LOG_LEVEL='2')
  proc = subprocess.run(
      [sys.executable, '-c', code, '--config', 'configs/digits.py',
       '--workdir', str(tmp_path / 'w'), f'--config.data_dir={tmp_path}'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
      check=False)
  assert_one_line_error(proc, 'TensorFlow is needed', "'.[cpu]'")


def test_shipped_configs_from_any_directory(digits_dir, tmp_path,
                                            monkeypatch):
  # configs/ is part of the package (alexnet_jax/configs; the checkout's
  # configs/ links to it): `--config configs/NAME.py` works from anywhere,
  # and a file of that name in the working directory comes first.
  shipped = os.path.join(ROOT, 'alexnet_jax', 'configs', 'digits.py')
  assert cli.config_path('configs/digits.py') == 'configs/digits.py'  # Here.
  monkeypatch.chdir(tmp_path)
  assert cli.config_path('configs/digits.py:toy') == shipped + ':toy'
  assert cli.config_path('configs/nope.py') == 'configs/nope.py'
  assert cli.config_path('mine/digits.py') == 'mine/digits.py'
  proc = run_cli(['--config', 'configs/digits.py:toy', '--workdir',
                  str(tmp_path / 'w'), f'--config.data_dir={digits_dir}',
                  '--config.num_train_steps=1', '--config.eval_crops=1'],
                 cwd=str(tmp_path))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Done: 1 steps' in proc.stderr
