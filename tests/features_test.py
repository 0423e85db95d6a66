"""Features from checkpoints: every layer, every kind of input, the CLI."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from alexnet_jax import augment
from alexnet_jax import features
from alexnet_jax import preprocess
from alexnet_jax import train
from alexnet_jax import workdir as workdir_lib
from tests.helpers import ROOT
from tests.helpers import bomb_png
from tests.helpers import tiny_config
from tests.helpers import validation


@pytest.fixture(scope='module')
def run(digits_dir, tmp_path_factory):
  """A short run trained on a 2 x 2 mesh, evaluated with 10 crops."""
  workdir = str(tmp_path_factory.mktemp('features') / 'run')
  config = tiny_config(digits_dir)
  config.mesh.data, config.mesh.model = 2, 2
  config.num_train_steps = 8
  config.eval_crops = 10
  config.augment.pca_lighting = 0.1
  result = train.train_and_evaluate(config, workdir)
  return workdir, config, result


@pytest.mark.slow
def test_probs_reproduce_the_runs_evaluation(run):
  # Restored on one device from a 2 x 2 run, with the same preprocessing and
  # 10-crop averaging: the same top-1 error as the run's own evaluation.
  workdir, config, result = run
  net = features.load(workdir)
  assert net.step == 8 and len(jax.devices()) == 8
  images, labels = validation(config)
  probs = net.extract(list(images), layer='probs', batch_size=128)
  assert probs.shape == (359, 10)
  np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
  err = np.mean(probs.argmax(1) != labels)
  assert err == pytest.approx(result['top1_err'], abs=1e-6)


def test_image_size_arrays_are_kept_as_they_are():
  # load_image returns S x S arrays untouched because the preprocessing's
  # antialiased resize is the identity at scale 1; this checks that it is.
  rs = np.random.RandomState(0)
  for s in (8, 31, 72):
    image = rs.randint(0, 256, (s, s, 3)).astype(np.uint8)
    np.testing.assert_array_equal(
        preprocess.resize_and_crop(image, s).numpy(), image)
    np.testing.assert_array_equal(features.load_image(image, s), image)
  # Other sizes are resized: shorter side to S, then the centre crop.
  assert features.load_image(rs.randint(0, 256, (40, 60, 3)).astype(
      np.uint8), 31).shape == (31, 31, 3)


@pytest.mark.slow
def test_every_layer_and_kind_of_input(run, tmp_path):
  workdir, config, _ = run
  net = features.load(os.path.join(workdir, 'checkpoints', '8'))
  images, _ = validation(config)
  images = images[:5]
  width = {'conv1': 6, 'conv2': 16, 'conv3': 24, 'conv4': 24, 'conv5': 16}
  shapes = {l: (5, s, s, width[l]) for l, s in
            (('conv1', 15), ('conv2', 7), ('conv3', 3), ('conv4', 3),
             ('conv5', 3))}
  shapes.update(pool5=(5, 1, 1, 16), fc6=(5, 16), fc7=(5, 16), logits=(5, 10),
                probs=(5, 10))
  for layer, shape in shapes.items():
    assert net.extract(images, layer, crops=1).shape == shape, layer
  fc7 = net.extract(images)  # Default: fc7, the run's 10 crops.
  assert not np.allclose(fc7, net.extract(images, crops=1))
  # Compiled with the train step's XLA:CPU options (cpu_kernels).
  batch = np.concatenate([images] * len(net.devices))  # Splits evenly.
  assert '__ynn_fusion' not in net._fn('fc7', 10, True).lower(  # pylint: disable=protected-access
      net.params, batch).compile().as_text()

  # Files (PNG, and a larger JPEG-free copy) give what the arrays give.
  from PIL import Image  # pylint: disable=g-import-not-at-top
  paths = []
  for i, im in enumerate(images):
    paths.append(str(tmp_path / f'{i}.png'))
    Image.fromarray(im).save(paths[-1])
  np.testing.assert_allclose(net.extract(paths), fc7, rtol=1e-5, atol=1e-6)
  # Any size: a 2x upscale is resized back to image_size first.
  big = [np.repeat(np.repeat(im, 2, 0), 2, 1) for im in images]
  assert net.extract(big).shape == fc7.shape

  # Network-ready input skips the preprocessing.
  stats = np.load(os.path.join(workdir, 'stats.npz'))
  ready = augment.center_crop(augment.normalize(
      images, stats['mean'], config.augment.scale), 64)
  np.testing.assert_allclose(
      net.extract(np.asarray(ready), preprocess=False),
      net.extract(images, crops=1), rtol=1e-5, atol=1e-6)

  with pytest.raises(features.FeaturesError, match='fc7'):
    net.extract(images, layer='fc9')
  with pytest.raises(features.FeaturesError, match='uint8'):
    net.extract(images.astype(np.float32))
  with pytest.raises(workdir_lib.WorkdirError, match='neither a workdir'):
    features.load(str(tmp_path))


@pytest.mark.slow
def test_command_line_features_and_neighbours(run, tmp_path):
  workdir, config, _ = run
  images, labels = validation(config)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  queries, gallery = tmp_path / 'q', tmp_path / 'g'
  queries.mkdir()
  gallery.mkdir()
  for i in range(12):
    Image.fromarray(images[i]).save(gallery / f'{labels[i]}_{i:02d}.png')
    if i < 3:
      Image.fromarray(images[i]).save(queries / f'{i:02d}.png')
  out = tmp_path / 'out' / 'feats.npz'
  proc = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.features', '--workdir', workdir,
       '--images', str(queries), '--layer', 'fc7', '--out', str(out),
       '--neighbours', '4', '--gallery', str(gallery)], cwd=ROOT,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'), capture_output=True,
      text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with np.load(out) as f:
    assert f['features'].shape == (3, 16)
    assert f['neighbours'].shape == (3, 4)
    # Each query is in the gallery: its nearest neighbour, at distance 0.
    nearest = [os.path.basename(f['gallery_paths'][j])
               for j in f['neighbours'][:, 0]]
    assert [n[-6:] for n in nearest] == ['00.png', '01.png', '02.png']
    np.testing.assert_allclose(f['distances'][:, 0], 0, atol=1e-3)
    assert (np.diff(f['distances'], axis=1) >= 0).all()
  with open(tmp_path / 'out' / 'feats.neighbours.json') as f:
    listing = json.load(f)
  assert len(listing) == 3 and len(listing[0]['neighbours']) == 4

  proc = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.features', '--workdir',
       str(tmp_path), '--images', str(queries), '--out', str(out)], cwd=ROOT,
      capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert 'neither a workdir' in proc.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_figures(run, tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from alexnet_jax import viz  # pylint: disable=g-import-not-at-top
  workdir, config, _ = run
  images, labels = validation(config)
  folder = tmp_path / 'images'
  folder.mkdir()
  for i in range(6):
    Image.fromarray(images[i]).save(folder / f'{i}.png')
  out = tmp_path / 'figures'
  proc = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.viz', '--workdir', workdir,
       '--out', str(out), '--images', str(folder), '--gallery', str(folder),
       '--neighbours', '3'], cwd=ROOT,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'), capture_output=True,
      text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for name in ('conv1_kernels', 'curves', 'top5', 'retrieval'):
    png = np.asarray(Image.open(out / f'{name}.png'))
    assert png.shape[0] > 100 and png.shape[1] > 100 and png.std() > 0, name
  # The run saved its class names for the top-5 labels.
  assert workdir_lib.class_names(workdir, 10) == [str(i) for i in range(10)]
  # Figure 4 without photos: with the queries as the gallery, each query's
  # nearest is itself, at fc7 distance 0, and the rest are farther.
  with open(out / 'figure4.json') as f:
    table = json.load(f)
  assert [q['image'] for q in table['queries']] == [
      f'{i}.png' for i in range(6)]
  for q in table['queries']:
    assert len(q['top5']) == 5 and q['label'] is None
    near = q['neighbours']
    assert near[0]['image'] == q['image'] and near[0]['fc7_distance'] < 1e-2
    assert [n['fc7_distance'] for n in near] == sorted(
        n['fc7_distance'] for n in near) and len(near) == 3

  # Figure 3's grid: every kernel scaled to [0, 1] in its own cell.
  kernels = np.random.RandomState(0).randn(11, 11, 3, 48)
  grid = viz.kernel_grid(kernels, cols=8)
  assert grid.shape == (6 * 12 + 1, 8 * 12 + 1, 3)
  cell = grid[1:12, 1:12]
  assert cell.min() == 0 and cell.max() == 1
  records = [{'split': 'train', 'epoch': e, 'lr': lr} for e, lr in
             ((1, 0.01), (2, 0.01), (3, 0.001), (4, 0.001), (5, 1e-4))]
  assert viz.lr_drops(records) == [3, 5]


@pytest.mark.slow
def test_ensemble_averages_the_members_softmax(run, tmp_path):
  from alexnet_jax import ensemble  # pylint: disable=g-import-not-at-top
  workdir, config, result = run
  single = ensemble.evaluate([workdir])
  assert single['top1_err'] == pytest.approx(result['top1_err'], abs=1e-6)
  other = str(tmp_path / 'other')
  second = tiny_config(config.data_dir)
  second.seed, second.num_train_steps = 1, 4
  train.train_and_evaluate(second, other)  # Centre crop, its own seed.

  both = ensemble.evaluate([workdir, other], crops=1)
  images, labels = validation(config)
  probs = np.mean([features.load(w).extract(images, 'probs', crops=1)
                   for w in (workdir, other)], axis=0)
  assert both['num_examples'] == 359
  assert both['top1_err'] == pytest.approx(
      np.mean(probs.argmax(1) != labels), abs=1e-6)
  assert both['members'][1]['path'] == other
  # --config.eval_crops is --crops.
  assert ensemble.main(['--workdirs', workdir, other,
                        '--config.eval_crops=1']) == 0
  assert ensemble.evaluate([workdir, other], overrides=[
      '--config.eval_crops=1'])['top1_err'] == both['top1_err']
  proc = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.ensemble', '--workdirs', other],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(proc.stdout)['top1_err'] == both['members'][1]['top1_err']


class Payload:
  """A pickle that runs a shell command when it is loaded."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


