"""Figure 1 on the embedded digits (no download): ReLU vs tanh, small scale.

Command:

  python -m experiments.run figure1

(both activations over a learning-rate sweep, 3 seeds; table and plot in
experiments/results/figure1/). One run by hand:

  python -m alexnet_jax.main --config configs/figure1_digits.py \
      --workdir runs/figure1_digits_relu

configs/figure1_cifar10.py with the 1,438 training digits upsampled from 8x8
to 32x32; everything else (network, no regularisation, batch 128, constant
learning rate) is the same. One training record per epoch (11 steps).

Expected (experiments/results/figure1/results.md, 3 seeds on a 2-core CPU):
5% training error after 7 epochs with ReLU at its fastest rate
(0.003) and 6 with tanh at its fastest (0.1); tanh is ahead at every epoch,
so on digits the paper's ReLU advantage does not show.
"""

from alexnet_jax.configs import default
from alexnet_jax.configs import figure1_cifar10


def get_config(arg=None):
  config = figure1_cifar10.get_config()
  config.dataset = 'digits'
  config.eval_split = 'validation'
  config.eval_batch_size = 120
  config.num_epochs = 20
  config.log_every_steps = 1438 // 128  # One training record per epoch.
  config.checkpoint_every_steps = 10 * config.log_every_steps
  return default.with_arg(config, arg)
