"""The paper's AlexNet as a pure functional Flax (linen) module.

Layout (Krizhevsky et al. 2012, Figure 2 and Section 3.5): two towers, one per
GPU in the paper. Every layer is split between the towers and every parameter
carries a leading tower axis of size 2. The towers talk only at the input of
conv3, fc6, fc7 and fc8 and at the logits; `comm.Comm` is the one place where
that happens: a local concatenate when both towers are on this device, an
`all_gather` over the mesh's `model` axis when they are not.

Layouts (`layout`):
  two_towers      the paper's network (default), 60,965,224 parameters.
  one_tower_half  the paper's one-GPU comparison (Section 3.5): one tower with
                  half the kernels in conv1-conv4; conv5 and the fully
                  connected layers keep their full size, as in the paper.
  single_tower    one tower at full width with full connectivity (the layout
                  of torchvision's and most later AlexNets; set `conv_features`
                  to (64, 192, 384, 256, 256) for torchvision's widths).

Parallel schemes (how a mesh's `model` axis is used; `parallel.Scheme`
chooses, and gives the model its `comm`):
  towers           the paper's: each device of the axis holds whole towers,
                   and they talk at the five points above.
  one_weird_trick  Krizhevsky (2014): the convolutional layers are data
                   parallel (every device runs all towers on its share of the
                   batch) and the fully connected layers model parallel (each
                   device holds a slice of every fc layer's units and
                   computes it for the whole data shard's batch).

Initialisation (`init`):
  paper  weights N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6, fc7, else 0.
  caffe  bvlc_alexnet's train_val.prototxt: weights N(0, 0.01) except fc6/fc7
         N(0, 0.005); biases 0.1 where the paper has 1. Caffe's authors changed
         the biases because 1 left the loss flat at the start.
  he     weights N(0, 2 / fan_in) (He et al. 2015), fc8 N(0, 1 / fan_in);
         biases 0. Small datasets train from it in minutes (configs/digits.py).
"""

import dataclasses
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from alexnet_jax import comm as comm_lib
from alexnet_jax import errors
from alexnet_jax import four_layer_cnn
from alexnet_jax import ops

LAYOUTS = ('two_towers', 'one_tower_half', 'single_tower')
INITS = ('paper', 'caffe', 'he')
ACTIVATIONS = {'relu': nn.relu, 'tanh': jnp.tanh}
# Compute dtypes. Parameters, optimiser state, the loss and the gradients'
# all-reduce stay float32 whatever this is; float16 (for GPUs without
# bfloat16 units: T4, V100) trains with a dynamic loss scale (loss_scale.py),
# which bfloat16's float32-sized exponent does not need.
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16,
          'float16': jnp.float16}
# model.matmul_precision: lax.Precision names. 'default' lets the backend
# choose (TF32 for float32 on Ampere and Hopper GPUs, one bfloat16 pass on
# TPU, full float32 on CPU); 'highest' asks for full float32 everywhere.
PRECISIONS = ('default', 'high', 'highest', 'bfloat16', 'tensorfloat32',
              'float32')
CONV_LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')
FC_LAYERS = ('fc6', 'fc7', 'fc8')
LAYERS = CONV_LAYERS + FC_LAYERS  # Every parameterised layer, input to output.
# Layers whose bias the paper initialises to 1 (Section 5).
ONE_BIAS_LAYERS = ('conv2', 'conv4', 'conv5', 'fc6', 'fc7')


@dataclasses.dataclass(frozen=True)
class LayerSpec:
  """One layer of the network, per tower."""
  name: str
  features: int  # Output units per tower.
  kernel: int = 0  # Conv window (0 for fully connected layers).
  stride: int = 1
  padding: int = 0
  reads_all_towers: bool = False  # True where the paper's GPUs talk.


def tower_count(layout: str) -> int:
  if layout not in LAYOUTS:
    raise ValueError(f'model.layout={layout!r} is unknown; use one of {LAYOUTS}.')
  return 2 if layout == 'two_towers' else 1