def test_nothing_in_a_workdir_is_executed(run, tmp_path):
  # Restoring a workdir unpickles nothing: payloads beside the checkpoints
  # stay inert, and a stats.npz carrying one is refused in one line.
  import pickle  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'copy')
  shutil.copytree(run[0], workdir)
  marker = tmp_path / 'pwned'
  step = sorted(os.listdir(os.path.join(workdir, 'checkpoints')))[-1]
  for where in ('payload.pkl', os.path.join('checkpoints', 'payload.pkl'),
                os.path.join('checkpoints', step, 'payload.pkl')):
    with open(os.path.join(workdir, where), 'wb') as f:
      pickle.dump(Payload(marker), f)
  net = features.load(workdir)
  assert net.extract(np.zeros((1, 72, 72, 3), np.uint8)).shape[0] == 1
  np.savez(os.path.join(workdir, 'stats.npz'),
           mean=np.array([Payload(marker)], dtype=object))
  with pytest.raises(workdir_lib.WorkdirError, match='not loaded'):
    features.load(workdir)
  assert not marker.exists()


@pytest.mark.slow
def test_a_decompression_bomb_is_refused_with_bounded_memory(run, tmp_path):
  # A PNG of about 110 kB declaring 30000 x 30000 pixels: the features
  # command refuses it from its header, in one line, without the gigabytes
  # decoding would take; --max_image_pixels changes the limit.
  images = tmp_path / 'images'
  images.mkdir()
  (images / 'bomb.png').write_bytes(bomb_png())
  measure = ('import resource, runpy, sys; sys.argv = sys.argv[1:]\n'
             'try:\n'
             "  runpy.run_module('alexnet_jax.features', run_name='__main__')\n"
             'except SystemExit as e:\n'
             '  code = e.code\n'
             "print('tensorflow' in sys.modules)\n"
             'print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n'
             'sys.exit(code)\n')
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', XLA_FLAGS='')
  args = [sys.executable, '-c', measure, 'features', '--workdir', run[0],
          '--images', str(images), '--out', str(tmp_path / 'f.npz')]
  proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300, check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].endswith(
      'bomb.png: 900,000,000 pixels is above the limit of 89,478,485 '
      '(max_image_pixels to raise it).')
  peak_mb = int(proc.stdout.split()[-1]) / 1024
  # Refused from the header before TensorFlow (seconds to import) is loaded.
  assert proc.stdout.split()[-2] == 'False', proc.stdout
  # The same command on an ordinary image: decoding the bomb would add
  # 2,700 MB (30000 x 30000 x 3 bytes) to that.
  normal = tmp_path / 'normal'
  normal.mkdir()
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.new('RGB', (500, 375)).save(normal / 'photo.png')
  ok = subprocess.run(args[:-4] + ['--images', str(normal), '--out',
                                   str(tmp_path / 'f.npz')],
                      cwd=ROOT, env=env, capture_output=True, text=True,
                      timeout=300, check=False)
  assert ok.returncode == 0, ok.stderr[-2000:]
  baseline_mb = int(ok.stdout.split()[-1]) / 1024
  assert peak_mb < baseline_mb + 500, (peak_mb, baseline_mb)
  proc = subprocess.run(args + ['--max_image_pixels=1000'], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300,
                        check=False)
  assert 'above the limit of 1,000' in proc.stderr


