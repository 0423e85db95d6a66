"""On-device, jitted augmentation and normalisation (paper Section 4.1).

Input batches arrive as uint8 `(B, S, S, 3)` images (S = config.image_size,
256 in the paper). Each example's randomness comes from the step key folded
with the example's *global* index, so augmentation is identical whatever the
mesh shape and however the batch is split over devices.
"""

import jax
import jax.numpy as jnp


def example_keys(key: jax.Array, example_ids: jax.Array) -> jax.Array:
  """One key per example: fold_in(key, global example index)."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(example_ids)


def random_crop_flip(images: jax.Array, keys: jax.Array, crop: int,
                     random_crop: bool = True, flip: bool = True) -> jax.Array:
  """Random `crop` x `crop` patches and random horizontal flips, per example."""
  size = images.shape[1]
  if crop > size:
    raise ValueError(f'crop {crop} is larger than the images ({size}); lower '
                     'model.input_size or raise image_size.')

  def one(image, key):
    k_y, k_x, k_f = jax.random.split(key, 3)
    if random_crop:
      y = jax.random.randint(k_y, (), 0, size - crop + 1)
      x = jax.random.randint(k_x, (), 0, size - crop + 1)
    else:
      y = x = (size - crop) // 2
    patch = jax.lax.dynamic_slice(image, (y, x, 0), (crop, crop, image.shape[-1]))
    if flip:
      patch = jnp.where(jax.random.bernoulli(k_f), patch[:, ::-1], patch)
    return patch

  return jax.vmap(one)(images, keys)


def center_crop(images: jax.Array, crop: int) -> jax.Array:
  size = images.shape[1]
  if crop > size:
    raise ValueError(f'crop {crop} is larger than the images ({size}); lower '
                     'model.input_size or raise image_size.')
  o = (size - crop) // 2
  return images[:, o:o + crop, o:o + crop]


def normalize(images: jax.Array, mean_image: jax.Array,
              scale: float) -> jax.Array:
  """uint8 -> float32, minus the per-pixel mean image, divided by `scale`."""
  return (images.astype(jnp.float32) - mean_image) / scale


def train_views(images, key, example_ids, mean_image, config):
  """The paper's training input: mean-subtracted random crops and flips."""
  x = normalize(images, mean_image, config.augment.scale)
  keys = example_keys(key, example_ids)
  return random_crop_flip(x, keys, config.model.input_size,
                          config.augment.random_crop, config.augment.flip)


def eval_views(images, mean_image, config):
  """Centre crop of the mean-subtracted image."""
  x = normalize(images, mean_image, config.augment.scale)
  return center_crop(x, config.model.input_size)
