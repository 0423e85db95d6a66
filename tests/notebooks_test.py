"""The notebooks in experiments/ run top to bottom (tiny settings, CPU)."""

import os

import pytest
from tests.helpers import ROOT


nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')


def execute(name, tmp_path):
  path = os.path.join(ROOT, 'experiments', f'{name}.ipynb')
  book = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(
      book, timeout=600, kernel_name='python3',
      resources={'metadata': {'path': str(tmp_path)}})
  client.execute()
  return book


def outputs(book):
  text = []
  for cell in book.cells:
    for out in cell.get('outputs', []):
      text.append(out.get('text', '') or str(out.get('data', {}).get(
          'text/plain', '')))
  return '\n'.join(text)


def images(book):
  return sum('image/png' in out.get('data', {}) for cell in book.cells
             for out in cell.get('outputs', []))


@pytest.mark.slow
def test_notebooks_run_top_to_bottom(digits_dir, tmp_path, monkeypatch):
  workdir = str(tmp_path / 'run')
  monkeypatch.setenv('ALEXNET_JAX_SMALL', '1')
  monkeypatch.setenv('ALEXNET_JAX_WORKDIR', workdir)
  monkeypatch.setenv('TFDS_DATA_DIR', digits_dir)
  monkeypatch.setenv('PYTHONPATH', ROOT)
  book = execute('quickstart', tmp_path)
  assert 'final top-1 validation error' in outputs(book)
  assert images(book) == 2  # Curves and neighbours.
  book = execute('feature_extraction', tmp_path)
  assert 'linear probe accuracy on fc7' in outputs(book)
  assert os.path.exists(os.path.join(workdir, 'fc7_features.npz'))
  book = execute('paper_figures', tmp_path)
  assert images(book) == 4
  for png in ('conv1_kernels', 'top5', 'retrieval', 'curves'):
    assert os.path.exists(os.path.join(workdir, 'figures', f'{png}.png'))


def install_cell(name):
  book = nbformat.read(os.path.join(ROOT, 'experiments', f'{name}.ipynb'),
                       as_version=4)
  cells = [c.source for c in book.cells if c.cell_type == 'code' and
           'ALEXNET_JAX_SRC' in c.source]
  assert len(cells) == 1, name
  return cells[0]


@pytest.mark.parametrize('name', ['quickstart', 'feature_extraction',
                                  'paper_figures'])
def test_install_cell_installs_an_uploaded_zip(name, tmp_path, monkeypatch):
  # As on a fresh Colab: alexnet_jax not importable, the repository uploaded
  # as a .zip. The cell unpacks it and pip-installs that folder (pip itself
  # is recorded, not run); no guessed URL anywhere.
  import importlib.util  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import zipfile  # pylint: disable=g-import-not-at-top
  source = install_cell(name)
  assert 'http' not in source and 'git+' not in source
  archive = tmp_path / 'alexnet_jax-main.zip'
  with zipfile.ZipFile(archive, 'w') as z:
    z.writestr('__MACOSX/alexnet_jax-main/._setup.cfg', '')  # First entry.
    z.writestr('alexnet_jax-main/setup.cfg', '[metadata]\n')
    z.writestr('alexnet_jax-main/configs/setup.cfg', '')  # Deeper: not it.
  calls = []
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec', lambda n, *a: None if
                      n == 'alexnet_jax' else real_find_spec(n, *a))
  monkeypatch.setattr(subprocess, 'check_call', calls.append)
  monkeypatch.setattr(sys, 'path', list(sys.path))
  monkeypatch.setenv('ALEXNET_JAX_SRC', str(archive))
  exec(source, {})  # pylint: disable=exec-used
  folder = str(tmp_path / 'alexnet_jax-main' / 'alexnet_jax-main')
  assert calls == [[sys.executable, '-m', 'pip', 'install', '-q', '-e',
                    folder]]  # TensorFlow is installed here: no extra.
  assert sys.path[0] == folder
  # Without TensorFlow (not Colab), the `cpu` extra brings it.
  calls.clear()
  monkeypatch.setattr(importlib.util, 'find_spec', lambda n, *a: None if
                      n in ('alexnet_jax', 'tensorflow') else
                      real_find_spec(n, *a))
  exec(source, {})  # pylint: disable=exec-used
  assert calls[0][-1] == folder + '[cpu]'
  # Nothing uploaded: one clear error naming what to do.
  monkeypatch.setenv('ALEXNET_JAX_SRC', str(tmp_path / 'nothing'))
  with pytest.raises(FileNotFoundError, match='upload it'):
    exec(source, {})  # pylint: disable=exec-used
