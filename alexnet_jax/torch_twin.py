"""The network in PyTorch, as a user would write it, and its train step
timed: the benchmark's `--vs-torch` comparison (bench imports it only then;
PyTorch is imported inside the functions, so this module loads without it).
"""

import os
from typing import Tuple

import jax

from alexnet_jax import four_layer_cnn as four_layer_cnn_lib
from alexnet_jax import model as model_lib
from alexnet_jax import ops
from alexnet_jax import timing


def build(model):
  """The same network in PyTorch (NCHW), for any registered architecture."""
  if isinstance(model, four_layer_cnn_lib.FourLayerCNN):
    return four_layer_cnn(model)
  return alexnet(model)


def four_layer_cnn(model):
  """Figure 1's four-layer net in PyTorch: cuda-convnet's pools, whose last
  window hangs over the edge, are ceil_mode pools (32 -> 16 -> 8 -> 4)."""
  from torch import nn  # pylint: disable=g-import-not-at-top
  act = nn.ReLU if model.activation == 'relu' else nn.Tanh
  (_, f1, _), (_, f2, _), (_, f3, _) = four_layer_cnn_lib.CONVS
  size = model.input_size
  for _ in range(3):
    size = (size - 2) // 2 + 1
  return nn.Sequential(
      nn.Conv2d(3, f1, 5, 1, 2), nn.MaxPool2d(3, 2, ceil_mode=True), act(),
      nn.Conv2d(f1, f2, 5, 1, 2), act(),
      nn.AvgPool2d(3, 2, ceil_mode=True, count_include_pad=False),
      nn.Conv2d(f2, f3, 5, 1, 2), act(),
      nn.AvgPool2d(3, 2, ceil_mode=True, count_include_pad=False),
      nn.Flatten(), nn.Linear(f3 * size * size, model.num_classes))


def alexnet(model: model_lib.AlexNet):
  """The same network in PyTorch (NCHW), as a user would write it."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  t = model.towers
  s1, s2, s3, s4, s5, s6, s7, s8 = model.specs()
  # torch divides alpha by n: pass alpha * n for the paper's formula.
  lrn = model.lrn
  alpha = lrn.alpha if lrn.alpha_over_n else lrn.alpha * lrn.n

  class TowerLRN(nn.Module):
    """LRN whose window stays inside each tower's channels."""

    def __init__(self):
      super().__init__()
      self.lrn = nn.LocalResponseNorm(lrn.n, alpha, lrn.beta, lrn.k)

    def forward(self, x):
      if not lrn.enabled:
        return x
      return torch.cat([self.lrn(c) for c in x.chunk(t, dim=1)], dim=1)

  act = nn.ReLU if model.activation == 'relu' else nn.Tanh
  pool = lambda: nn.MaxPool2d(model.pool_window, model.pool_stride)
  net = nn.Sequential(
      nn.Conv2d(3, t * s1.features, 11, 4, model.padding1), act(),
      TowerLRN(), pool(),
      nn.Conv2d(t * s1.features, t * s2.features, 5, 1, 2, groups=t), act(),
      TowerLRN(), pool(),
      nn.Conv2d(t * s2.features, t * s3.features, 3, 1, 1), act(),
      nn.Conv2d(t * s3.features, t * s4.features, 3, 1, 1, groups=t), act(),
      nn.Conv2d(t * s4.features, t * s5.features, 3, 1, 1, groups=t), act(),
      pool(), nn.Flatten(),
      nn.Linear(t * s5.features * _pool5(model) ** 2, t * s6.features), act(),
      nn.Dropout(model.dropout_rate),
      nn.Linear(t * s6.features, t * s7.features), act(),
      nn.Dropout(model.dropout_rate),
      nn.Linear(t * s7.features, model.num_classes))
  return net


def _pool5(model):
  return ops.feature_sizes(model.input_size, model.padding1,
                           model.pool_window, model.pool_stride)[-1]


