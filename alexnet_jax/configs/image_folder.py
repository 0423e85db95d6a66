"""Your own images: the paper's network and recipe on DATA_DIR/{train,val}/<class>/.

Command:

  python -m alexnet_jax.main --config configs/image_folder.py --workdir runs/mine \
      --config.data_dir=/path/to/DATA_DIR --config.model.num_classes=N

DATA_DIR holds train/<class>/<images> and val/<class>/<images> (the same
classes, none empty); the run stops at once, naming the right value, if
num_classes does not match the folders. DATA_DIR is only read: its store goes
under --config.store.dir=DIR or tfds' data dir (~/tensorflow_datasets), and is
prepared again when the folder's files change. Unreadable files are skipped
(and reported) when the store is written.
What to expect depends on your data: with a few hundred images per class,
train from `model.init='he'` (as configs/digits.py does) rather than the paper's
init, which needs ImageNet's scale to leave its initial plateau.
"""

from alexnet_jax.configs import default


def get_config(arg=None):
  config = default.get_config()
  config.dataset = 'image_folder'
  config.model.init = 'he'
  config.augment.scale = 255.0  # Pixels to about [-1, 1] for the He init.
  config.num_epochs = 30
  config.lr_schedule = 'plateau'
  config.plateau_patience = 3
  return default.with_arg(config, arg)
