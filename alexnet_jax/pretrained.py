"""Import the well-known public AlexNet weights as alexnet_jax checkpoints.

  python -m alexnet_jax.pretrained --format caffe --weights bvlc_alexnet.npy \
      --workdir runs/bvlc_alexnet
  python -m alexnet_jax.pretrained --format torchvision --weights alexnet.pth \
      --workdir runs/torchvision_alexnet

caffe: `bvlc_alexnet.npy`, the Caffe model converted to numpy (a dict layer ->
  [weights, biases]; conv kernels HWIO with grouped input channels, e.g. conv2
  (5, 5, 48, 256); fc6 rows in height-width-channel order). It is the paper's
  two-tower net, so it becomes the `two_towers` layout with Caffe's
  conventions: 227 inputs (conv1 unpadded), LRN with k=1 and alpha / n across
  both towers' maps (`model.lrn.across_towers`; the paper's GPUs each
  normalised their own), BGR
  0..255 minus the mean pixel (the BGR order is folded into conv1's kernel, so
  the network still takes RGB images).
torchvision: `alexnet.pth`, torchvision's `alexnet` state_dict (features.0 ...
  classifier.6; one tower, widths 64-192-384-256-256, no LRN, inputs scaled to
  0..1 and normalised per channel: the per-channel scale is folded into conv1).

Layer widths are read from the files, so narrower variants import too. The
result is a workdir with checkpoint 0 (parameters, a fresh optimiser state, the
config) and `stats.npz`, which `alexnet_jax.features`, the figures and
fine-tuning accept like any training run's.
"""

import os
import sys
from typing import Dict, Tuple

from absl import logging
import jax
import ml_collections
import numpy as np

from alexnet_jax import cli
from alexnet_jax import errors
from alexnet_jax import imagenet_classes
from alexnet_jax import model as model_lib
from alexnet_jax.datasets import stats as stats_lib

# bvlc_alexnet's mean pixel (Caffe's ilsvrc_2012_mean.npy averaged), BGR.
CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)
# torchvision's ImageNet normalisation, RGB, for inputs in 0..1.
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)
TORCHVISION_KEYS = {'conv1': 'features.0', 'conv2': 'features.3',
                    'conv3': 'features.6', 'conv4': 'features.8',
                    'conv5': 'features.10', 'fc6': 'classifier.1',
                    'fc7': 'classifier.4', 'fc8': 'classifier.6'}


class WeightsError(errors.UserError):
  """A weights file that is not in the expected format."""


def _expect(name: str, array, shape: Tuple, what: str):
  if tuple(array.shape) != tuple(shape):
    raise WeightsError(f'{what}: layer {name} has shape {tuple(array.shape)}, '
                       f'expected {tuple(shape)}; is this the right file and '
                       '--format?')


def _base_config() -> ml_collections.ConfigDict:
  from alexnet_jax.configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.mesh.data, config.mesh.model = 1, 1
  config.eval_crops = 1  # Both references report single centre-crop results.
  return config


