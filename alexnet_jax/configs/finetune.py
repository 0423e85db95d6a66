"""Fine-tuning: start from a trained or imported AlexNet, train on your images.

Command (SOURCE: a training workdir, one of its checkpoints, or a workdir made
by `python -m alexnet_jax.pretrained`; DATA_DIR holds train/<class>/ and
val/<class>/ as for configs/image_folder.py):

  python -m alexnet_jax.main --config configs/finetune.py --workdir runs/ft \
      --config.finetune.init_from=SOURCE --config.data_dir=DATA_DIR \
      --config.model.num_classes=N

The source's architecture, input size and normalisation are adopted
(finetune.copy_model); fc8 starts afresh for the N new classes, the
convolutional layers stay frozen, fc6-fc8 train. Re-initialise or freeze other
layers with --config.finetune.reinit='("fc7","fc8")' or
--config.finetune.freeze='()'. What to expect depends on your data; the test
suite fine-tunes a digits run on a small image folder.
"""

from alexnet_jax.configs import default


def get_config(arg=None):
  config = default.get_config()
  config.dataset = 'image_folder'
  config.finetune.init_from = None  # Required: --config.finetune.init_from.
  config.finetune.reinit = ('fc8',)
  config.finetune.freeze = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')
  config.model.init = 'he'  # For the re-initialised layers.
  config.learning_rate = 0.001  # A tenth of the paper's: the weights are good.
  config.lr_schedule = 'plateau'
  config.plateau_patience = 2
  config.num_epochs = 10
  config.augment.pca_lighting = 0.0
  return default.with_arg(config, arg)
