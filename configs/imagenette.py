"""The paper's network on Imagenette (10 easy ImageNet classes, tfds download).

Command (tfds downloads imagenette/320px-v2, about 330 MB, on first use):

  python -m alexnet_jax.main --config configs/imagenette.py --workdir runs/imagenette

Full-size network, the paper's preprocessing (256, random 224 crops, flips, PCA
lighting, 10-crop testing), He init (9,469 training images are far too few for
the paper's init to leave its plateau). Not yet run here (no internet on the
development machines), so there is no measured result to expect.
"""

from configs import default


def get_config(arg=None):
  config = default.get_config()
  config.dataset = 'imagenette/320px-v2'
  config.model.num_classes = 10
  config.model.init = 'he'
  config.augment.scale = 255.0
  config.num_epochs = 60
  config.lr_schedule = 'plateau'
  config.plateau_patience = 3
  return default.with_arg(config, arg)