def test_nearest_is_exact_in_blocks():
  rng = np.random.default_rng(0)
  q = rng.normal(size=(70, 6)).astype(np.float32)
  g = rng.normal(size=(300, 6)).astype(np.float32)
  g[200] = g[3]  # A tie: the lower index comes first.
  q[5] = g[3]
  d2 = ((q[:, None].astype(np.float64) - g[None]) ** 2).sum(-1)
  want = np.argsort(d2, axis=1, kind='stable')[:, :7]
  idx, dist = features.nearest(q, g, 7, block=16, chunk=32)
  np.testing.assert_array_equal(idx, want)
  np.testing.assert_allclose(dist, np.sqrt(np.take_along_axis(d2, want, 1)),
                             rtol=1e-9, atol=1e-6)
  assert list(idx[5, :2]) == [3, 200]
  # Ties within one chunk, across the k-th place: the lowest indices.
  g[40:60] = q[0]
  idx, _ = features.nearest(q, g, 3, block=16, chunk=32)
  assert list(idx[0]) == [40, 41, 42]
  assert features.nearest(q, g[:4], 7)[0].shape == (70, 4)  # k > gallery.


MEMORY = r'''
import resource, sys
import numpy as np
from alexnet_jax import features
q = np.random.default_rng(0).normal(size=(2000, 64)).astype(np.float32)
g = np.random.default_rng(1).normal(size=(50000, 64)).astype(np.float32)
features.nearest(q[:10], g[:10], 5)  # Warm up numpy's paths.
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
features.nearest(q, g, 5)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024)  # ru_maxrss is in kB on Linux.
'''