def pick_device():
  """'cuda' when PyTorch and jax both see an NVIDIA GPU, else 'cpu'."""
  import torch  # pylint: disable=g-import-not-at-top
  if torch.cuda.is_available() and jax.default_backend() == 'gpu':
    return 'cuda'
  return 'cpu'


def bench_train(model_config, batch_size: int, sgd: Tuple[float, float, float],
                steps: int, warmup: int, compiled: bool = False):
  """The PyTorch twin's train step on the same device kind: (its figures,
  a function that runs one more step). `model_config`: the network's config
  (`config.model`); `sgd`: (learning rate, momentum, weight decay).

  Eager, or with `compiled` as `torch.compile` (inductor) users run it: the
  loss function (the model and the cross-entropy) compiled, which compiles
  its backward pass too (AOTAutograd), and the optimiser's step compiled
  separately, as PyTorch's "Compiling the optimizer" tutorial does. Compile
  time (`torch_compile_seconds`: the warm-up steps' time less as many timed
  steps) is kept out of the step times.

  On CUDA: bfloat16 or float16 (with torch.amp.GradScaler) through autocast
  when model.dtype says so, and TF32
  for float32 products unless model.matmul_precision is 'highest' (as XLA
  does on Ampere and Hopper). Each step is synchronised. (main() keeps jax
  from preallocating the GPU's memory when --vs-torch is given.)
  """
  import torch  # pylint: disable=g-import-not-at-top
  device = pick_device()
  if device == 'cpu':
    torch.set_num_threads(os.cpu_count() or 1)
  else:
    tf32 = model_config.matmul_precision in (
        'default', 'high', 'tensorfloat32')
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True
  model = model_lib.create_model(model_config)
  torch.manual_seed(0)
  net = build(model).to(device)
  learning_rate, momentum, weight_decay = sgd
  opt = torch.optim.SGD(net.parameters(), lr=learning_rate, momentum=momentum,
                        weight_decay=weight_decay)
  size, batch = model_config.input_size, batch_size
  x = torch.randn(batch, 3, size, size, device=device)
  y = torch.randint(0, model_config.num_classes, (batch,), device=device)
  cross_entropy = torch.nn.CrossEntropyLoss()
  half = {'bfloat16': torch.bfloat16,
          'float16': torch.float16}.get(model_config.dtype)
  # float16 with PyTorch's dynamic loss scale, as ours (loss_scale.py).
  scaler = torch.amp.GradScaler(device,
                                enabled=model_config.dtype == 'float16')

  def loss_of(x, y):
    with torch.autocast(device, dtype=half or torch.float32,
                        enabled=half is not None):
      return cross_entropy(net(x), y)

  def opt_step():
    opt.step()

  if compiled:
    loss_of, opt_step = torch.compile(loss_of), torch.compile(opt_step)

  def train_once():
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss_of(x, y)).backward()
    if scaler.is_enabled():  # Skips the step on an overflow (uncompiled).
      scaler.step(opt)
      scaler.update()
    else:
      opt_step()
    if device == 'cuda':
      torch.cuda.synchronize()

  # Compiled, the optimiser's step is compiled again once its momentum
  # buffers exist (the second step): warm up past that.
  warm = max(warmup, 3 if compiled else 1)
  warm_seconds = timing.timed(lambda: [train_once() for _ in range(warm)])
  step_seconds = timing.median_time(train_once, steps, 0)
  name = 'torch_compile' if compiled else 'torch'
  result = {f'{name}_train_img_per_sec': batch / step_seconds,
            'torch_version': torch.__version__, 'torch_device': device}
  if compiled:
    result['torch_compile_seconds'] = max(warm_seconds - warm * step_seconds,
                                          0.0)
    result['torch_compiled'] = (
        'loss (model + cross-entropy) with its backward, and the SGD step; '
        'inductor, default mode')
  return result, train_once
