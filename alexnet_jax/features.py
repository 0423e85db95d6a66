"""Features from a trained network: any layer, and nearest neighbours.

  import alexnet_jax.features as features
  net = features.load('runs/digits')            # a workdir or one checkpoint
  fc7 = net.extract(['a.jpg', 'b.png'])          # (2, 4096 * width)
  probs = net.extract(images, layer='probs')     # uint8 arrays of any size

Preprocessing is the paper's evaluation path: shorter side resized to the
training `image_size`, centre square, mean image subtracted, then the centre
crop or the 10 crops (`crops=10`; features averaged over the views, and for
`probs` the softmax averaged, as in the paper's test). Whatever mesh trained
them, the parameters are replicated on this process's devices (or the one
given), and each batch is split over them; image files are decoded by a
thread pool, the next batch while the devices run this one.

Command line (writes the features, and with --neighbours the K nearest gallery
images of each query by Euclidean distance of the layer, the paper's Figure 4
right):

  python -m alexnet_jax.features --workdir runs/digits --images DIR \
      --layer fc7 --out feats.npz [--neighbours 5 --gallery DIR2]
"""

from concurrent import futures as futures_lib
import json
import os
import sys
from typing import List, Optional, Sequence, Tuple, Union

from absl import logging
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np

from alexnet_jax import cli
from alexnet_jax import cpu_kernels
from alexnet_jax import errors
from alexnet_jax import evaluation
from alexnet_jax import model as model_lib
from alexnet_jax import ops
from alexnet_jax import preprocess
from alexnet_jax import progress as progress_lib
from alexnet_jax import workdir as workdir_lib
from alexnet_jax.datasets import stats as stats_lib

# Every layer of the paper's network whose output can be extracted, input to
# output (another architecture's: `Features.layers`, from the registry).
OUTPUTS = ('logits', 'probs')
LAYERS = model_lib.ARCHS['alexnet'].features + OUTPUTS
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.ppm',
                    '.tif', '.tiff')


class FeaturesError(errors.UserError):
  """A checkpoint, image or argument the feature extractor cannot use."""


def saved_stats(workdir: str, mean: str, image_size: int) -> stats_lib.Stats:
  """The statistics the network was trained with (from its workdir; none
  needed where it subtracted no mean: `mean` is augment.mean)."""
  path = os.path.join(workdir, workdir_lib.STATS_FILE)
  if os.path.exists(path):
    return workdir_lib.read_stats(path)
  if mean == 'none':
    return stats_lib.Stats.neutral(image_size)
  raise FeaturesError(
      f'{path} is missing: the mean image the network was trained with. '
      'Rerun the training command on this workdir once (it writes the file '
      'and changes nothing else) or copy it from the training machine.')


def image_files(directory: str) -> List[str]:
  """Every image file under `directory`, sorted."""
  if not os.path.isdir(directory):
    raise FeaturesError(f'{directory} is not a directory of images.')
  out = []
  for root, _, files in os.walk(directory):
    out += [os.path.join(root, f) for f in files
            if f.lower().endswith(IMAGE_EXTENSIONS)]
  if not out:
    raise FeaturesError(f'{directory} holds no images '
                        f'({", ".join(IMAGE_EXTENSIONS)}).')
  return sorted(out)


