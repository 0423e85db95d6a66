"""The paper's ImageNet (ILSVRC-2012) recipe.

Command (once the ImageNet input path exists; see README "Status"):

  python -m alexnet_jax.main --config configs/ilsvrc2012.py --workdir runs/ilsvrc \
      --config.manual_dir=/path/to/ILSVRC2012_tars --config.mesh.model=2

Expected result, from the paper (Table 2, one CNN, 10-crop testing): 40.7% top-1
and 18.2% top-5 error on the ILSVRC-2012 validation set after about 90 epochs.
mesh.model=2 reproduces the paper's two-GPU split on two devices.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = 'imagenet2012'
  return config
