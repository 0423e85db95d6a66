"""The paper's host preprocessing: decode, RGB, shorter side to S, centre S x S.

Section 4.1: images are "down-sampled to a fixed resolution of 256 x 256" by
rescaling the shorter side to 256 and cropping out the central 256 x 256 patch.
This runs once per image, when a dataset is prepared into its store
(`alexnet_jax.datasets.store`), and on the images given to
`alexnet_jax.features`; random crops, flips and the mean image are applied on
the device (`alexnet_jax.augment`). A leaf module: it imports nothing of ours.
"""


def tf():
  """TensorFlow for host work only (tf.data, image ops), kept off any GPU."""
  import tensorflow  # pylint: disable=g-import-not-at-top
  tensorflow.config.set_visible_devices([], 'GPU')
  return tensorflow


def decode(data):
  """Encoded image bytes (JPEG, PNG, BMP, GIF) -> (H, W, 3) uint8 tensor."""
  return tf().io.decode_image(data, channels=3, expand_animations=False)


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


def example(example, image_size: int):
  """A tfds record {'image': encoded bytes, 'label'} -> preprocessed tensors."""
  t = tf()
  return {'image': resize_and_crop(decode(example['image']), image_size),
          'label': t.cast(example['label'], t.int32)}