def caffe_params(weights: Dict[str, Tuple[np.ndarray, np.ndarray]]):
  """(config, params) of the two-tower net from bvlc_alexnet.npy's dict."""
  what = 'bvlc_alexnet.npy'
  missing = [l for l in model_lib.LAYERS if l not in weights]
  if missing:
    raise WeightsError(f'{what}: no layer(s) {", ".join(missing)}; expected a '
                       f'dict with {", ".join(model_lib.LAYERS)}.')
  w = {}
  for name in model_lib.LAYERS:
    try:
      kernel, bias = (np.asarray(a, np.float32) for a in weights[name])
    except (TypeError, ValueError) as e:
      raise WeightsError(f'{what}: layer {name} is not a [weights, biases] '
                         'pair.') from e
    w[name] = (kernel, bias)
  c1 = w['conv1'][0].shape[-1]
  _expect('conv1', w['conv1'][0], (11, 11, 3, c1), what)
  c2 = w['conv2'][0].shape[-1]
  _expect('conv2', w['conv2'][0], (5, 5, c1 // 2, c2), what)
  c3 = w['conv3'][0].shape[-1]
  _expect('conv3', w['conv3'][0], (3, 3, c2, c3), what)
  c4 = w['conv4'][0].shape[-1]
  _expect('conv4', w['conv4'][0], (3, 3, c3 // 2, c4), what)
  c5 = w['conv5'][0].shape[-1]
  _expect('conv5', w['conv5'][0], (3, 3, c4 // 2, c5), what)
  fc = w['fc6'][0].shape[-1]
  _expect('fc6', w['fc6'][0], (6 * 6 * c5, fc), what)
  _expect('fc7', w['fc7'][0], (fc, fc), what)
  classes = w['fc8'][0].shape[-1]
  _expect('fc8', w['fc8'][0], (fc, classes), what)
  for name, (kernel, bias) in w.items():
    _expect(name + ' biases', bias, (kernel.shape[-1],), what)
  if classes % 2:
    raise WeightsError(f'{what}: fc8 has {classes} outputs; two towers need '
                       'an even number.')

  config = _base_config()
  m = config.model
  m.layout, m.num_classes = 'two_towers', classes
  m.conv_features, m.fc_features = (c1, c2, c3, c4, c5), fc
  m.input_size, m.conv1_padding = 227, 0
  m.lrn.k, m.lrn.alpha, m.lrn.beta, m.lrn.n = 1.0, 1e-4, 0.75, 5
  m.lrn.alpha_over_n = True
  m.lrn.across_towers = True  # Caffe's norm1 / norm2 see all 96 / 256 maps.
  m.init = 'caffe'
  config.augment.scale = 1.0

  def towers(a):  # Split the output units (last axis) into the two towers.
    return np.stack(np.split(a, 2, axis=-1))

  kernel1 = w['conv1'][0][:, :, ::-1, :]  # BGR -> RGB input channels.
  params = {'conv1': {'kernel': towers(kernel1)}}
  for name in model_lib.LAYERS[1:]:
    params[name] = {'kernel': towers(w[name][0])}
  for name in model_lib.LAYERS:
    params[name]['bias'] = towers(w[name][1])
  mean = np.array(CAFFE_MEAN_BGR[::-1], np.float32)  # RGB.
  return config, params, mean


def torchvision_params(state: Dict[str, np.ndarray]):
  """(config, params) of the one-tower net from torchvision's state_dict."""
  what = 'torchvision alexnet state_dict'
  w = {}
  for name, key in TORCHVISION_KEYS.items():
    for part in ('weight', 'bias'):
      if f'{key}.{part}' not in state:
        raise WeightsError(f'{what}: no {key}.{part} (layer {name}); expected '
                           "the keys of torchvision.models.alexnet()'s "
                           'state_dict.')
    w[name] = (np.asarray(state[f'{key}.weight'], np.float32),
               np.asarray(state[f'{key}.bias'], np.float32))
  widths = []
  cin = 3
  for name, k in zip(model_lib.CONV_LAYERS, (11, 5, 3, 3, 3)):
    cout = w[name][0].shape[0]
    _expect(name, w[name][0], (cout, cin, k, k), what)
    widths.append(cout)
    cin = cout
  fc = w['fc6'][0].shape[0]
  _expect('fc6', w['fc6'][0], (fc, cin * 36), what)
  _expect('fc7', w['fc7'][0], (fc, fc), what)
  classes = w['fc8'][0].shape[0]
  _expect('fc8', w['fc8'][0], (classes, fc), what)
  for name, (kernel, bias) in w.items():
    _expect(name + ' bias', bias, (kernel.shape[0],), what)

  config = _base_config()
  m = config.model
  m.layout, m.num_classes = 'single_tower', classes
  m.conv_features, m.fc_features = tuple(widths), fc
  m.input_size, m.conv1_padding = 224, 2
  m.lrn.enabled = False
  config.augment.scale = 1.0

  params = {}
  for name in model_lib.CONV_LAYERS:  # OIHW -> HWIO, one tower.
    params[name] = {'kernel': w[name][0].transpose(2, 3, 1, 0)[None]}
  # x01 = x / 255; (x01 - mean) / std == (x - 255 mean) / (255 std): the
  # division goes into conv1's input channels (exact: the zero padding of a
  # normalised image is zero in both).
  std = np.array(TORCHVISION_STD, np.float32)
  params['conv1']['kernel'] = params['conv1']['kernel'] / (
      255.0 * std)[None, None, None, :, None]
  # fc6 reads pool5 flattened as (C, H, W) in torch, (H, W, C) here.
  k6 = w['fc6'][0].reshape(fc, cin, 6, 6).transpose(2, 3, 1, 0)
  params['fc6'] = {'kernel': k6.reshape(1, 36 * cin, fc)}
  params['fc7'] = {'kernel': w['fc7'][0].T[None]}
  params['fc8'] = {'kernel': w['fc8'][0].T[None]}
  for name in model_lib.LAYERS:
    params[name]['bias'] = w[name][1][None]
  mean = 255.0 * np.array(TORCHVISION_MEAN, np.float32)
  return config, params, mean


# What bvlc_alexnet.npy's pickle may name: numpy arrays and dtypes (and the
# latin-1 bytes of a Python 2 pickle). Dicts, lists, tuples and strings need
# no names. Anything else would be code to run.
_NPY_ALLOWED = frozenset([
    ('numpy.core.multiarray', '_reconstruct'),
    ('numpy._core.multiarray', '_reconstruct'),
    ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
    ('numpy.core.numeric', '_frombuffer'), ('numpy._core.numeric', '_frombuffer'),
    ('numpy', 'ndarray'), ('numpy', 'dtype'), ('_codecs', 'encode'),
])


def load_npy_dict(path: str) -> dict:
  """A numpy .npy file holding a dict (as bvlc_alexnet.npy does), read
  without running code: its pickle may build only numpy arrays, dicts,
  lists, tuples and strings; anything else raises WeightsError naming it."""
  import pickle  # pylint: disable=g-import-not-at-top

  class Restricted(pickle.Unpickler):

    def find_class(self, module, name):
      if (module, name) in _NPY_ALLOWED:
        return super().find_class(module, name)
      raise WeightsError(
          f'{path} contains a reference to {module}.{name}, which a weights '
          'file does not need: it could run code, so it was not loaded. Use '
          'the original bvlc_alexnet.npy.')

  try:
    with open(path, 'rb') as f:
      version = np.lib.format.read_magic(f)
      read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                     else np.lib.format.read_array_header_2_0)
      shape, _, dtype = read_header(f)
      if dtype != np.dtype(object) or shape != ():
        raise WeightsError(f'{path} holds a {dtype} array of shape {shape}, '
                           'not a dict layer -> [weights, biases].')
      array = Restricted(f, encoding='latin1').load()
  except WeightsError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise WeightsError(f'{path} is not a numpy dict file like '
                       f'bvlc_alexnet.npy ({type(e).__name__}).') from e
  weights = array.item() if isinstance(array, np.ndarray) else array
  if not isinstance(weights, dict):
    raise WeightsError(f'{path} holds a {type(weights).__name__}, not a '
                       'dict layer -> [weights, biases].')
  for key, value in weights.items():
    items = value if isinstance(value, (list, tuple)) else [value]
    if not isinstance(key, str) or not all(
        isinstance(v, np.ndarray) and v.dtype != object for v in items):
      raise WeightsError(f'{path}: entry {key!r} is not a list of numeric '
                         'arrays, as bvlc_alexnet.npy holds.')
  return weights


def read_weights(fmt: str, path: str):
  if not os.path.exists(path):
    raise WeightsError(f'{path} does not exist; pass --weights FILE.')
  if fmt == 'caffe':
    return caffe_params(load_npy_dict(path))
  if fmt == 'torchvision':
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise WeightsError('reading a .pth file needs PyTorch: pip install '
                         "-e '.[torch]'.") from e
    try:
      state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # pylint: disable=broad-except
      raise WeightsError(f'{path} is not a PyTorch state_dict file '
                         f'({type(e).__name__}).') from e
    if not isinstance(state, dict):
      raise WeightsError(f'{path} holds a {type(state).__name__}, not a '
                         'state_dict.')
    state = {k: v.detach().cpu().numpy() for k, v in state.items()
             if hasattr(v, 'detach')}
    return torchvision_params(state)
  raise WeightsError(f'--format {fmt!r}: use caffe or torchvision.')


def write_workdir(workdir: str, config, params, mean_pixel) -> str:
  """Checkpoint 0 (params + fresh optimiser state + config) and stats.npz."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from alexnet_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from alexnet_jax import optim  # pylint: disable=g-import-not-at-top
  from alexnet_jax import steps as steps_lib  # pylint: disable=g-import-not-at-top
  from alexnet_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  model = model_lib.create_model(config.model)
  expected = model_lib.param_shapes(model)
  got = jax.tree.map(np.shape, params)
  want = jax.tree.map(lambda s: s.shape, expected)
  if got != want:
    raise WeightsError(f'converted shapes {got} do not match the model '
                       f'{want}; please report this.')
  params = jax.tree.map(jnp.asarray, params)
  tx, _ = optim.create(config, steps_per_epoch=1)
  state = steps_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                               opt_state=tx.init(params))
  try:
    directory = checkpoint.write_imported(workdir, state, config.to_dict())
  except checkpoint.CheckpointError as e:
    raise WeightsError(str(e)) from e
  size = config.image_size
  stats = stats_lib.Stats.neutral(size)._replace(
      mean=np.broadcast_to(np.asarray(mean_pixel, np.float32),
                           (size, size, 3)).copy())
  # The imported network's own, over whatever an earlier run left here.
  workdir_lib.save_stats(workdir, stats, overwrite=True)
  workdir_lib.prepare(workdir, config, overwrite=True)
  if config.model.num_classes == len(imagenet_classes.wnids()):
    # ILSVRC-2012's classes, in the label order both files were trained in.
    workdir_lib.save_class_names(workdir, list(imagenet_classes.wnids()),
                                 overwrite=True)
  return directory


def main(argv=None):
  parser = cli.ArgumentParser(
      prog='python -m alexnet_jax.pretrained',
      description='Import public AlexNet weights as an alexnet_jax workdir.')
  parser.add_argument('--format', required=True,
                      choices=('caffe', 'torchvision'))
  parser.add_argument('--weights', required=True,
                      help='bvlc_alexnet.npy (caffe) or alexnet.pth')
  parser.add_argument('--workdir', required=True, help='a new directory')
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.WARNING)
  try:
    config, params, mean = read_weights(args.format, args.weights)
    where = write_workdir(args.workdir, config, params, mean)
  except errors.UserError as e:
    return cli.error(str(e), prog='alexnet_jax.pretrained')
  print(f'Imported {args.weights} ({args.format}, {config.model.layout}, '
        f'{config.model.num_classes} classes) into {where}/0.')
  return 0


if __name__ == '__main__':
  sys.exit(main())
