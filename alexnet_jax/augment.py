"""On-device, jitted augmentation and normalisation (paper Section 4.1).

Input batches arrive as uint8 `(B, S, S, 3)` images (S = config.image_size,
256 in the paper). Each example's randomness comes from the step key folded
with the example's *global* index, so augmentation is identical whatever the
mesh shape and however the batch is split over devices.

`stats` is the dataset's `Stats` (`alexnet_jax.datasets.stats`): `mean`
(S, S, 3) in pixel values, `eigvals` (3,) and `eigvecs` (3, 3, columns) of the
RGB covariance of pixels in [0, 1].
"""

import dataclasses

import jax
import jax.numpy as jnp


def example_keys(key: jax.Array, example_ids: jax.Array) -> jax.Array:
  """One key per example: fold_in(key, global example index)."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(example_ids)


def _check_crop(size: int, crop: int):
  if crop > size:
    raise ValueError(f'crop {crop} is larger than the images ({size}); lower '
                     'model.input_size or raise image_size.')


def random_crop_flip(images: jax.Array, keys: jax.Array, crop: int,
                     random_crop: bool = True, flip: bool = True) -> jax.Array:
  """Random `crop` x `crop` patches and random horizontal flips, per example."""
  size = images.shape[1]
  _check_crop(size, crop)

  def one(image, key):
    k_y, k_x, k_f = jax.random.split(key, 3)
    if random_crop:
      y = jax.random.randint(k_y, (), 0, size - crop + 1)
      x = jax.random.randint(k_x, (), 0, size - crop + 1)
    else:
      y = x = (size - crop) // 2
    patch = jax.lax.dynamic_slice(image, (y, x, 0),
                                  (crop, crop, image.shape[-1]))
    if flip:
      patch = jnp.where(jax.random.bernoulli(k_f), patch[:, ::-1], patch)
    return patch

  return jax.vmap(one)(images, keys)


def pca_lighting(images: jax.Array, keys: jax.Array, eigvals: jax.Array,
                 eigvecs: jax.Array, std: float) -> jax.Array:
  """The paper's lighting noise: add [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T.

  a_i ~ N(0, std) is drawn once per image (per presentation); p_i, l_i are the
  eigenvectors and eigenvalues of the RGB covariance of pixels in [0, 1], so the
  shift is scaled by 255 for images in pixel values.
  """
  alphas = jax.vmap(lambda k: jax.random.normal(k, (3,)))(keys) * std
  # (B, 3): a 3x3 product written as a sum, so it is exact float32 whatever
  # model.matmul_precision says (no matmul unit is worth it here).
  shift = 255.0 * ((alphas * eigvals)[:, None, :] * eigvecs[None]).sum(-1)
  return images + shift[:, None, None, :].astype(images.dtype)


def center_crop(images: jax.Array, crop: int) -> jax.Array:
  size = images.shape[1]
  _check_crop(size, crop)
  o = (size - crop) // 2
  return images[:, o:o + crop, o:o + crop]


def ten_crops(images: jax.Array, crop: int) -> jax.Array:
  """The paper's test views: 4 corners, centre, and their mirror images.

  `(B, S, S, C)` -> `(10, B, crop, crop, C)`.
  """
  size = images.shape[1]
  _check_crop(size, crop)
  far, mid = size - crop, (size - crop) // 2
  corners = [(0, 0), (0, far), (far, 0), (far, far), (mid, mid)]
  views = [images[:, y:y + crop, x:x + crop] for y, x in corners]
  views += [v[:, :, ::-1] for v in views]
  return jnp.stack(views)


def normalize(images: jax.Array, mean_image: jax.Array,
              scale: float) -> jax.Array:
  """uint8 -> float32, minus the per-pixel mean image, divided by `scale`."""
  return (images.astype(jnp.float32) - mean_image) / scale


@dataclasses.dataclass(frozen=True)
class Augment:
  """The paper's training input transform, as values (config.augment and the
  crop size): frozen and hashable, so a jitted step closes over it and no
  config is read at trace time."""
  crop: int = 224
  random_crop: bool = True
  flip: bool = True
  pca_lighting: float = 0.1
  scale: float = 1.0

  @classmethod
  def from_config(cls, config) -> 'Augment':
    a = config.augment
    return cls(crop=int(config.model.input_size),
               random_crop=bool(a.random_crop), flip=bool(a.flip),
               pca_lighting=float(a.pca_lighting), scale=float(a.scale))

  def train_views(self, images, key, example_ids, stats):
    """Random crops and flips, lighting, the mean image; divided by scale."""
    keys = example_keys(key, example_ids)
    crop_keys, light_keys = jax.vmap(lambda k: jax.random.split(k))(keys).swapaxes(0, 1)
    # Subtract the mean image before cropping: the mean is per pixel of the
    # S x S image, so each crop gets the mean of its own window.
    x = images.astype(jnp.float32) - stats.mean
    x = random_crop_flip(x, crop_keys, self.crop, self.random_crop, self.flip)
    if self.pca_lighting > 0:
      x = pca_lighting(x, light_keys, stats.eigvals, stats.eigvecs,
                       self.pca_lighting)
    return x / self.scale
