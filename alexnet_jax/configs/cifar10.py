"""The two-tower network on CIFAR-10 (tfds downloads it, about 160 MB).

Command:

  python -m alexnet_jax.main --config configs/cifar10.py --workdir runs/cifar10

As configs/digits.py: 32x32 images upsampled to 128 with random 112 crops, half
width, He init; plus the paper's flips and PCA lighting. Evaluates on the test
split (CIFAR-10 has no validation split). Not yet run here (no internet on the
development machines), so there is no measured result to expect.
"""

from alexnet_jax.configs import default


def get_config(arg=None):
  config = default.get_config()
  config.dataset = 'cifar10'
  config.eval_split = 'test'
  config.image_size = 128
  config.model.input_size = 112
  config.model.width = 0.5
  config.model.num_classes = 10
  config.model.init = 'he'
  config.augment.scale = 255.0
  config.batch_size = 128
  config.num_epochs = 40
  config.lr_schedule = 'milestones'
  config.lr_milestones = (25, 35)
  return default.with_arg(config, arg)
