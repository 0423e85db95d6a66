"""The notebooks in experiments/ run top to bottom (tiny settings, CPU)."""

import os

import pytest
from tests.helpers import ROOT


nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')


def execute(name, tmp_path):
  from experiments import execute_notebooks  # pylint: disable=g-import-not-at-top
  return execute_notebooks.execute(name, str(tmp_path), timeout=600)


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


@pytest.mark.slow
def test_notebooks_run_on_an_import_with_your_photos(tmp_path, monkeypatch):
  # Imported ImageNet weights (1000 classes, tiny widths) and a folder of the
  # user's photos in WordNet-id subfolders: features, the probe and the
  # figures, with no prepared ImageNet (an empty data dir: a store lookup
  # would stop on "download the tars").
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from alexnet_jax import pretrained  # pylint: disable=g-import-not-at-top
  from tests.pretrained_test import caffe_weights  # pylint: disable=g-import-not-at-top
  weights = str(tmp_path / 'bvlc_alexnet.npy')
  np.save(weights, caffe_weights(classes=1000), allow_pickle=True)
  workdir = str(tmp_path / 'import')
  assert pretrained.main(['--format', 'caffe', '--weights', weights,
                          '--workdir', workdir]) == 0
  rng = np.random.RandomState(0)
  photos = tmp_path / 'photos'
  for wnid in ('n01440764', 'n01443537'):  # tench, goldfish
    (photos / wnid).mkdir(parents=True)
    for i in range(4):
      Image.fromarray(rng.randint(0, 256, (180, 240, 3), np.uint8)).save(
          photos / wnid / f'{i}.jpg')
  data_dir = tmp_path / 'no_data'
  data_dir.mkdir()
  monkeypatch.setenv('ALEXNET_JAX_SMALL', '1')
  monkeypatch.setenv('ALEXNET_JAX_WORKDIR', workdir)
  monkeypatch.setenv('ALEXNET_JAX_IMAGES', str(photos))
  monkeypatch.setenv('TFDS_DATA_DIR', str(data_dir))
  monkeypatch.setenv('PYTHONPATH', ROOT)
  book = execute('feature_extraction', tmp_path)
  assert 'linear probe accuracy on fc7' in outputs(book)
  assert '8 images' in outputs(book)
  with np.load(os.path.join(workdir, 'fc7_features.npz')) as f:
    assert f['features'].shape == (8, 32) and list(f['labels']) == [0] * 4 + [1] * 4
  book = execute('paper_figures', tmp_path)
  assert images(book) == 3  # An import has no training curves.
  for png in ('conv1_kernels', 'top5', 'retrieval'):
    assert os.path.exists(os.path.join(workdir, 'figures', f'{png}.png'))
  assert not os.listdir(data_dir)  # No store was looked for or made.


def install_cell(name):
  book = nbformat.read(os.path.join(ROOT, 'experiments', f'{name}.ipynb'),
                       as_version=4)
  cells = [c.source for c in book.cells if c.cell_type == 'code' and
           'ALEXNET_JAX_SRC' in c.source]
  assert len(cells) == 1, name
  return cells[0]


NOTEBOOKS = ['quickstart', 'feature_extraction', 'paper_figures']


