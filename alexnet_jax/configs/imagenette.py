"""The paper's network on Imagenette (10 easy ImageNet classes, tfds download).

Command (tfds downloads imagenette/320px-v2, about 330 MB, on first use):

  python -m alexnet_jax.main --config configs/imagenette.py --workdir runs/imagenette

Full-size network, the paper's preprocessing (256, random 224 crops, flips, PCA
lighting, 10-crop testing), He init: on the 224 px image-folder copy of
Imagenette (../shared/data/imagenette, through configs/image_folder.py with
the same recipe), the paper's init left the training loss at chance (2.3025)
for 3 epochs (experiments/results/imagenette/paper_init_metrics.jsonl).
Measured there (experiments/results/imagenette/results.json, 30 epochs, one
seed, eval every 2 epochs; the LR fell to 0.001 at epoch 26): val top-1 /
top-5 error 18.98 / 2.06% with the centre crop, 18.19 / 1.91% with 10 crops.
This config's own tfds download (320 px, 60 epochs) has not been run here (no
internet).
"""

from alexnet_jax.configs import default


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
