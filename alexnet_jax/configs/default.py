"""The paper's defaults: every value here matches Krizhevsky et al. (2012).

Other configs import this one and override a few fields. Not meant to be run
by itself (it names no runnable dataset); see configs/ilsvrc2012.py for the
ImageNet recipe and configs/digits.py for the embedded demo.

Durations are written in epochs; `alexnet_jax/durations.py` converts them to
steps in one place.
"""

import ml_collections
from ml_collections import config_dict

# Toy size: tiny images and widths, a train step in milliseconds, for tests of
# the code and a first look (`--config configs/digits.py:toy`); never results.
TOY = {'image_size': 72, 'model.input_size': 64, 'model.width': 1 / 16,
       'model.fc_features': 256, 'batch_size': 16, 'eval_batch_size': 40}
ARGS = ('toy',)


def with_arg(config: ml_collections.ConfigDict,
             arg: str = None) -> ml_collections.ConfigDict:
  """Applies a config file's argument (`--config configs/X.py:ARG`).

  None keeps the config; 'toy' shrinks it to TOY (the mesh is kept).
  """
  if not arg:
    return config
  if arg not in ARGS:
    raise ValueError(f'config argument {arg!r} is unknown; use one of {ARGS} '
                     '(e.g. configs/digits.py:toy) or none.')
  config.update_from_flattened_dict(TOY)
  return config