def _fake_repository(archive, setup_cfg):
  """A .zip of a repository as GitHub serves it: its setup.cfg and the
  install step (alexnet_jax/colab.py), one folder deep."""
  import zipfile  # pylint: disable=g-import-not-at-top
  with zipfile.ZipFile(archive, 'w') as z:
    z.writestr('__MACOSX/alexnet_jax-main/._setup.cfg', '')  # First entry.
    z.writestr('alexnet_jax-main/setup.cfg', setup_cfg)
    z.writestr('alexnet_jax-main/configs/setup.cfg', '')  # Deeper: not it.
    z.write(os.path.join(ROOT, 'alexnet_jax', 'colab.py'),
            'alexnet_jax-main/alexnet_jax/colab.py')


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_install_cell_installs_an_uploaded_zip(name, tmp_path, monkeypatch):
  # As on a fresh Colab: alexnet_jax not importable, the repository uploaded
  # as a .zip. The cell unpacks it and pip-installs that folder (pip itself
  # is recorded, not run), pinning the jax packages installed here; no
  # guessed URL anywhere.
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  import importlib.util  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  source = install_cell(name)
  assert 'http' not in source and 'git+' not in source
  archive = tmp_path / 'alexnet_jax-main.zip'
  with open(os.path.join(ROOT, 'setup.cfg')) as f:
    _fake_repository(archive, f.read())
  calls = []
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec', lambda n, *a: None if
                      n == 'alexnet_jax' else real_find_spec(n, *a))
  monkeypatch.setattr(subprocess, 'check_call', calls.append)
  monkeypatch.setattr(sys, 'path', list(sys.path))
  monkeypatch.setenv('ALEXNET_JAX_SRC', str(archive))
  exec(source, {})  # pylint: disable=exec-used
  folder = str(tmp_path / 'alexnet_jax-main' / 'alexnet_jax-main')
  (command,) = calls
  assert command[:5] == [sys.executable, '-m', 'pip', 'install', '-q']
  assert command[-2:] == ['-e', folder]  # TensorFlow is here: no extra.
  with open(command[command.index('-c') + 1]) as f:
    pins = f.read().splitlines()
  for package in ('jax', 'jaxlib'):  # This environment's, kept as they are.
    assert f'{package}=={importlib.metadata.version(package)}' in pins
  assert sys.path[0] == folder
  # Nothing uploaded: one clear error naming what to do.
  monkeypatch.setenv('ALEXNET_JAX_SRC', str(tmp_path / 'nothing'))
  with pytest.raises(FileNotFoundError, match='upload it'):
    exec(source, {})  # pylint: disable=exec-used
  # With REPO set, the cell clones it where SRC says.
  calls.clear()
  monkeypatch.setenv('ALEXNET_JAX_SRC', str(tmp_path / 'clone'))
  with pytest.raises(FileNotFoundError):  # The recorded clone made nothing.
    exec(source.replace("REPO = ''", "REPO = 'ADDRESS'"), {})  # pylint: disable=exec-used
  assert calls == [['git', 'clone', '-q', '--depth', '1', 'ADDRESS',
                    str(tmp_path / 'clone')]]


class _Dist:

  def __init__(self, name, version):
    self.metadata, self.version = {'Name': name}, version


@pytest.mark.parametrize('installed,stops', [
    ({'jax': '0.4.30', 'jaxlib': '0.4.30', 'jax-cuda12-plugin': '0.4.30'},
     True),  # Older than the floor: stop, replace nothing.
    ({'jax': '0.99.0', 'jaxlib': '0.99.0', 'jax-cuda12-plugin': '0.99.0',
      'jax-cuda12-pjrt': '0.99.0'}, False),  # Newer: kept, pinned.
    ({}, False)])  # No jax at all: pip chooses.
def test_install_never_replaces_the_runtimes_jax(installed, stops, tmp_path,
                                                 monkeypatch):
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  import runpy  # pylint: disable=g-import-not-at-top
  src = tmp_path / 'repo'
  src.mkdir()
  with open(os.path.join(ROOT, 'setup.cfg')) as f:
    (src / 'setup.cfg').write_text(f.read())
  # A faked environment: these distributions, beside unrelated ones.
  fake = [_Dist(n, v) for n, v in installed.items()] + [
      _Dist('numpy', '2.0.0'), _Dist('jaxtyping', '0.2.0')]
  monkeypatch.setattr(importlib.metadata, 'distributions', lambda: fake)
  colab = runpy.run_path(os.path.join(ROOT, 'alexnet_jax', 'colab.py'))
  calls = []
  if stops:
    with pytest.raises(SystemExit, match=r'jax 0\.4\.30, older than the '
                       r'0\.\d+\.\d+ alexnet_jax needs') as e:
      colab['install'](str(src), check_call=calls.append,
                       has_tensorflow=False)
    assert '\n' not in str(e.value) and not calls
    return
  command = colab['install'](str(src), check_call=calls.append,
                             has_tensorflow=False)
  assert calls == [command] and command[-1] == str(src) + '[cpu]'
  if not installed:
    assert '-c' not in command
    return
  with open(command[command.index('-c') + 1]) as f:
    assert sorted(f.read().splitlines()) == sorted(
        f'{n}=={v}' for n, v in installed.items())


