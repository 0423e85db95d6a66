"""The paper's ImageNet (ILSVRC-2012) recipe: every default of configs/default.py.

Data (once): put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from
image-net.org in a directory, then

  python -m alexnet_jax.datasets.prepare --config configs/ilsvrc2012.py \
      --config.manual_dir=/path/to/tars

(tfds converts them, with progress bars, into ~/tensorflow_datasets or
--config.data_dir; then every image is decoded and resized once into the store,
252 GB of raw 256x256 pixels for the training set, or about 38 GB with
--config.store.format=jpeg (at the 29,760 bytes an image measured on photos:
experiments/results/bench/pipeline_photos10_jpeg.json); --config.store.dir
puts it on another disk; then the mean image and RGB eigenpairs are computed).

Train, one tower per device on two devices as in the paper:

  python -m alexnet_jax.main --config configs/ilsvrc2012.py --workdir runs/ilsvrc \
      --config.manual_dir=/path/to/tars --config.mesh.model=2

Expected result, from the paper (Table 2, one CNN): 40.7% top-1 and 18.2% top-5
error on the ILSVRC-2012 validation set, 10-crop testing, after about 90 epochs
with three learning-rate drops. Five such networks averaged
(`python -m alexnet_jax.ensemble --workdirs RUN1 ... RUN5`): 38.1 / 16.4.

Expected time per epoch (1,281,167 images): the paper's run took five to six
days for about 90 epochs on two NVIDIA GTX 580 3GB GPUs, about 1.3 to 1.6
hours an epoch (Section 5). Not yet run here: no accelerator was lent to the
development machines, so there is no measured time of ours. The host input
reads the prepared store at about 3,100 images/s per CPU core (raw) or 920
(jpeg), measured on a 2-core CPU (experiments/results/bench/
pipeline_photos10_raw.json and pipeline_photos10_jpeg.json; docs/performance.md),
so it is not the bound on a modern GPU given a disk fast enough (2 GB/s per
10,000 images/s raw): about 4 minutes an epoch would need 5,300 images/s,
e.g. 2 cores reading raw (1,281,167 / 5,300 s): arithmetic from those rates,
not a measurement.
"""

from alexnet_jax.configs import default


def get_config(arg=None):
  config = default.get_config()
  config.dataset = 'imagenet2012'
  return default.with_arg(config, arg)
