"""Dataset statistics the paper's input needs: mean image and RGB PCA.

The paper subtracts "the mean activity over the training set from each pixel"
(a per-pixel mean image) and, for its lighting augmentation, uses the
eigenvectors and eigenvalues of the 3x3 covariance matrix of RGB pixel values
over the training set (Section 4.1). Both are computed here in one streamed
pass over the training split of the prepared store (S x S uint8, S =
config.image_size), with a progress bar, and cached in the store beside that
split (`stats.npz`).

Units: the mean image is in pixel values (0..255); the covariance and its
eigenpairs are of pixel values scaled to [0, 1], the convention in which the
paper's formula (alpha_i ~ N(0, 0.1) times eigenvalue lambda_i) gives shifts of
a few grey levels, as in fb.resnet.torch's ImageNet lighting values.

`python -m alexnet_jax.datasets.prepare --config CONFIG` computes and caches
them; training does the same on first use.
"""

import os
from typing import Any, Dict, Mapping, NamedTuple

from absl import logging
import numpy as np


class Stats(NamedTuple):
  """What the paper's input needs of its training set.

  A NamedTuple, so a pytree: it passes into jitted code and onto devices as it
  is. Arrays may be numpy or jax.
  """
  mean: Any  # (S, S, 3) float32 mean image, in pixel values.
  eigvals: Any  # (3,) float32 RGB eigenvalues, largest first.
  eigvecs: Any  # (3, 3) float32 eigenvectors, as columns.

  @classmethod
  def neutral(cls, size: int) -> 'Stats':
    """No mean to subtract and no lighting: the identity input."""
    return cls(np.zeros((size, size, 3), np.float32),
               np.zeros(3, np.float32), np.eye(3, dtype=np.float32))

  @classmethod
  def from_arrays(cls, arrays: Mapping[str, Any]) -> 'Stats':
    """From a mapping that holds at least the three fields (a stats file)."""
    missing = [k for k in cls._fields if k not in arrays]
    if missing:
      raise KeyError(f'no {", ".join(missing)}')
    return cls(*(np.asarray(arrays[k], np.float32) for k in cls._fields))

  def arrays(self) -> Dict[str, np.ndarray]:
    """The fields as host arrays by name, as they are saved."""
    return {k: np.asarray(v) for k, v in self._asdict().items()}


def compute(split, batch_size: int = 256) -> Dict[str, np.ndarray]:
  """Streams a store split once: mean image, RGB covariance eigenpairs."""
  import tqdm  # pylint: disable=g-import-not-at-top
  size = split.image_size
  total = np.zeros((size, size, 3), np.float64)
  rgb_sum = np.zeros(3, np.float64)
  rgb_outer = np.zeros((3, 3), np.float64)
  count = 0
  n = len(split)
  with tqdm.tqdm(total=n, desc='dataset statistics', unit='img') as bar:
    for start in range(0, n, batch_size):
      batch = split.read(range(start, min(n, start + batch_size)))
      images = batch['image'].astype(np.float64)
      total += images.sum(0)
      pixels = images.reshape(-1, 3) / 255.0
      rgb_sum += pixels.sum(0)
      rgb_outer += pixels.T @ pixels
      count += len(images)
      bar.update(len(images))
  if not count:
    raise ValueError(f'the split in {split.path} is empty.')
  pixels_seen = count * size * size
  rgb_mean = rgb_sum / pixels_seen
  cov = rgb_outer / pixels_seen - np.outer(rgb_mean, rgb_mean)
  eigvals, eigvecs = np.linalg.eigh(cov)
  order = np.argsort(eigvals)[::-1]  # Largest first.
  return {
      'mean': (total / count).astype(np.float32),
      'eigvals': np.maximum(eigvals[order], 0).astype(np.float32),
      'eigvecs': eigvecs[:, order].astype(np.float32),  # Columns.
      'num_images': np.int64(count),
  }


def load_or_compute(store, split: str) -> Dict[str, np.ndarray]:
  """Cached statistics of `store`'s `split`, with its `num_images`."""
  path = store.stats_path(split)
  if os.path.exists(path):
    with np.load(path) as f:
      stats = {k: f[k] for k in f.files}
    logging.info('Dataset statistics: loaded from %s (%d training images).',
                 path, int(stats['num_images']))
    return stats
  stats = compute(store.split(split))
  tmp = path + '.tmp.npz'
  np.savez(tmp, **stats)
  os.replace(tmp, path)  # Atomic: a crash never leaves half a file.
  logging.info('Dataset statistics: computed over %d training images, saved '
               'to %s.', int(stats['num_images']), path)
  return stats


def load(store, split: str, size: int, mean: str,
         pca_lighting: float) -> Stats:
  """The statistics the input needs: computed and cached on first use, and
  only when the input uses them (`mean` 'per_pixel' or lighting on)."""
  stats = Stats.neutral(size)
  if mean == 'per_pixel' or pca_lighting > 0:
    stats = Stats.from_arrays(load_or_compute(store, split))
  if mean == 'none':
    stats = stats._replace(mean=np.zeros_like(stats.mean))
  return stats
