"""The four-layer CIFAR-10 network of the paper's Figure 1 (ReLU vs tanh).

The paper (Section 3.1, Figure 1) says only "a four-layer convolutional neural
network" trained on CIFAR-10 with no regularisation of any kind. Its authors'
cuda-convnet ships exactly such a net, `layers-19pct.cfg` ("19% error on
CIFAR-10 in 20 minutes"), which this module reproduces: four layers with
weights (its sibling `layers-80sec.cfg` adds a hidden fc64 layer, so it has
five), and without the cfg's weight decay (wc 0.004; the paper used "no
regularization of any kind"),

  conv1  32 kernels 5x5, pad 2 -> max pool 3/2 -> activation
  conv2  32 kernels 5x5, pad 2 -> activation -> average pool 3/2
  conv3  64 kernels 5x5, pad 2 -> activation -> average pool 3/2
  fc     num_classes units (softmax)

cuda-convnet's pooling lets the last window hang over the edge, so 32x32
inputs pool to 16, 8 and 4; here the edge windows are padded by one pixel on
the far side, which gives the same sizes (max pools ignore the pad, average
pools divide by the real pixels only). `activation` is 'relu' or 'tanh' (the
figure's two curves); nothing else changes between them.

Initialisation (`init_scheme`):
  paper  layers-19pct.cfg's initW: N(0, 1e-4) for conv1, N(0, 0.01) for
         conv2, conv3 and fc; biases 0.
  he     N(0, 2 / fan_in) (fc: 1 / fan_in); biases 0. It assumes inputs of
         unit scale; the paper's inputs are raw pixels, mean subtracted
         only, and a ReLU net with `he` diverges on them (digits, lr 0.003:
         loss 2.6e5 after the first epoch, then chance). Use `paper`.

The module has the call signature of `model.AlexNet` (train, example_ids,
capture) so the same training loop runs it; it has no dropout, LRN or towers
and runs data parallel only (mesh.model = 1).
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INITS = ('paper', 'he')
LAYERS = ('conv1', 'conv2', 'conv3', 'fc')
# layers-19pct.cfg: (kernels, initW) per conv layer.
CONVS = (('conv1', 32, 1e-4), ('conv2', 32, 0.01), ('conv3', 64, 0.01))
FC_INIT_STD = 0.01


def _kernel_init(init: str, std: float, fan_in: int, fc: bool = False):
  if init == 'paper':
    return nn.initializers.normal(std)
  if init == 'he':
    return nn.initializers.normal(float(np.sqrt((1.0 if fc else 2.0) / fan_in)))
  raise ValueError(f'model.init={init!r} is unknown for the four-layer CNN; '
                   f'use one of {INITS}.')


def _pool(x, kind: str):
  # One pixel of padding on the far side: 32 -> 16 -> 8 -> 4, as cuda-convnet.
  pad = ((0, 1), (0, 1))
  if kind == 'max':
    return nn.max_pool(x, (3, 3), (2, 2), pad)
  return nn.avg_pool(x, (3, 3), (2, 2), pad, count_include_pad=False)


class FourLayerCNN(nn.Module):
  """cuda-convnet's layers-19pct net; returns logits `(batch, num_classes)`."""
  num_classes: int = 10
  input_size: int = 32
  activation: str = 'relu'
  init_scheme: str = 'paper'
  dtype: Any = jnp.float32
  matmul_precision: Optional[str] = None  # See model.PRECISIONS.
  # What the training loop asks of a model (see model.AlexNet).
  towers: int = 1

  @nn.compact
  def __call__(self, images, *, train: bool = False,
               example_ids: Optional[jax.Array] = None,
               capture: bool = False):
    del train, example_ids  # No dropout: "no regularization of any kind".
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'expected images (batch, H, W, 3), got {images.shape}')
    act = {'relu': nn.relu, 'tanh': jnp.tanh}[self.activation]
    feats = {}
    x = images.astype(self.dtype)
    in_features = 3
    for name, features, std in CONVS:
      conv = nn.Conv(features, (5, 5), padding=2, dtype=self.dtype,
                     precision=self.matmul_precision,
                     kernel_init=_kernel_init(self.init_scheme, std,
                                              25 * in_features),
                     name=name)
      x = conv(x)
      if name == 'conv1':
        x = act(_pool(x, 'max'))  # cuda-convnet applies it after the pool.
      else:
        x = _pool(act(x), 'avg')
      feats[name] = x
      in_features = features
    x = x.reshape(x.shape[0], -1)
    # The small fc layer computes in float32 (its bfloat16 inputs promoted):
    # float32 logits for the softmax and loss.
    logits = nn.Dense(self.num_classes, dtype=jnp.float32,
                      precision=self.matmul_precision,
                      kernel_init=_kernel_init(self.init_scheme, FC_INIT_STD,
                                               x.shape[-1], fc=True),
                      name='fc')(x).astype(jnp.float32)
    if capture:
      feats['logits'] = logits
      return logits, feats
    return logits


def _pooled(size: int) -> int:
  return (size - 2) // 2 + 1  # 3x3 stride 2, one pixel padded (see _pool).


def layer_macs(model: FourLayerCNN):
  """Multiply-adds of one forward pass of one image, layer by layer."""
  macs, size, cin = [], model.input_size, 3
  for _, features, _ in CONVS:
    macs.append(size * size * 25 * cin * features)
    size, cin = _pooled(size), features
  macs.append(size * size * cin * model.num_classes)
  return macs