def folder_images(directory: str, size: int, limit: Optional[int] = None
                  ) -> Tuple[np.ndarray, List[Optional[str]]]:
  """A folder's images, preprocessed to `(N, size, size, 3)` uint8, and each
  one's class subfolder (`DIR/<class>/...`; None for a file directly in DIR).

  `limit` keeps that many, spread evenly over the sorted files (so over the
  classes). Labels by folder name are how ImageNet's extracted folders and
  `image_folder` datasets are laid out: with WordNet ids as the folder
  names, they match an ImageNet import's classes.json.
  """
  paths = image_files(directory)
  if limit and len(paths) > limit:
    paths = [paths[i * len(paths) // limit] for i in range(limit)]
  folders = []
  for p in paths:
    parts = os.path.relpath(p, directory).split(os.sep)
    folders.append(parts[0] if len(parts) > 1 else None)
  return np.stack([load_image(p, size) for p in paths]), folders


def _resize_and_crop(image: np.ndarray, size: int) -> np.ndarray:
  """The training input's host preprocessing, on one decoded image."""
  return preprocess.resize_and_crop(image, size).numpy()


def load_image(item, size: int,
               max_pixels: int = preprocess.MAX_IMAGE_PIXELS) -> np.ndarray:
  """A file path or uint8 array -> the preprocessed `(size, size, 3)` uint8.

  A file whose header declares more than `max_pixels` pixels is refused
  before it is decoded.
  """
  if isinstance(item, (str, os.PathLike)):
    try:
      with open(item, 'rb') as f:
        data = f.read()
      image = preprocess.decode(data, max_pixels)
    except preprocess.ImageTooLarge as e:
      raise FeaturesError(f'image {item}: {e}.') from e
    except Exception as e:  # pylint: disable=broad-except
      raise FeaturesError(f'cannot read image {item} ({type(e).__name__}); '
                          'pass JPEG, PNG, BMP or GIF files.') from e
    return _resize_and_crop(image, size)
  image = np.asarray(item)
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, -1)
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise FeaturesError(f'an image of shape {image.shape}: pass (H, W, 3) '
                        'uint8 arrays, or file paths.')
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, -1)
  image = image[..., :3]
  if image.dtype != np.uint8:
    raise FeaturesError(f'images with preprocess=True must be uint8 0..255, '
                        f'got {image.dtype}; use preprocess=False for '
                        'network-ready float arrays.')
  if image.shape[:2] == (size, size):
    # Already S x S (a store's images): the resize would be by 1, which is
    # the identity (tests/features_test), so TensorFlow is not needed.
    return np.ascontiguousarray(image)
  return _resize_and_crop(image, size)


