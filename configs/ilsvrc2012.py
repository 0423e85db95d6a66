"""The paper's ImageNet (ILSVRC-2012) recipe: every default of configs/default.py.

Data (once): put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from
image-net.org in a directory, then

  python -m alexnet_jax.datasets.prepare --config configs/ilsvrc2012.py \
      --config.manual_dir=/path/to/tars

(tfds converts them, with progress bars, into ~/tensorflow_datasets or
--config.data_dir, then the mean image and RGB eigenpairs are computed).

Train, one tower per device on two devices as in the paper:

  python -m alexnet_jax.main --config configs/ilsvrc2012.py --workdir runs/ilsvrc \
      --config.manual_dir=/path/to/tars --config.mesh.model=2

Expected result, from the paper (Table 2, one CNN): 40.7% top-1 and 18.2% top-5
error on the ILSVRC-2012 validation set, 10-crop testing, after about 90 epochs
with three learning-rate drops. Not yet run here: no accelerator was available,
so there is no measured time per epoch to quote.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = 'imagenet2012'
  return config
