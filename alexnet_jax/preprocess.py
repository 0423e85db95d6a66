"""The paper's host preprocessing: decode, RGB, shorter side to S, centre S x S.

Section 4.1: images are "down-sampled to a fixed resolution of 256 x 256" by
rescaling the shorter side to 256 and cropping out the central 256 x 256 patch.
This runs once per image, when a dataset is prepared into its store
(`alexnet_jax.datasets.store`), and on the images given to
`alexnet_jax.features`; random crops, flips and the mean image are applied on
the device (`alexnet_jax.augment`). Every decode first reads the image's header and refuses more than
`max_image_pixels` pixels (decompression bombs). A leaf module: it imports
nothing of ours.
"""

import contextlib
import importlib.util
import io
import re

import numpy as np

from alexnet_jax import errors

# Pillow's own default (about 89 megapixels): a PNG under 1 MB can declare
# 30000 x 30000 pixels and take gigabytes once decoded. ImageNet's largest
# photos are far below it.
MAX_IMAGE_PIXELS = 89_478_485


class ImageTooLarge(ValueError):
  """An image whose header declares more pixels than the limit."""


@contextlib.contextmanager
def _no_pillow_limit():
  # We check the size ourselves, from the header, with our own limit.
  from PIL import Image  # pylint: disable=g-import-not-at-top
  saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
  try:
    yield Image
  finally:
    Image.MAX_IMAGE_PIXELS = saved


# For a pool of threads that all open images: Pillow's limit is one global,
# so it is switched off once around them all (each open checks ours).
pillow_limit_off = _no_pillow_limit


def header_pixels(data: bytes) -> int:
  """The pixel count an encoded image's header declares (0: not an image
  Pillow identifies; the decoder then refuses it). Decodes nothing."""
  with _no_pillow_limit() as image_lib:
    try:
      with image_lib.open(io.BytesIO(data)) as image:
        width, height = image.size
    except Exception:  # pylint: disable=broad-except
      return 0
  return width * height


def too_large(pixels: int, limit: int) -> str:
  return (f'{pixels:,} pixels is above the limit of {limit:,} '
          '(max_image_pixels to raise it)')


def check_pixels(data: bytes, limit: int = MAX_IMAGE_PIXELS) -> int:
  """header_pixels(data), raising ImageTooLarge above `limit` (0: none)."""
  pixels = header_pixels(data)
  if limit and pixels > limit:
    raise ImageTooLarge(too_large(pixels, limit))
  return pixels


def open_checked(data: bytes, limit: int = MAX_IMAGE_PIXELS):
  """A Pillow image of `data` (opened, not decoded), refused with
  ImageTooLarge when its size is above `limit` (0: no limit)."""
  with _no_pillow_limit() as image_lib:
    image = image_lib.open(io.BytesIO(data))
  pixels = image.size[0] * image.size[1]
  if limit and pixels > limit:
    image.close()
    raise ImageTooLarge(too_large(pixels, limit))
  return image


class MissingTensorFlow(errors.UserError, ImportError):
  """TensorFlow is not installed (setup.cfg leaves it to the `cpu` extra)."""


def tf():
  """TensorFlow for host work only (tf.data, image ops), kept off any GPU."""
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise MissingTensorFlow(
        'TensorFlow is needed for the input pipeline (tf.data and image '
        "decoding) but is not installed: pip install -e '.[cpu]' (or "
        f'tensorflow-cpu) ({e})') from e
  tensorflow.config.set_visible_devices([], 'GPU')
  return tensorflow


def check_tf():
  """tf()'s one-line error where TensorFlow is missing, without importing
  it (that takes about 6 s, which a prepared dataset does not need)."""
  try:
    found = importlib.util.find_spec('tensorflow') is not None
  except ImportError:  # An import hook refusing it.
    found = False
  if not found:
    tf()


def decode(data, limit: int = MAX_IMAGE_PIXELS):
  """Encoded image bytes (JPEG, PNG, BMP, GIF) -> (H, W, 3) uint8 tensor.

  The header's pixel count is checked against `limit` first: eagerly (bytes
  in) raising ImageTooLarge; in a tf.data graph as an assertion whose message
  starts with TOO_LARGE and carries the count (see `too_large_message`).
  """
  eager = isinstance(data, bytes)
  if eager:
    # Before TensorFlow is imported (seconds), so a refusal is immediate.
    check_pixels(data, limit)
  t = tf()
  if not eager and limit:
    pixels = t.numpy_function(lambda d: np.int64(header_pixels(bytes(d))),
                              [data], t.int64, stateful=False)
    check = t.debugging.Assert(pixels <= limit, [TOO_LARGE, pixels])
    with t.control_dependencies([check]):
      data = t.identity(data)
  return t.io.decode_image(data, channels=3, expand_animations=False)


TOO_LARGE = 'image-too-large'


def too_large_message(error_text: str, limit: int):
  """The one-line message for a tf.data error from `decode`'s check, or
  None when the error is something else."""
  found = re.search(TOO_LARGE + r'\] \[(\d+)\]', error_text)
  return too_large(int(found.group(1)), limit) if found else None


def resize_and_crop(image, image_size: int):
  """A decoded RGB image -> shorter side S, centre S x S crop, uint8 tensor.

  Antialiased bilinear resampling, rounded to the nearest grey level.
  """
  t = tf()
  image = t.convert_to_tensor(image)
  h = t.cast(t.shape(image)[0], t.float32)
  w = t.cast(t.shape(image)[1], t.float32)
  scale = image_size / t.minimum(h, w)
  new_h = t.maximum(image_size, t.cast(t.round(h * scale), t.int32))
  new_w = t.maximum(image_size, t.cast(t.round(w * scale), t.int32))
  image = t.image.resize(image, (new_h, new_w), antialias=True)
  top = (new_h - image_size) // 2
  left = (new_w - image_size) // 2
  image = image[top:top + image_size, left:left + image_size]
  image = t.cast(t.clip_by_value(t.round(image), 0, 255), t.uint8)
  return t.ensure_shape(image, (image_size, image_size, 3))


def example(example, image_size: int, limit: int = MAX_IMAGE_PIXELS):
  """A tfds record {'image': encoded bytes, 'label'} -> preprocessed tensors."""
  t = tf()
  return {'image': resize_and_crop(decode(example['image'], limit),
                                   image_size),
          'label': t.cast(example['label'], t.int32)}