class Features:
  """A restored network that maps images to any named layer."""

  def __init__(self, config: ml_collections.ConfigDict, params,
               stats: stats_lib.Stats, step: int = 0, path: str = '',
               devices: Optional[Sequence[jax.Device]] = None):
    self.config = config
    self.devices = list(devices or jax.local_devices())
    mesh = Mesh(np.array(self.devices), ('batch',))
    self._replicated = NamedSharding(mesh, P())
    self._split = NamedSharding(mesh, P('batch'))
    self.params = jax.device_put(params, self._replicated)
    self.step = step
    self.path = path
    self.model = model_lib.create_model(config.model)
    self.mean = jnp.asarray(stats.mean, jnp.float32)
    # Image files with more pixels are refused before decoding.
    self.max_pixels = int(config.max_image_pixels)
    self._fns = {}

  @property
  def layers(self) -> Tuple[str, ...]:
    """The layers this network's features can be taken from."""
    return model_lib.arch(self.config.model).features + OUTPUTS

  @property
  def input_size(self) -> int:
    return self.model.input_size

  def _fn(self, layer: str, crops: int, preprocess: bool):
    key = (layer, crops, preprocess)
    if key in self._fns:
      return self._fns[key]
    model = self.model
    scale = float(self.config.augment.scale)  # Read here, not at trace time.

    def run(params, images):
      def layer_of(x):
        logits, feats = model.apply({'params': params}, x, train=False,
                                    capture=True)
        if layer == 'probs':
          return jax.nn.softmax(logits)
        if layer == 'logits':
          return logits
        if isinstance(model, model_lib.AlexNet):  # Towers side by side.
          return ops.merge_towers(feats[layer])
        return feats[layer]

      inputs = (evaluation.views(images, self.mean, scale, model.input_size,
                                 crops)
                if preprocess else images[None])
      return evaluation.average_over_views(layer_of, inputs)

    # Compiled as the train and eval steps are (cpu_kernels.XLA_CPU_OPTIONS).
    self._fns[key] = jax.jit(run, in_shardings=(self._replicated, self._split),
                             out_shardings=self._split,
                             compiler_options=cpu_kernels.compiler_options())
    return self._fns[key]

  def extract(self, images: Union[Sequence, np.ndarray], layer: str = 'fc7',
              preprocess: bool = True, crops: Optional[int] = None,
              batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Maps images to a layer's activations, `(N, ...)` float32.

    Args:
      images: file paths, uint8 arrays `(H, W, 3)` of any size (a list, or one
        `(N, H, W, 3)` array), or with `preprocess=False` network-ready float
        arrays `(N, input_size, input_size, 3)` (mean subtracted, scaled).
      layer: one of `layers` (LAYERS for the paper's network). `fc7` is the
        paper's 4096-d last hidden layer.
      preprocess: apply the paper's evaluation preprocessing.
      crops: 1 (centre) or 10 (the paper's test); default: the config's
        `eval_crops`.
      batch_size: images per jitted call (rounded up to a multiple of the
        number of devices).
      progress: show progress (a bar on a terminal, else a log line every
        30 s).
    """
    if layer not in self.layers:
      raise FeaturesError(f'layer {layer!r} is unknown; use one of '
                          f'{self.layers}.')
    crops = crops or self.config.eval_crops
    if crops not in (1, 10):
      raise FeaturesError(f'crops={crops}: use 1 (centre) or 10 (paper).')
    n = len(images)
    if not n:
      raise FeaturesError('no images given.')
    size = self.config.image_size if preprocess else self.input_size
    fn = self._fn(layer, crops if preprocess else 1, preprocess)
    shards = len(self.devices)
    batch_size = -(-batch_size // shards) * shards  # Splits over devices.
    out = []
    bar = None
    if progress:
      # Lines go to stderr: this is a library call or an argparse CLI,
      # where absl's INFO log may not be shown.
      bar = progress_lib.Progress(
          n, f'{layer} features',
          log=lambda line: print(line, file=sys.stderr, flush=True))
    pool = futures_lib.ThreadPoolExecutor(min(32, os.cpu_count() or 1))

    def decode(start):  # Futures of one batch's images, decoding.
      if not preprocess or start >= n:
        return None
      return [pool.submit(load_image, im, size, self.max_pixels)
              for im in images[start:start + batch_size]]

    try:
      pending = decode(0)
      for start in range(0, n, batch_size):
        chunk = images[start:start + batch_size]
        if preprocess:
          decoding, pending = pending, decode(start + batch_size)
          batch = np.stack([f.result() for f in decoding])
        else:
          batch = np.asarray(chunk, np.float32)
          if batch.shape[1:] != (size, size, 3):
            raise FeaturesError(
                f'preprocess=False needs network-ready images of shape (N, '
                f'{size}, {size}, 3), got {batch.shape}.')
        # One compiled shape for every batch (a single short batch only
        # rounds up to the devices).
        rows = batch_size if n > batch_size else -(-len(batch) // shards) * shards
        if rows > len(batch):
          batch = np.concatenate([batch, np.zeros(
              (rows - len(batch),) + batch.shape[1:], batch.dtype)])
        feats = np.asarray(fn(self.params, batch))
        out.append(feats[:len(chunk)])
        if bar:
          bar.update(len(chunk))
    finally:  # Before any error message, not after it.
      pool.shutdown(wait=True, cancel_futures=True)
      if bar:
        bar.close()
    return np.concatenate(out)


def load(path: str, device=None) -> Features:
  """The network of a workdir (its newest checkpoint) or of one checkpoint,
  on this process's devices (or on `device` alone)."""
  workdir, step = workdir_lib.locate(path)
  params, meta = workdir_lib.read_params(workdir, step, device)
  config = workdir_lib.saved_config(meta, f'checkpoint {step} in {workdir}')
  stats = saved_stats(workdir, config.augment.mean, config.image_size)
  logging.info('Loaded %s step %d (%s, %d parameters).', workdir, step,
               config.model.layout, model_lib.count_params(params))
  return Features(config, params, stats, step, workdir,
                  [device] if device is not None else None)


def nearest(queries: np.ndarray, gallery: np.ndarray, k: int,
            block: int = 512, chunk: int = 4096):
  """(indices, distances) `(Q, k)` of the k nearest gallery rows (Euclidean).

  Exact, in float64, ties to the lower index. Computed `block` queries by
  `chunk` gallery rows at a time, keeping the k best so far: its memory
  beyond the features is about `block * chunk * 24` bytes (48 MB), whatever
  the gallery's size, where the whole distance matrix would be Q x G x 8.
  """
  q_all = queries.reshape(len(queries), -1)
  g_all = gallery.reshape(len(gallery), -1)
  k = min(k, len(g_all))
  g_sq = np.einsum('ij,ij->i', g_all, g_all, dtype=np.float64)
  idx = np.zeros((len(q_all), k), np.int64)
  d2 = np.zeros((len(q_all), k), np.float64)
  for qs in range(0, len(q_all), block):
    q = q_all[qs:qs + block].astype(np.float64)
    q_sq = (q * q).sum(1)[:, None]
    best_d = np.full((len(q), 0), np.inf)
    best_i = np.zeros((len(q), 0), np.int64)
    for gs in range(0, len(g_all), chunk):
      g = g_all[gs:gs + chunk].astype(np.float64)
      d = q_sq - 2 * (q @ g.T) + g_sq[gs:gs + len(g)][None]
      # This chunk's k best, ties to the lower index (a stable sort).
      best = np.argsort(d, axis=1, kind='stable')[:, :k]
      d, ids = np.take_along_axis(d, best, 1), best + gs
      cand_d = np.concatenate([best_d, d], 1)
      cand_i = np.concatenate([best_i, ids], 1)
      # Sorted by distance, then index (np.lexsort: last key first).
      order = np.lexsort((cand_i, cand_d), axis=1)[:, :k]
      best_d = np.take_along_axis(cand_d, order, 1)
      best_i = np.take_along_axis(cand_i, order, 1)
    idx[qs:qs + len(q)], d2[qs:qs + len(q)] = best_i, best_d
  return idx, np.sqrt(np.maximum(d2, 0))


def main(argv=None):
  parser = cli.ArgumentParser(
      prog='python -m alexnet_jax.features',
      description='Features of a trained AlexNet for a directory of images.')
  parser.add_argument('--workdir', required=True,
                      help='a training workdir, or WORKDIR/checkpoints/STEP')
  parser.add_argument('--images', required=True, help='directory of images')
  parser.add_argument('--layer', default='fc7',
                      help=f'the layer (the paper\'s network: {", ".join(LAYERS)})')
  parser.add_argument('--out', required=True, help='output .npz file')
  parser.add_argument('--crops', type=int, default=None, choices=(1, 10),
                      help="views per image (default: the run's eval_crops)")
  parser.add_argument('--batch_size', type=int, default=64)
  parser.add_argument('--neighbours', type=int, default=0,
                      help='K nearest gallery images of each query')
  parser.add_argument('--gallery', default=None,
                      help='directory of gallery images (default: --images)')
  parser.add_argument('--max_image_pixels', type=int, default=None,
                      help='refuse images with more pixels (default: the '
                      "run's max_image_pixels, else "
                      f'{preprocess.MAX_IMAGE_PIXELS:,}; 0: no limit)')
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.WARNING)
  try:
    if args.neighbours < 0 or args.batch_size < 1:
      raise FeaturesError('--neighbours must be >= 0 and --batch_size >= 1.')
    net = load(args.workdir)
    if args.max_image_pixels is not None:
      net.max_pixels = args.max_image_pixels
    paths = image_files(args.images)
    feats = net.extract(paths, args.layer, crops=args.crops,
                        batch_size=args.batch_size, progress=True)
    out = {'features': feats, 'paths': np.array(paths), 'layer': args.layer,
           'step': net.step}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if args.neighbours:
      if args.gallery:
        gallery_paths = image_files(args.gallery)
        gallery = net.extract(gallery_paths, args.layer, crops=args.crops,
                              batch_size=args.batch_size, progress=True)
      else:
        gallery_paths, gallery = paths, feats
      idx, dist = nearest(feats, gallery, args.neighbours)
      out.update(neighbours=idx, distances=dist,
                 gallery_paths=np.array(gallery_paths))
      listing = os.path.splitext(args.out)[0] + '.neighbours.json'
      with open(listing, 'w') as f:
        json.dump([{'query': p, 'neighbours': [
            {'path': gallery_paths[j], 'distance': float(d)}
            for j, d in zip(row, drow)]} for p, row, drow in
                   zip(paths, idx, dist)], f, indent=1)
    np.savez(args.out, **out)
  except OSError as e:
    return cli.error(f'cannot write {e.filename} ({e.strerror}); pass an '
                     '--out you can write to.', prog='alexnet_jax.features')
  except errors.UserError as e:
    return cli.error(str(e), prog='alexnet_jax.features')
  print(f'{len(paths)} images -> {args.layer} features {feats.shape[1:]} in '
        f'{args.out}' + (f'; {args.neighbours} nearest of each in '
                         f'{listing}' if args.neighbours else ''))
  return 0


if __name__ == '__main__':
  sys.exit(main())
