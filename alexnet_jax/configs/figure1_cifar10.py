"""Figure 1: the four-layer CNN on CIFAR-10, ReLU (tanh with one override).

The paper (Section 3.1): "A four-layer convolutional neural network with ReLUs
(solid line) reaches a 25% training error rate on CIFAR-10 six times faster
than an equivalent network with tanh neurons (dashed line). The learning rates
for each network were chosen independently to make training as fast as
possible. No regularization of any kind was employed."

Commands (tfds downloads CIFAR-10, about 160 MB, on first use):

  python -m alexnet_jax.main --config configs/figure1_cifar10.py \
      --workdir runs/figure1_relu
  python -m alexnet_jax.main --config configs/figure1_cifar10.py \
      --workdir runs/figure1_tanh --config.model.activation=tanh

or the whole figure (both activations over a learning-rate sweep and seeds,
with the plot and the epochs to 25% training error; each run stops at 25%
training error or after 60 epochs):

  python -m experiments.run figure1_cifar10

On a CIFAR-10 image folder (train/ and val/, one folder per class) instead of
tfds' download, add
  --config configs/figure1_cifar10.py --config.dataset=image_folder \
  --config.data_dir=DIR --config.eval_split=validation

Expected result (the paper's): ReLU reaches 25% training error in about 6
epochs, tanh in about 36 (read off Figure 1). Ours, on the image-folder copy
of CIFAR-10 (a JPEG re-encoding of the original pixels; --config.dataset=
image_folder as above), the fastest of 3 rates each (chosen on seed 0),
then 3 seeds at each: ReLU (lr 0.002) in 8 epochs (8, 8, 8), tanh (lr 0.01)
in 46 (48, 46, 44): 5.8x, test error then 28.5% and 35.2%
(experiments/results/figure1_cifar10/results.json).

The network is cuda-convnet's layers-19pct.cfg (alexnet_jax/four_layer_cnn.py):
32x32 images as they are (no crops, flips or lighting: "no regularization"),
minus the mean image; no weight decay, no dropout; batch 128, momentum 0.9,
a constant learning rate. `metrics.jsonl` gets one training record per epoch
(log_every_steps = steps per epoch): the mean training error of that epoch's
batches, which is what Figure 1 plots.
"""

from alexnet_jax.configs import default


def get_config(arg=None):
  config = default.get_config()
  config.dataset = 'cifar10'
  config.eval_split = 'test'  # CIFAR-10 has no validation split.
  config.image_size = 32
  config.augment.random_crop = False
  config.augment.flip = False
  config.augment.pca_lighting = 0.0
  config.eval_crops = 1
  config.model.arch = 'four_layer_cnn'
  config.model.num_classes = 10
  config.model.input_size = 32
  config.model.dropout_rate = 0.0
  config.model.init = 'paper'  # layers-19pct.cfg's initW.
  config.weight_decay = 0.0
  config.batch_size = 128
  config.eval_batch_size = 500
  config.learning_rate = 0.01
  config.lr_schedule = 'constant'
  # Figure 1 measures the time to 25% training error: each run stops there,
  # or after 60 epochs (tanh took about 36 in the paper).
  config.stop_at_train_err = 0.25
  config.num_epochs = 60
  config.eval_every_epochs = 5
  config.log_every_steps = 50_000 // 128  # One training record per epoch.
  config.checkpoint_every_steps = 50_000 // 128
  return default.with_arg(config, arg)