def get_config(arg: str = None) -> ml_collections.ConfigDict:
  """Returns the paper's configuration (`arg`: see with_arg)."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  # ---- Data -----------------------------------------------------------------
  # tfds name: 'digits' (embedded, no download) or 'imagenet2012'.
  config.dataset = 'imagenet2012'
  config.data_dir = config_dict.placeholder(str)  # tfds data dir (None: tfds default).
  config.manual_dir = config_dict.placeholder(str)  # where the ILSVRC tars are.
  config.train_split = 'train'
  config.eval_split = 'validation'
  # Host preprocessing, done once when the dataset is prepared into its store
  # (alexnet_jax.datasets.store): shorter side resized to image_size, centre
  # crop image_size x image_size, kept as uint8 (paper: 256).
  config.image_size = 256
  # Images whose header declares more pixels are refused before decoding
  # (image_folder skips and reports them; other datasets and the features
  # command stop with one line). Pillow's default; 0 removes the limit.
  config.max_image_pixels = 89_478_485
  config.store = ml_collections.ConfigDict()
  # How the store keeps pixels: 'raw' uint8 (196,608 bytes an image at 256;
  # the fastest to read) or 'jpeg' at jpeg_quality (several times smaller,
  # decoded on every read). docs/data.md gives the measurements.
  config.store.format = 'raw'
  config.store.jpeg_quality = 95
  # About how many bytes each store file holds.
  config.store.file_bytes = 1 << 30
  # Where stores are written (None: data_dir for a tfds dataset, else tfds'
  # default data dir; never inside an image folder): datasets/store.py.
  config.store.dir = config_dict.placeholder(str)
  # An image folder's listing (names, sizes, mtimes) is compared with its
  # store's at each start when the folder is present, and a changed split is
  # prepared again (where only the mtimes changed, as in a copy, the files
  # are read and kept if their contents match); False skips the comparison.
  config.store.check_source = True
  # Host input: threads that read (and for 'jpeg' decode) batches, 0 for every
  # core of the host; and how many batches are read ahead.
  config.input = ml_collections.ConfigDict()
  config.input.workers = 0
  config.input.prefetch = 4

  # ---- Augmentation and normalisation (on device, jitted) -------------------
  config.augment = ml_collections.ConfigDict()
  config.augment.random_crop = True  # Random model.input_size crops (paper).
  config.augment.flip = True  # Random horizontal flips (paper).
  # 'per_pixel': subtract the training set's mean image (paper);
  # 'none': keep raw pixels.
  config.augment.mean = 'per_pixel'
  # Pixels are divided by this after mean subtraction (paper: 1, raw 0..255).
  config.augment.scale = 1.0
  # PCA lighting: std of the per-image alphas (paper: 0.1; 0 disables).
  config.augment.pca_lighting = 0.1
  # Evaluation views: 10 (4 corners + centre and their flips, softmax
  # averaged: the paper's test) or 1 (centre crop).
  config.eval_crops = 10

  # ---- Model (see alexnet_jax/model.py) -------------------------------------
  config.model = ml_collections.ConfigDict()
  # 'alexnet' (the paper's network) or 'four_layer_cnn' (Figure 1's small
  # CIFAR-10 net, configs/figure1_cifar10.py; it uses only num_classes,
  # input_size, activation, init and dtype below).
  config.model.arch = 'alexnet'
  config.model.layout = 'two_towers'  # | 'one_tower_half' | 'single_tower'
  config.model.num_classes = 1000
  config.model.input_size = 224  # Crop size: 224 (paper) or 227 (Caffe).
  config.model.conv1_padding = -1  # -1: 2 for 224-style inputs, 0 for 227.
  config.model.width = 1.0  # Multiplies every layer's width (demos: < 1).
  # Total conv1..conv5 kernels (None: the layout's own, paper 96-256-384-384-256).
  config.model.conv_features = config_dict.placeholder(tuple)
  config.model.fc_features = 4096
  config.model.activation = 'relu'  # | 'tanh' (Figure 1)
  config.model.lrn = ml_collections.ConfigDict()
  config.model.lrn.enabled = True
  # The paper's formula and constants; see ops.LRN_CONVENTIONS for Caffe
  # (k=1, alpha_over_n=True) and PyTorch (the same as Caffe).
  config.model.lrn.n = 5
  config.model.lrn.k = 2.0
  config.model.lrn.alpha = 1e-4
  config.model.lrn.beta = 0.75
  config.model.lrn.alpha_over_n = False
  # Each tower normalises its own maps (paper). True: across both towers'
  # maps, as Caffe's bvlc_alexnet does (needs both towers on one device).
  config.model.lrn.across_towers = False
  config.model.pool_window = 3  # 3x3 stride 2: overlapping (paper); 2/2: not.
  config.model.pool_stride = 2
  config.model.dropout_rate = 0.5  # On fc6 and fc7, training only.
  config.model.init = 'paper'  # | 'caffe' | 'he'
  # Compute dtype: 'float32', 'bfloat16' (TPUs, GPUs since Ampere) or
  # 'float16' (T4, V100: with the dynamic loss scale below). Parameters,
  # optimiser state, the logits, loss and the gradients' all-reduce stay
  # float32 in every case.
  config.model.dtype = 'float32'
  # Convolutions and matmuls: 'default' is the backend's choice (for float32:
  # TF32 on Ampere and Hopper GPUs, one bfloat16 pass on TPU, full float32 on
  # CPU); 'highest' forces full float32 (slower on accelerators).
  config.model.matmul_precision = 'default'
  # LRN and max pooling with their hand-written VJPs (ops.py: less memory,
  # and max pooling's is deterministic on GPUs, where XLA's select-and-scatter
  # adds atomically); False differentiates the plain ops (for timing).
  config.model.custom_vjp = True

  # ---- Devices --------------------------------------------------------------
  # Mesh ('data', 'model'). model=2 puts one tower on each device, as on the
  # paper's two GPUs; -1 means all remaining devices.
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1
  config.mesh.model = 1
  # How the `model` axis is used: 'towers' (the paper's split: each device
  # holds whole towers) or 'one_weird_trick' (Krizhevsky 2014: convolutions
  # data parallel over every device, fc layers' units split over `model`).
  # Either gives the same training; only the communication differs.
  config.mesh.scheme = 'towers'
  # Several processes (hosts): the coordinator's host:port (process 0), the
  # process count and this process's id. Unset (None / -1) they come from
  # JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID, or from
  # SLURM under srun; with none of these, the run is one process.
  config.distributed = ml_collections.ConfigDict()
  config.distributed.coordinator_address = config_dict.placeholder(str)
  config.distributed.num_processes = -1
  config.distributed.process_id = -1
  config.distributed.timeout_seconds = 300

  # ---- Optimisation (Section 5) ---------------------------------------------
  config.batch_size = 128  # Global batch.
  config.eval_batch_size = 128
  config.momentum = 0.9
  config.weight_decay = 5e-4
  config.decay_biases = True  # Paper: decay on every weight; Caffe: not biases.
  config.learning_rate = 0.01  # At lr_reference_batch; see lr_scaling.
  # When batch_size differs from lr_reference_batch by a factor k, the rate
  # used is learning_rate times: 1 ('none', the default: the paper trained
  # at 128 only), k ('linear') or sqrt(k) ('sqrt', Krizhevsky 2014).
  config.lr_scaling = 'none'
  config.lr_reference_batch = 128
  # 'plateau': divide by 10 when validation top-1 error has not improved for
  # `plateau_patience` evaluations, at most `max_lr_drops` times (the paper's
  # manual rule, automated). 'milestones': divide by 10 at each epoch in
  # `lr_milestones`. 'constant'.
  config.lr_schedule = 'plateau'
  config.plateau_patience = 3
  config.max_lr_drops = 3
  config.lr_milestones = ()
  # Set when resuming to change the rate by hand, as the paper's authors did;
  # it replaces the schedule's rate from the resumed step on (-1: unused).
  config.lr_override = -1.0
  # model.dtype='float16' only: the dynamic loss scale's start and the finite
  # steps in a row after which it doubles (jmp's and PyTorch's defaults). An
  # overflow skips the step and halves it (never below 1).
  config.loss_scale = ml_collections.ConfigDict()
  config.loss_scale.initial = 2.0 ** 15
  config.loss_scale.period = 2000

  # ---- Fine-tuning (configs/finetune.py) -------------------------------------
  config.finetune = ml_collections.ConfigDict()
  # A workdir or checkpoint (a run, or `python -m alexnet_jax.pretrained`) to
  # start from; None trains from scratch.
  config.finetune.init_from = config_dict.placeholder(str)
  # Take the source's model.* (but init, and num_classes when fc8 is re-made),
  # image_size, augment.mean / scale and mean image, so its weights fit.
  config.finetune.copy_model = True
  config.finetune.reinit = ()  # Layers to initialise afresh, e.g. ('fc8',).
  config.finetune.freeze = ()  # Layers never updated, e.g. conv1..conv5.

  # ---- Duration, logging, checkpoints ---------------------------------------
  config.num_epochs = 90.0
  config.num_train_steps = -1  # > 0 overrides num_epochs (short runs, tests).
  # > 0: stop (evaluating and checkpointing) at the first training record whose
  # mean training top-1 error is at most this, e.g. 0.25 for Figure 1; the run
  # is then finished, and rerunning it only evaluates. -1: off.
  config.stop_at_train_err = -1.0
  config.eval_every_epochs = 1.0
  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  # 'A:B': a jax.profiler trace of global steps A+1..B in WORKDIR/profile
  # (TensorBoard's profile tab or ui.perfetto.dev read it); '' off.
  config.profile_steps = ''
  return with_arg(config, arg)
