"""Imported public weights give the same outputs as their own frameworks."""

import os

import numpy as np
import pytest

from alexnet_jax import features
from alexnet_jax import pretrained
from tests.helpers import ROOT

RNG = np.random.RandomState(0)


def images256(n=3):
  return RNG.randint(0, 256, (n, 256, 256, 3)).astype(np.uint8)


def he(*shape, fan_in):
  return (RNG.randn(*shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


# ---- Caffe: an independent numpy forward, straight from the npy arrays. ----

def np_conv(x, w, b, stride=1, pad=0, groups=1):
  """NHWC x, HWIO w with grouped input channels (Caffe's `group`)."""
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  kh, kw, cin, cout = w.shape
  n, h, wd, _ = x.shape
  oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
  outs = []
  for g in range(groups):
    xg = x[..., g * cin:(g + 1) * cin]
    wg = w[..., g * cout // groups:(g + 1) * cout // groups]
    cols = np.empty((n, oh, ow, kh, kw, cin), np.float32)
    for i in range(kh):
      for j in range(kw):
        cols[:, :, :, i, j] = xg[:, i:i + stride * oh:stride,
                                 j:j + stride * ow:stride]
    outs.append(cols.reshape(n * oh * ow, -1) @ wg.reshape(-1, wg.shape[-1]))
  return np.concatenate(outs, -1).reshape(n, oh, ow, cout) + b


def np_lrn_caffe(x, n=5, alpha=1e-4, beta=0.75, k=1.0):
  sq = np.pad(x ** 2, ((0, 0), (0, 0), (0, 0), (n // 2, n // 2)))
  s = sum(sq[..., i:i + x.shape[-1]] for i in range(n))
  return x / (k + alpha / n * s) ** beta


def np_pool(x, size=3, stride=2):
  n, h, w, c = x.shape
  oh, ow = (h - size) // stride + 1, (w - size) // stride + 1
  out = np.full((n, oh, ow, c), -np.inf, np.float32)
  for i in range(size):
    for j in range(size):
      out = np.maximum(out, x[:, i:i + stride * oh:stride,
                              j:j + stride * ow:stride])
  return out


def caffe_forward(weights, bgr):
  relu = lambda v: np.maximum(v, 0)
  x = np_pool(np_lrn_caffe(relu(np_conv(bgr, *weights['conv1'], stride=4))))
  x = np_pool(np_lrn_caffe(relu(np_conv(x, *weights['conv2'], pad=2,
                                        groups=2))))
  x = relu(np_conv(x, *weights['conv3'], pad=1))
  x = relu(np_conv(x, *weights['conv4'], pad=1, groups=2))
  x = np_pool(relu(np_conv(x, *weights['conv5'], pad=1, groups=2)))
  x = x.reshape(len(x), -1)
  x = relu(x @ weights['fc6'][0] + weights['fc6'][1])
  x = relu(x @ weights['fc7'][0] + weights['fc7'][1])
  return x @ weights['fc8'][0] + weights['fc8'][1]


def caffe_weights(c=(8, 16, 24, 24, 16), fc=32, classes=10):
  shapes = {'conv1': (11, 11, 3, c[0]), 'conv2': (5, 5, c[0] // 2, c[1]),
            'conv3': (3, 3, c[1], c[2]), 'conv4': (3, 3, c[2] // 2, c[3]),
            'conv5': (3, 3, c[3] // 2, c[4]), 'fc6': (36 * c[4], fc),
            'fc7': (fc, fc), 'fc8': (fc, classes)}
  return {name: [he(*s, fan_in=int(np.prod(s[:-1]))),
                 (RNG.randn(s[-1]) * 0.1).astype(np.float32)]
          for name, s in shapes.items()}


def test_caffe_import_matches_a_reference_forward(tmp_path, capsys):
  weights = caffe_weights()
  path = str(tmp_path / 'bvlc_alexnet.npy')
  np.save(path, weights, allow_pickle=True)
  workdir = str(tmp_path / 'caffe')
  assert pretrained.main(['--format', 'caffe', '--weights', path,
                          '--workdir', workdir]) == 0
  net = features.load(workdir)
  assert net.config.model.input_size == 227
  assert net.config.model.lrn.alpha_over_n and net.config.model.lrn.k == 1
  images = images256()
  ours = net.extract(images, layer='logits')  # Centre 227 crop.
  crop = images[:, 14:241, 14:241].astype(np.float32)
  bgr = crop[..., ::-1] - np.array(pretrained.CAFFE_MEAN_BGR, np.float32)
  reference = caffe_forward(weights, bgr)
  assert np.abs(reference).max() > 1  # LRN and every layer matter here.
  np.testing.assert_allclose(ours, reference, rtol=2e-4,
                             atol=2e-4 * np.abs(reference).max())

  # Wrong files: one line naming the layer and the shapes.
  weights['conv4'][0] = weights['conv4'][0][:, :, :5]
  np.save(path, weights, allow_pickle=True)
  assert pretrained.main(['--format', 'caffe', '--weights', path,
                          '--workdir', str(tmp_path / 'bad')]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and 'conv4' in err[0] and '(3, 3, 5, 24)' in err[0]
  assert '(3, 3, 12, 24)' in err[0]
  # An existing import is never overwritten.
  assert pretrained.main(['--format', 'caffe', '--weights', path,
                          '--workdir', workdir]) == 2


def test_torchvision_import_matches_torch(tmp_path, capsys):
  torch = pytest.importorskip('torch')
  nn = torch.nn
  torch.manual_seed(0)
  w = (16, 32, 48, 32, 32)

  class AlexNet(nn.Module):
    """torchvision.models.AlexNet's structure and parameter names."""

    def __init__(self):
      super().__init__()
      self.features = nn.Sequential(
          nn.Conv2d(3, w[0], 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
          nn.Conv2d(w[0], w[1], 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
          nn.Conv2d(w[1], w[2], 3, padding=1), nn.ReLU(),
          nn.Conv2d(w[2], w[3], 3, padding=1), nn.ReLU(),
          nn.Conv2d(w[3], w[4], 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
      self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
      self.classifier = nn.Sequential(
          nn.Dropout(), nn.Linear(w[4] * 36, 64), nn.ReLU(), nn.Dropout(),
          nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
      x = torch.flatten(self.avgpool(self.features(x)), 1)
      return self.classifier(x)

  net_t = AlexNet().eval()
  path = str(tmp_path / 'alexnet.pth')
  torch.save(net_t.state_dict(), path)
  workdir = str(tmp_path / 'tv')
  assert pretrained.main(['--format', 'torchvision', '--weights', path,
                          '--workdir', workdir]) == 0
  net = features.load(workdir)
  assert net.config.model.layout == 'single_tower'
  assert not net.config.model.lrn.enabled
  images = images256()
  ours = net.extract(images, layer='logits')
  # torchvision's eval transform on the same images: centre 224, 0..1, norm.
  x = images[:, 16:240, 16:240].astype(np.float32) / 255
  x = (x - pretrained.TORCHVISION_MEAN) / pretrained.TORCHVISION_STD
  with torch.no_grad():
    theirs = net_t(torch.from_numpy(x.transpose(0, 3, 1, 2).astype(
        np.float32))).numpy()
  np.testing.assert_allclose(ours, theirs, rtol=1e-4,
                             atol=1e-4 * np.abs(theirs).max())

  state = net_t.state_dict()
  del state['classifier.4.weight']
  torch.save(state, path)
  assert pretrained.main(['--format', 'torchvision', '--weights', path,
                          '--workdir', str(tmp_path / 'bad')]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and 'classifier.4.weight' in err[0] and 'fc7' in err[0]


class Payload:
  """What a malicious weights file carries: a shell command run on load."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    import os  # pylint: disable=g-import-not-at-top
    return (os.system, (f'touch {self.marker}',))


def run_import(fmt, weights, workdir):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  return subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.pretrained', '--format', fmt,
       '--weights', weights, '--workdir', workdir], cwd=ROOT,
      capture_output=True, text=True, timeout=300, check=False)


def test_a_caffe_file_with_a_payload_runs_nothing(tmp_path):
  marker = tmp_path / 'pwned'
  path = str(tmp_path / 'bvlc_alexnet.npy')
  weights = caffe_weights()
  weights['conv1'] = [Payload(marker), weights['conv1'][1]]
  np.save(path, weights, allow_pickle=True)
  with pytest.raises(pretrained.WeightsError, match='posix.system'):
    pretrained.load_npy_dict(path)
  assert not marker.exists()
  proc = run_import('caffe', path, str(tmp_path / 'w'))
  assert proc.returncode == 2 and not marker.exists()
  assert 'Traceback' not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert path in last and 'system' in last and 'not loaded' in last
  assert not (tmp_path / 'w').exists()
  # Other things that are not a dict of arrays: one line each.
  np.save(path, np.zeros(3))
  with pytest.raises(pretrained.WeightsError, match='not a dict'):
    pretrained.load_npy_dict(path)
  np.save(path, {'conv1': ['text']}, allow_pickle=True)
  with pytest.raises(pretrained.WeightsError, match='numeric arrays'):
    pretrained.load_npy_dict(path)


def test_a_torchvision_file_with_a_payload_runs_nothing(tmp_path):
  torch = pytest.importorskip('torch')
  marker = tmp_path / 'pwned'
  path = str(tmp_path / 'alexnet.pth')
  torch.save({'features.0.weight': torch.zeros(2), 'x': Payload(marker)}, path)
  proc = run_import('torchvision', path, str(tmp_path / 'w'))
  assert proc.returncode == 2 and not marker.exists()
  assert 'Traceback' not in proc.stderr
  assert 'is not a PyTorch state_dict file' in proc.stderr.splitlines()[-1]


def test_an_imagenet_import_carries_its_classes(tmp_path):
  # 1000 outputs: ILSVRC-2012's classes, as WordNet ids in label order
  # (classes.json), shown by their names in the figures.
  from alexnet_jax import imagenet_classes  # pylint: disable=g-import-not-at-top
  from alexnet_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / 'bvlc_alexnet.npy')
  np.save(path, caffe_weights(classes=1000), allow_pickle=True)
  workdir = str(tmp_path / 'caffe')
  assert pretrained.main(['--format', 'caffe', '--weights', path,
                          '--workdir', workdir]) == 0
  names = workdir_lib.class_names(workdir, 1000)
  assert len(set(names)) == 1000 and names == sorted(names)
  assert names[:2] == ['n01440764', 'n01443537'] and names[-1] == 'n15075141'
  assert imagenet_classes.readable(names[:2] + ['x']) == ('tench', 'goldfish',
                                                          'x')
  # The order is tfds imagenet2012's, so the folder and tars routes agree.
  tfds_labels = os.path.join(
      os.path.dirname(__import__('tensorflow_datasets').__file__),
      'datasets', 'imagenet2012', 'labels.txt')
  if os.path.exists(tfds_labels):
    with open(tfds_labels) as f:
      assert names == f.read().split()
