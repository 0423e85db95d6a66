"""One command-line convention: either flag spelling, one error line, exit 2."""

import glob
import os
import re
import subprocess
import sys

from absl import flags
import pytest

from alexnet_jax import cli
from tests.helpers import ROOT


def test_argparse_commands_take_either_spelling_and_fail_in_one_line(capsys):
  parser = cli.ArgumentParser(prog='python -m alexnet_jax.viz')
  parser.add_argument('--max_images', type=int, default=8)
  parser.add_argument('--vs-torch', action='store_true')
  parser.add_argument('--out')
  for argv in (['--max_images', '3', '--vs-torch'],
               ['--max-images=3', '--vs_torch']):
    args = parser.parse_args(argv)
    assert (args.max_images, args.vs_torch) == (3, True)
  with pytest.raises(SystemExit):  # No abbreviations, as in absl.
    parser.parse_args(['--max', '3'])
  capsys.readouterr()
  with pytest.raises(SystemExit) as e:
    parser.parse_args(['--max-images=three'])
  assert e.value.code == 2
  err = capsys.readouterr().err
  # One line, the module as its prefix, and no usage block above it.
  assert err.splitlines() == [
      "alexnet_jax.viz: error: argument --max_images/--max-images: invalid "
      "int value: 'three'"]


def test_absl_commands_take_the_dashed_spelling_too():
  registry = flags.FlagValues()
  flags.DEFINE_bool('vs_torch', False, '', flag_values=registry)
  flags.DEFINE_list('batch_sizes', None, '', flag_values=registry)
  flags.DEFINE_bool('torch_compile', True, '', flag_values=registry)
  rest = cli.parse_flags(['prog', '--vs-torch', '--batch-sizes=1,2',
                          '--no-torch-compile', 'x-y'], registry)
  assert registry.vs_torch and registry.batch_sizes == ['1', '2']
  assert not registry.torch_compile
  assert rest == ['prog', 'x-y']  # Positional arguments as they were.
  # Config keys keep configs/default.py's spelling; values are never touched.
  assert cli.underscored(['--config.data_dir=/a-b', '--out=x-y.json']) == [
      '--config.data_dir=/a-b', '--out=x-y.json']


def test_a_message_exit_becomes_the_one_error_line(capsys):
  def main():
    raise SystemExit('experiments.run: error: unknown experiment; choose')
  with pytest.raises(SystemExit) as e:
    cli.run_main(main, 'experiments.run')
  assert e.value.code == 2
  assert capsys.readouterr().err == (
      'experiments.run: error: unknown experiment; choose\n')
  with pytest.raises(SystemExit) as e:
    cli.run_main(lambda: 0, 'experiments.run')
  assert e.value.code == 0


def test_the_readme_lists_every_command():
  with open(os.path.join(ROOT, 'README.md')) as f:
    table = f.read().split('## Commands')[1].split('\n## ')[0]
  listed = set(re.findall(r'`python -m ([\w.]+)', table))
  commands = set()
  for path in glob.glob(os.path.join(ROOT, 'alexnet_jax', '**', '*.py'),
                        recursive=True):
    with open(path) as f:
      if "if __name__ == '__main__':" in f.read():
        rel = os.path.relpath(path, ROOT)[:-len('.py')]
        commands.add(rel.replace(os.sep, '.'))
  assert commands and commands <= listed, commands - listed
  assert {'experiments.run', 'experiments.device_check'} <= listed


def test_a_command_takes_dashed_flags_and_fails_in_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.viz', '--workdir', str(tmp_path),
       '--out', str(tmp_path / 'f'), '--max-images', 'x'], cwd=ROOT,
      capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith(
      'alexnet_jax.viz: error: argument --max_images/--max-images')


def test_commands_on_a_saved_config_take_overrides_not_a_file(capsys):
  overrides, rest = cli.saved_config_overrides(
      ['--workdirs', 'a', 'b', '--config.eval_crops', '10',
       '--config.data_dir=/d'], 'alexnet_jax.ensemble')
  assert overrides == ['--config.eval_crops=10', '--config.data_dir=/d']
  assert rest == ['--workdirs', 'a', 'b']
  with pytest.raises(SystemExit) as e:
    cli.saved_config_overrides(['--config', 'configs/digits.py'],
                               'alexnet_jax.evaluate')
  assert e.value.code == 2
  assert capsys.readouterr().err.startswith(
      "alexnet_jax.evaluate: error: --config FILE: the config is the run's "
      'saved one')
