"""Each convolution of the paper's net, forward and backward, beside PyTorch.

  python -m experiments.conv_layers [--batch 128] [--repeats 3] \
      [--layers conv1,conv2,...]

Prints one JSON line per layer: milliseconds of the forward pass and of
forward + both gradients (the kernel's; the input's too, but for conv1 whose
input is the image), for this code's convolution as training runs it
(`ops.conv2d`: on CPU, the chunked matmuls of cpu_kernels for the gradients
and conv1), for XLA's own convolutions, and for PyTorch's (`F.conv2d`, oneDNN
on CPU) when torch is installed. One tower of each layer, float32, the
paper's shapes; conv2, conv4 and conv5 run once per tower in training, conv1
and conv3 once for both towers (their kernels side by side). Each figure is
the median of `--repeats` timings after one untimed call; the three are timed
in alternation so that they see the same machine load. Where the train step's
time goes, layer by layer, against the same layers in PyTorch (#19).
"""

import json
import statistics
import time

import jax
import jax.numpy as jnp

from alexnet_jax import cli
from alexnet_jax import ops

# name: (input size, in channels, out channels, kernel, stride, padding,
# whether the input needs a gradient); one tower, or both where they share
# one convolution.
LAYERS = {
    'conv1': (224, 3, 96, 11, 4, 2, False),
    'conv2': (27, 48, 128, 5, 1, 2, True),
    'conv3': (13, 256, 384, 3, 1, 1, True),
    'conv4': (13, 192, 192, 3, 1, 1, True),
    'conv5': (13, 192, 128, 3, 1, 1, True),
}


def _median_ms(fn, repeats):
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return 1000 * statistics.median(times)


def jax_fns(conv, x, w, needs_dx):
  """(forward, forward + gradients) as zero-argument calls that finish."""
  fwd = jax.jit(conv)
  grad = jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2) / 2,
                          argnums=(0, 1) if needs_dx else 1))
  return (lambda: jax.block_until_ready(fwd(x, w)),
          lambda: jax.block_until_ready(grad(x, w)))


def torch_fns(batch, hw, cin, cout, k, stride, padding, needs_dx):
  import torch  # pylint: disable=g-import-not-at-top
  x = torch.randn(batch, cin, hw, hw, requires_grad=needs_dx)
  w = (torch.randn(cout, cin, k, k) * 0.01).requires_grad_()
  conv = lambda: torch.nn.functional.conv2d(x, w, stride=stride,
                                            padding=padding)

  def fwd():
    with torch.no_grad():
      conv()

  def grad():
    (conv().pow(2).sum() / 2).backward()
    x.grad = w.grad = None

  return fwd, grad


def measure(name, batch=128, repeats=3, with_torch=True):
  """One layer's figures as a dict (what a line of the output holds)."""
  hw, cin, cout, k, stride, padding, needs_dx = LAYERS[name]
  x = jax.random.normal(jax.random.key(0), (batch, hw, hw, cin))
  w = jax.random.normal(jax.random.key(1), (k, k, cin, cout)) * 0.01
  impls = {
      'ours': jax_fns(lambda x, w: ops.conv2d(x, w, stride, padding), x, w,
                      needs_dx),
      'xla': jax_fns(lambda x, w: ops._lax_conv(x, w, stride, padding),  # pylint: disable=protected-access
                     x, w, needs_dx)}
  if with_torch:
    impls['torch'] = torch_fns(batch, hw, cin, cout, k, stride, padding,
                               needs_dx)
  for fwd, grad in impls.values():  # Compile and warm up.
    fwd()
    grad()
  times = {f'{impl}_{part}_ms': [] for impl in impls
           for part in ('fwd', 'fwd_bwd')}
  for _ in range(repeats):
    for impl, (fwd, grad) in impls.items():
      times[f'{impl}_fwd_ms'].append(_median_ms(fwd, 1))
      times[f'{impl}_fwd_bwd_ms'].append(_median_ms(grad, 1))
  out_hw = ops.output_size(hw, k, stride, padding)
  result = {'layer': name, 'batch': batch,
            'forward_gflop': 2 * batch * out_hw ** 2 * cin * cout * k * k / 1e9}
  result.update({key: round(statistics.median(v), 1)
                 for key, v in times.items()})
  return result


def main():
  parser = cli.ArgumentParser(prog='python -m experiments.conv_layers',
                              description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--layers', default=','.join(LAYERS))
  args = parser.parse_args()
  unknown = set(args.layers.split(',')) - set(LAYERS)
  if unknown:
    raise SystemExit(f'unknown layers {sorted(unknown)}; use some of '
                     f'{",".join(LAYERS)}.')
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
    with_torch = True
  except ImportError:
    with_torch = False
  for name in args.layers.split(','):
    print(json.dumps(measure(name, args.batch, args.repeats, with_torch)),
          flush=True)


if __name__ == '__main__':
  cli.run_main(main, 'experiments.conv_layers')
