"""The notebooks in experiments/ run top to bottom (tiny settings, CPU)."""

import os

import pytest

from tests.conftest import ROOT

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