@pytest.mark.skipif(sys.platform != 'linux', reason='ru_maxrss units')
def test_nearest_memory_does_not_grow_with_the_gallery():
  # 2,000 queries x 50,000 gallery rows: the dense float64 distance matrix
  # alone is 800 MB. The chunked search must peak at a tenth of that or less
  # beyond the features (measured as the growth of peak resident memory).
  proc = subprocess.run([sys.executable, '-c', MEMORY], cwd=ROOT,
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'), check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  grown = int(proc.stdout.split()[-1])
  dense = 2000 * 50000 * 8
  assert grown * 10 <= dense, (grown, dense)


def test_folder_images_are_labelled_by_their_class_subfolder(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(0)
  for rel in ('a/0.png', 'a/1.png', 'b/0.png', 'b/1.png', 'loose.png'):
    (tmp_path / rel).parent.mkdir(exist_ok=True)
    Image.fromarray(rng.randint(0, 256, (20, 30, 3), np.uint8)).save(
        tmp_path / rel)
  images, folders = features.folder_images(str(tmp_path), 16)
  assert images.shape == (5, 16, 16, 3) and images.dtype == np.uint8
  assert folders == ['a', 'a', 'b', 'b', None]
  _, spread = features.folder_images(str(tmp_path), 16, limit=2)
  assert spread == ['a', 'b']  # Evenly over the sorted files.


def test_features_of_another_architecture_come_from_its_registry_entry():
  # The four-layer CNN: its own layers, without a tower axis to merge.
  from alexnet_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  from alexnet_jax.configs import figure1_cifar10  # pylint: disable=g-import-not-at-top
  from alexnet_jax.datasets import stats as stats_lib  # pylint: disable=g-import-not-at-top
  config = figure1_cifar10.get_config()
  module = model_lib.create_model(config.model)
  x = np.random.RandomState(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
  params = module.init(jax.random.key(0), x)['params']
  net = features.Features(config, params,
                          stats_lib.Stats.neutral(config.image_size))
  assert net.layers == ('conv1', 'conv2', 'conv3', 'logits', 'probs')
  _, feats = module.apply({'params': params}, x, capture=True)
  got = net.extract(x, layer='conv2', preprocess=False)
  np.testing.assert_allclose(got, feats['conv2'], rtol=1e-5, atol=1e-5)
  with pytest.raises(features.FeaturesError, match="'fc7' is unknown"):
    net.extract(x, layer='fc7', preprocess=False)