def layer_specs(layout: str = 'two_towers', num_classes: int = 1000,
                width: float = 1.0, conv1_padding: int = 2,
                conv_features: Optional[Sequence[int]] = None,
                fc_features: int = 4096) -> Tuple[LayerSpec, ...]:
  """The per-tower layer table of a layout (paper: Section 3.5, Figure 2).

  Args:
    layout: one of LAYOUTS.
    num_classes: output classes; split evenly over the towers (padded by one
      unused unit per tower when odd).
    width: multiplies every conv and hidden fc width (1.0 = paper).
    conv1_padding: conv1's padding (2 for 224 inputs, 0 for Caffe's 227).
    conv_features: total kernels of conv1..conv5 over all towers; default is
      the layout's (paper: 96, 256, 384, 384, 256).
    fc_features: total units of fc6 and fc7 over all towers (paper: 4096).
  """
  towers = tower_count(layout)
  if conv_features is None:
    conv_features = {
        'two_towers': (96, 256, 384, 384, 256),
        'one_tower_half': (48, 128, 192, 192, 256),
        'single_tower': (96, 256, 384, 384, 256),
    }[layout]
  if len(conv_features) != 5:
    raise ValueError('model.conv_features needs 5 entries (conv1..conv5), '
                     f'got {tuple(conv_features)}.')

  def per_tower(total):
    if total % towers:
      raise ValueError(f'{total} units cannot be split over {towers} towers.')
    return max(1, int(round(total // towers * width)))

  c1, c2, c3, c4, c5 = (per_tower(c) for c in conv_features)
  fc = per_tower(fc_features)
  return (
      LayerSpec('conv1', c1, 11, 4, conv1_padding),
      LayerSpec('conv2', c2, 5, 1, 2),
      LayerSpec('conv3', c3, 3, 1, 1, reads_all_towers=True),
      LayerSpec('conv4', c4, 3, 1, 1),
      LayerSpec('conv5', c5, 3, 1, 1),
      LayerSpec('fc6', fc, reads_all_towers=True),
      LayerSpec('fc7', fc, reads_all_towers=True),
      LayerSpec('fc8', -(-num_classes // towers), reads_all_towers=True),
  )


def _initializers(init: str, name: str, fan_in: int):
  """(kernel_init, bias_init) for one layer under an init scheme."""
  if init == 'paper':
    std, bias = 0.01, (1.0 if name in ONE_BIAS_LAYERS else 0.0)
  elif init == 'caffe':
    std = 0.005 if name in ('fc6', 'fc7') else 0.01
    bias = 0.1 if name in ONE_BIAS_LAYERS else 0.0
  elif init == 'he':
    std = float(np.sqrt((1.0 if name == 'fc8' else 2.0) / fan_in))
    bias = 0.0
  else:
    raise ValueError(f'model.init={init!r} is unknown; use one of {INITS}.')
  return nn.initializers.normal(std), nn.initializers.constant(bias)


class TowerConv(nn.Module):
  """A convolution split over towers: kernel (towers, kh, kw, in, out)."""
  spec: LayerSpec
  towers: int
  in_features: int
  init_scheme: str
  dtype: Any
  precision: Optional[str] = None

  @nn.compact
  def __call__(self, x):
    s = self.spec
    fan_in = s.kernel * s.kernel * self.in_features
    k_init, b_init = _initializers(self.init_scheme, s.name, fan_in)
    kernel = self.param('kernel', k_init, (self.towers, s.kernel, s.kernel,
                                           self.in_features, s.features))
    bias = self.param('bias', b_init, (self.towers, s.features))
    y = ops.per_tower_conv(x, kernel.astype(self.dtype), s.stride, s.padding,
                           self.precision)
    return y + bias.astype(self.dtype)[:, None, None, None, :]


class TowerDense(nn.Module):
  """A fully connected layer split over towers: kernel (towers, in, out).

  `out_features` is the number of units held here: the spec's, or a slice of
  them when the units are split over devices (the one-weird-trick scheme).
  `out_dtype` (fc8: float32) is the product's accumulation and output dtype.
  """
  spec: LayerSpec
  towers: int
  in_features: int
  init_scheme: str
  dtype: Any
  out_features: int
  precision: Optional[str] = None
  out_dtype: Any = None

  @nn.compact
  def __call__(self, x):
    s = self.spec
    k_init, b_init = _initializers(self.init_scheme, s.name, self.in_features)
    kernel = self.param('kernel', k_init,
                        (self.towers, self.in_features, self.out_features))
    bias = self.param('bias', b_init, (self.towers, self.out_features))
    # x is the full (gathered) input (B, in) read by every tower.
    out_dtype = self.out_dtype or self.dtype
    y = jnp.einsum('bi,tio->tbo', x, kernel.astype(self.dtype),
                   precision=self.precision, preferred_element_type=out_dtype)
    return y + bias.astype(out_dtype)[:, None, :]


class AlexNet(nn.Module):
  """Krizhevsky et al. (2012) AlexNet; returns logits `(batch, num_classes)`.

  Attributes (see configs/default.py for the documented config keys):
    comm: how this device's towers and units meet the others' inside
      `shard_map` (`comm.Comm`; the default, outside it: all here).
  """
  num_classes: int = 1000
  layout: str = 'two_towers'
  width: float = 1.0
  conv_features: Optional[Tuple[int, ...]] = None
  fc_features: int = 4096
  input_size: int = 224
  conv1_padding: int = -1
  activation: str = 'relu'
  lrn: ops.LRN = ops.LRN()
  pool_window: int = 3
  pool_stride: int = 2
  dropout_rate: float = 0.5
  # The hand-written VJPs of LRN and max pooling (ops.py), or autodiff's.
  custom_vjp: bool = True
  init_scheme: str = 'paper'
  dtype: Any = jnp.float32
  # None / 'default': the backend's own; see PRECISIONS.
  matmul_precision: Optional[str] = None
  comm: comm_lib.Comm = comm_lib.Comm()

  @property
  def towers(self) -> int:
    return tower_count(self.layout)

  @property
  def local_towers(self) -> int:
    return self.comm.local_towers(self.towers, self.layout)

  @property
  def padding1(self) -> int:
    if self.conv1_padding >= 0:
      return self.conv1_padding
    return 0 if self.input_size == 227 else 2

  def specs(self) -> Tuple[LayerSpec, ...]:
    return layer_specs(self.layout, self.num_classes, self.width,
                       self.padding1, self.conv_features, self.fc_features)

  @property
  def fc_layers(self) -> Tuple[str, ...]:
    """The fully connected layers, by name (`parallel.Scheme` splits their
    units under one weird trick)."""
    return tuple(spec.name for spec in self.specs() if not spec.kernel)

  def _dropout(self, x, example_ids, units: int):
    """Dropout whose mask depends only on (rng, example id, tower, unit).

    Masks drawn per example from the example's global index make training
    identical on every mesh shape (a data shard draws exactly the masks the
    same examples get in a one-device run). `units` is the layer's width per
    tower; when this device holds a slice of them, it keeps that slice of
    the full mask.
    """
    rate = self.dropout_rate
    key = self.make_rng('dropout')
    local = x.shape[-1]
    keep = []
    for t in range(x.shape[0]):
      tkey = jax.random.fold_in(key, self.comm.tower_index(
          t, self.local_towers))
      keep.append(jax.vmap(lambda i, k=tkey: jax.random.bernoulli(
          jax.random.fold_in(k, i), 1.0 - rate, (units,)))(example_ids))
    keep = self.comm.own_units(jnp.stack(keep), local)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)

  def _normalise(self, y):
    """Local response normalisation, within each tower (the paper's) or
    across both (`lrn.across_towers`)."""
    if not self.lrn.enabled:
      return y
    if not self.lrn.across_towers or self.towers == 1:
      return self.lrn(y, self.custom_vjp)
    if self.local_towers != self.towers:
      raise ValueError('model.lrn.across_towers needs every tower on one '
                       'device: set mesh.model=1 or mesh.scheme='
                       "'one_weird_trick'.")
    merged = self.lrn(ops.merge_towers(y), self.custom_vjp)  # Across towers.
    return jnp.stack(jnp.split(merged, self.towers, axis=-1))

  def _pool(self, y):
    return ops.max_pool(y, self.pool_window, self.pool_stride,
                        self.custom_vjp)

  @nn.compact
  def __call__(self, images, *, train: bool = False,
               example_ids: Optional[jax.Array] = None,
               capture: bool = False):
    """Forward pass.

    Args:
      images: `(B, input_size, input_size, 3)` network-ready float images.
      train: enables dropout (needs a 'dropout' rng).
      example_ids: `(B,)` global indices of the examples; dropout masks are a
        function of them. Defaults to `arange(B)`.
      capture: also return a dict of intermediate activations by layer name.

    Returns:
      logits `(B, num_classes)` in float32 (and the activations if `capture`).
    """
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'expected images (batch, H, W, 3), got {images.shape}')
    act = ACTIVATIONS[self.activation]
    towers = self.local_towers
    all_t = self.towers
    specs = self.specs()
    feats = {}
    if example_ids is None:
      example_ids = jnp.arange(images.shape[0])
    use_dropout = train and self.dropout_rate > 0

    def conv(spec, y, in_features):
      return TowerConv(spec, towers, in_features, self.init_scheme, self.dtype,
                       self.matmul_precision, name=spec.name)(y)

    def dense(spec, y, in_features):
      out = self.comm.fc_units(spec.features)
      # The logits are accumulated and returned in float32 whatever the
      # compute dtype: the softmax and loss need their precision.
      return TowerDense(spec, towers, in_features, self.init_scheme, self.dtype,
                        out, self.matmul_precision,
                        jnp.float32 if spec.name == 'fc8' else None,
                        name=spec.name)(y)

    def fc_input(spec, y):
      """The previous fc layer's output as the next one reads it."""
      return self.comm.connect(self.comm.gather_units(y, spec.features))

    s1, s2, s3, s4, s5, s6, s7, s8 = specs
    x = images.astype(self.dtype)
    x = act(conv(s1, x, 3))                        # both towers read the image
    feats['conv1'] = x
    x = self._pool(self._normalise(x))
    x = act(conv(s2, x, s1.features))              # own tower only
    feats['conv2'] = x
    x = self._pool(self._normalise(x))
    x = act(conv(s3, self.comm.connect(x), all_t * s2.features))  # GPUs talk
    feats['conv3'] = x
    x = act(conv(s4, x, s3.features))              # own tower only
    feats['conv4'] = x
    x = act(conv(s5, x, s4.features))              # own tower only
    feats['conv5'] = x
    x = self._pool(x)
    feats['pool5'] = x
    x = self.comm.connect(x)                       # GPUs talk
    x = x.reshape(x.shape[0], -1)                  # HWC flatten
    local_batch = x.shape[0]
    # One weird trick: the fc layers run on the whole group's batch.
    x = self.comm.gather_rows(x)
    example_ids = self.comm.gather_rows(example_ids)
    x = act(dense(s6, x, x.shape[-1]))
    if use_dropout:
      x = self._dropout(x, example_ids, s6.features)
    feats['fc6'] = x
    x = act(dense(s7, fc_input(s6, x), all_t * s6.features))  # GPUs talk
    if use_dropout:
      x = self._dropout(x, example_ids, s7.features)
    feats['fc7'] = x
    x = dense(s8, fc_input(s7, x), all_t * s7.features)        # GPUs talk
    logits = self.comm.logits(x, s8.features, local_batch)      # GPUs talk
    logits = logits[:, :self.num_classes].astype(jnp.float32)
    if capture:
      feats['logits'] = logits
      return logits, feats
    return logits


def _alexnet(c, common, overrides) -> AlexNet:
  tower_count(c.layout)
  if c.init not in INITS:
    raise ValueError(f'model.init={c.init!r} is unknown; use one of {INITS}.')
  conv_features = tuple(c.conv_features) if c.get('conv_features') else None
  kwargs = dict(
      common, layout=c.layout, width=c.width, conv_features=conv_features,
      fc_features=c.fc_features, conv1_padding=c.conv1_padding,
      lrn=ops.LRN(**c.lrn),
      pool_window=c.pool_window, pool_stride=c.pool_stride,
      dropout_rate=c.dropout_rate, custom_vjp=c.get('custom_vjp', True))
  model = AlexNet(**dict(kwargs, **overrides))
  _, _, _, p5 = ops.feature_sizes(model.input_size, model.padding1,
                                  model.pool_window, model.pool_stride)
  if p5 < 1:
    raise ValueError(f'model.input_size={model.input_size} is too small for '
                     'three poolings; use at least 63 (paper: 224).')
  return model


def _four_layer_cnn(c, common, overrides) -> four_layer_cnn.FourLayerCNN:
  if c.init not in four_layer_cnn.INITS:
    raise ValueError(f'model.init={c.init!r} is unknown for the four-layer '
                     f'CNN; use one of {four_layer_cnn.INITS}.')
  return four_layer_cnn.FourLayerCNN(**dict(common, **overrides))


# model.arch -> how to build it from config.model.
@dataclasses.dataclass(frozen=True)
class Arch:
  """A registered architecture: its builder, and its layers by name, so
  `features` and `finetune` ask the registry instead of assuming AlexNet."""
  build: Callable[..., nn.Module]
  layers: Tuple[str, ...]  # Parameterised, input to output (finetune).
  features: Tuple[str, ...]  # What `capture` returns besides the logits.


ARCHS = {
    'alexnet': Arch(_alexnet, LAYERS,
                    CONV_LAYERS + ('pool5',) + FC_LAYERS[:2]),
    'four_layer_cnn': Arch(_four_layer_cnn, four_layer_cnn.LAYERS,
                           four_layer_cnn.LAYERS[:-1]),
}


def arch(model_config: ml_collections.ConfigDict) -> Arch:
  """The registry entry of `model_config.arch` (a config's `model`)."""
  name = model_config.arch
  if name not in ARCHS:
    raise ValueError(f'model.arch={name!r} is unknown; use one of '
                     f'{tuple(ARCHS)}.')
  return ARCHS[name]


@errors.config_errors
def create_model(model_config: ml_collections.ConfigDict,
                 **overrides) -> nn.Module:
  """Builds the module `model_config.arch` names (`model_config`: a run's
  config.model; see configs/default.py)."""
  c = model_config
  entry = arch(c)
  if c.dtype not in DTYPES:
    raise ValueError(f'model.dtype={c.dtype!r} is unknown; use one of '
                     f'{tuple(DTYPES)}.')
  precision = c.matmul_precision
  if precision not in PRECISIONS:
    raise ValueError(f'model.matmul_precision={precision!r} is unknown; use '
                     f'one of {PRECISIONS}.')
  if c.activation not in ACTIVATIONS:
    raise ValueError(f'model.activation={c.activation!r} is unknown; use one '
                     f'of {tuple(ACTIVATIONS)}.')
  if not 0 <= c.dropout_rate < 1:
    raise ValueError(f'model.dropout_rate={c.dropout_rate} must be in [0, 1).')
  if c.num_classes <= 0 or c.width <= 0:
    raise ValueError(f'model.num_classes={c.num_classes} and model.width='
                     f'{c.width} must be > 0.')
  # The arguments every architecture takes. Config keys are the attribute
  # names, but for model.init (`init` is flax's Module.init: init_scheme) and
  # the dtype and precision, which the config spells as strings.
  common = dict(num_classes=c.num_classes, input_size=c.input_size,
                activation=c.activation, init_scheme=c.init,
                dtype=DTYPES[c.dtype],
                matmul_precision=None if precision == 'default' else precision)
  return entry.build(c, common, overrides)


def run_once(jitted, *args, platform: str):
  """Compiles and runs a jitted function that runs once, such as an
  initialisation.

  On CPU it is compiled unoptimised: XLA's optimising backend spends tens of
  seconds on the initialisers' random-number hashing in a program that runs
  once, and about a second without optimisation. The values differ from the optimised build's in the
  last bit at most (tests/model_test.py).
  """
  options = {'xla_backend_optimization_level': 0} if platform == 'cpu' else None
  return jitted.lower(*args).compile(options)(*args)


def example_images(model: nn.Module) -> jax.Array:
  """One blank image of the model's input size, for `model.init`."""
  return jnp.zeros((1, model.input_size, model.input_size, 3))


def init_params(model: nn.Module, key, platform: Optional[str] = None):
  """`model.init`'s parameters, as one program on the default device."""
  x = example_images(model)
  return run_once(jax.jit(lambda k: model.init(k, x)['params']), key,
                  platform=platform or jax.devices()[0].platform)


def param_shapes(model: AlexNet):
  """Parameter shapes without allocating them (jax.eval_shape)."""
  return jax.eval_shape(model.init, jax.random.key(0),
                        example_images(model))['params']


def count_params(tree) -> int:
  return int(sum(np.prod(l.shape) for l in jax.tree.leaves(tree)))


def train_macs(model) -> int:
  """Multiply-adds of one training step per image: the forward pass and the
  backward pass's two products per layer (input and weight gradients), less
  conv1's input gradient, which is never computed (the image needs none)."""
  if isinstance(model, four_layer_cnn.FourLayerCNN):
    macs = four_layer_cnn.layer_macs(model)
    return 3 * sum(macs) - macs[0]
  c1 = ops.feature_sizes(model.input_size, model.padding1, model.pool_window,
                         model.pool_stride)[0]
  s1 = model.specs()[0]
  conv1 = c1 * c1 * s1.kernel * s1.kernel * 3 * model.towers * s1.features
  return 3 * forward_macs(model) - conv1


def forward_macs(model) -> int:
  """Multiply-adds of one forward pass of one image (convs and fc layers),
  for any registered architecture (ARCHS).

  The paper's two-tower net at 224 does about 724M (tests/bench_test.py);
  LRN, pooling and the activations are not counted.
  """
  if isinstance(model, four_layer_cnn.FourLayerCNN):
    return int(sum(four_layer_cnn.layer_macs(model)))
  specs = model.specs()
  c1, p1, p2, _ = ops.feature_sizes(model.input_size, model.padding1,
                                    model.pool_window, model.pool_stride)
  t = model.towers
  s1, s2, s3, s4, s5, s6, s7, s8 = specs
  conv = lambda size, s, cin: size * size * s.kernel * s.kernel * cin * s.features
  p5 = ops.output_size(p2, model.pool_window, model.pool_stride)
  per_tower = (conv(c1, s1, 3) + conv(p1, s2, s1.features) +
               conv(p2, s3, t * s2.features) + conv(p2, s4, s3.features) +
               conv(p2, s5, s4.features) +
               p5 * p5 * t * s5.features * s6.features +
               t * s6.features * s7.features + t * s7.features * s8.features)
  return int(t * per_tower)