def test_floors_come_from_setup_cfg():
  import runpy  # pylint: disable=g-import-not-at-top
  colab = runpy.run_path(os.path.join(ROOT, 'alexnet_jax', 'colab.py'))
  floors = colab['floors'](os.path.join(ROOT, 'setup.cfg'))
  assert {'jax', 'flax', 'optax'} <= set(floors)
  with open(os.path.join(ROOT, 'setup.cfg')) as f:
    assert f'jax>={floors["jax"]}' in f.read()
  assert colab['_version_tuple']('0.12.0.1') > colab['_version_tuple']('0.12')
  # A pre-release of the floor is below it (pip would refuse it), a local
  # or post build is not.
  v = colab['_version_tuple']
  for below, floor in (('0.10.2rc1', '0.10.2'), ('0.10.2.dev20260101',
                                                 '0.10.2'), ('0.10', '0.10.2')):
    assert v(below) < v(floor), below
  for above, floor in (('0.10.2', '0.10.2'), ('0.10.2+cuda12', '0.10.2'),
                       ('0.10.2.post1', '0.10.2'), ('0.11.0rc1', '0.10.2')):
    assert v(above) >= v(floor), above


def test_drive_workdir_mounts_once(tmp_path, monkeypatch):
  import sys  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  from alexnet_jax import colab  # pylint: disable=g-import-not-at-top
  mounted = []
  drive = types.SimpleNamespace(mount=mounted.append)
  google = types.ModuleType('google')
  google.colab = types.ModuleType('google.colab')
  google.colab.drive = drive
  monkeypatch.setitem(sys.modules, 'google.colab', google.colab)
  monkeypatch.setattr(colab, 'DRIVE_MOUNT', str(tmp_path / 'drive'))
  monkeypatch.setattr(colab, 'DRIVE_ROOT', str(tmp_path / 'drive' / 'MyDrive'
                                               / 'alexnet_jax'))
  assert colab.workdir('runs/x') == 'runs/x'  # No Drive: as given.
  assert colab.workdir('runs/x', drive=True) == str(
      tmp_path / 'drive' / 'MyDrive' / 'alexnet_jax' / 'runs' / 'x')
  assert mounted == [str(tmp_path / 'drive')]
  (tmp_path / 'drive' / 'MyDrive').mkdir(parents=True)  # Now mounted.
  colab.workdir('runs/y', drive=True)
  assert len(mounted) == 1


def test_colab_links_set_the_address_and_the_link(tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  from experiments import colab_links  # pylint: disable=g-import-not-at-top
  for name in NOTEBOOKS:
    shutil.copy(os.path.join(ROOT, 'experiments', f'{name}.ipynb'), tmp_path)
  for _ in range(2):  # Twice: one link, not two.
    colab_links.main(['--repo', 'https://github.com/someone/alexnet_jax.git',
                      '--notebooks', str(tmp_path)])
  for name in NOTEBOOKS:
    book = nbformat.read(str(tmp_path / f'{name}.ipynb'), as_version=4)
    title = book.cells[0].source
    assert title.count('Open in Colab') == 1
    assert ('(https://colab.research.google.com/github/someone/alexnet_jax/'
            f'blob/main/experiments/{name}.ipynb)') in title
    (cell,) = [c.source for c in book.cells if 'ALEXNET_JAX_SRC' in c.source]
    assert "REPO = 'https://github.com/someone/alexnet_jax'" in cell
  colab_links.main(['--repo', '', '--notebooks', str(tmp_path)])
  for name in NOTEBOOKS:
    with open(tmp_path / f'{name}.ipynb') as f, open(os.path.join(
        ROOT, 'experiments', f'{name}.ipynb')) as g:
      assert f.read() == g.read()  # Back as committed.
  with pytest.raises(SystemExit, match='github.com/ORG/NAME'):
    colab_links.main(['--repo', 'gitlab.com/x/y', '--notebooks',
                      str(tmp_path)])
