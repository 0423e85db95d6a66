"""The paper's test, once: views -> network -> average over the views; top-k.

"At test time, the network makes a prediction by extracting five 224 x 224
patches (the four corner patches and the center patch) as well as their
horizontal reflections ..., and averaging the predictions made by the
network's softmax layer on the ten patches" (Section 4.1). The train step's
evaluation, `features` (any layer) and `ensemble` all go through here.
"""

from typing import Callable, Dict

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import augment


def views(images, mean, scale: float, input_size: int, crops: int):
  """`(crops, B, input_size, input_size, 3)` network inputs of S x S uint8
  images: the mean image subtracted, then the centre crop (crops=1) or the
  paper's ten patches (crops=10)."""
  if crops not in (1, 10):
    raise ValueError(f'crops={crops}: the paper tests 1 (the centre) or 10 '
                     'views.')
  x = augment.normalize(images, mean, scale)
  if crops == 10:
    return augment.ten_crops(x, input_size)
  return augment.center_crop(x, input_size)[None]


def average_over_views(fn: Callable, inputs):
  """fn applied to all views at once, `(V, B, ...)` -> its output averaged
  over the V views, `(B, ...)`."""
  v, b = inputs.shape[:2]
  out = fn(inputs.reshape((v * b,) + inputs.shape[2:]))
  return out.reshape((v, b) + out.shape[1:]).mean(0)


def topk_correct(scores, labels, k: int):
  """1.0 where the label is among the k highest scores, per example."""
  k = min(k, scores.shape[-1])
  topk = jax.lax.top_k(scores, k)[1]
  return (topk == labels[:, None]).any(-1).astype(jnp.float32)


def topk_errors(probs, labels) -> Dict[str, float]:
  """Host figures of a whole set: {'top1_err', 'top5_err'} (fractions)."""
  probs, labels = jnp.asarray(probs), jnp.asarray(labels)
  return {f'top{k}_err': float(np.mean(~np.asarray(
      topk_correct(probs, labels, k), bool))) for k in (1, 5)}
