"""The digits tfds builder, the prepared store, the input order and reads,
statistics, augmentation."""

import itertools
import os

import numpy as np
import pytest

from alexnet_jax import augment
from alexnet_jax import evaluation
from alexnet_jax import errors
from alexnet_jax import input_pipeline
from alexnet_jax.datasets import digits
from alexnet_jax.datasets import source
from alexnet_jax.datasets import stats as stats_lib
from alexnet_jax.datasets import store as store_lib
from tests.helpers import tiny_config


reading = input_pipeline.Reading.from_config


def data(config, name='train'):
  return store_lib.get(config).split(name)


def test_digits_builder_splits(digits_dir):
  builder = store_lib.Spec.from_config(tiny_config(digits_dir)).builder()
  assert builder.info.splits['train'].num_examples == 1438
  assert builder.info.splits['validation'].num_examples == 359
  assert builder.info.features['label'].num_classes == 10
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  labels = datasets.load_digits().target
  train_idx, val_idx = digits.split_indices(labels)
  assert not set(train_idx) & set(val_idx)
  assert len(train_idx) + len(val_idx) == 1797
  # Stratified: every class is about 20% held out.
  for c in range(10):
    frac = (labels[val_idx] == c).sum() / (labels == c).sum()
    assert 0.18 < frac < 0.22


@pytest.mark.slow
def test_store_holds_the_host_preprocessed_split_in_order(digits_dir):
  config = tiny_config(digits_dir)
  builder = store_lib.Spec.from_config(config).builder()
  split = data(config)
  assert len(split) == 1438 and split.format == 'raw'
  assert split.classes == [str(i) for i in range(10)]
  assert split.bytes_per_image == 72 * 72 * 3
  want = np.concatenate([b['image'] for b in source.preprocessed(
      builder, 'train', 72)])
  labels = np.concatenate([b['label'] for b in source.preprocessed(
      builder, 'train', 72)])
  got = split.read(range(1438))
  np.testing.assert_array_equal(got['image'], want)
  np.testing.assert_array_equal(got['label'], labels)
  # Any indices, any order.
  got = split.read([5, 3, 1400])
  np.testing.assert_array_equal(got['image'], want[[5, 3, 1400]])
  # Grey digits become RGB with equal channels, real strokes, black corners.
  np.testing.assert_array_equal(want[..., 0], want[..., 2])
  assert want.max() > 200 and want[:, 0, 0].max() < 30


@pytest.mark.slow
def test_jpeg_store_is_the_raw_one_up_to_jpeg_loss(digits_dir):
  config = tiny_config(digits_dir)
  raw = data(config).read(range(64))
  config.store.format = 'jpeg'
  split = data(config)
  assert split.format == 'jpeg' and 'store_72_jpeg_q95' in split.path
  assert split.bytes_per_image < 72 * 72 * 3 / 2
  jpeg = split.read(range(64))
  np.testing.assert_array_equal(raw['label'], jpeg['label'])
  diff = np.abs(raw['image'].astype(float) - jpeg['image'].astype(float))
  assert diff.mean() < 3, diff.mean()
  # Training reads the same order from either.
  a = next(input_pipeline.train_batches(split, reading(config), 0))
  config.store.format = 'raw'
  b = next(input_pipeline.train_batches(data(config), reading(config), 0))
  np.testing.assert_array_equal(a['label'], b['label'])


def test_epoch_order_is_a_full_permutation_of_seed_and_epoch(digits_dir):
  config = tiny_config(digits_dir)
  config.batch_size = 64
  split = data(config)
  per_epoch = 1438 // 64
  counted = store_lib.Split(split.path)
  labels = lambda epoch, start=0, n=5: np.concatenate(
      [b['label'] for b in itertools.islice(
          input_pipeline.train_batches(split, reading(config), epoch, start),
          n)])
  e0 = labels(0)
  np.testing.assert_array_equal(e0, labels(0))
  assert not np.array_equal(e0, labels(1))
  # Resuming two batches into the epoch gives the batches that follow.
  np.testing.assert_array_equal(labels(0, start=2, n=3), e0[128:])
  config.seed = 1
  assert not np.array_equal(e0, labels(0))
  config.seed = 0
  # An epoch is (seed, epoch)'s permutation: every example at most once.
  for epoch in (0, 1):
    order = input_pipeline.epoch_order(1438, 0, epoch)
    images = np.concatenate([b['image'] for b in input_pipeline.train_batches(
        counted, reading(config), epoch)])
    assert len(images) == per_epoch * 64
    np.testing.assert_array_equal(
        images, split.read(order[:per_epoch * 64])['image'])
  # Far from the previous epoch's order: not a slowly shuffled file order.
  a, b = (input_pipeline.epoch_order(1438, 0, e) for e in (0, 1))
  assert abs(np.corrcoef(a, b)[0, 1]) < 0.1
  assert np.mean(np.abs(np.argsort(a) - np.argsort(b))) > 300


def test_resumed_stream_equals_uninterrupted_batch_for_batch(digits_dir):
  config = tiny_config(digits_dir)
  config.batch_size = 200  # 7 batches an epoch: N=10 crosses an epoch.
  split = data(config)
  per_epoch = 1438 // 200
  take = lambda it, n: [next(it) for _ in range(n)]
  straight = take(input_pipeline.train_stream(split, reading(config)), 10)
  k = 5
  first = take(input_pipeline.train_stream(split, reading(config)), k)
  resumed = take(input_pipeline.train_stream(
      split, reading(config), k // per_epoch, k % per_epoch), 10 - k)
  for a, b in zip(straight, first + resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  # Epoch 1 is a new order, not a repeat of epoch 0.
  assert not np.array_equal(straight[0]['label'], straight[per_epoch]['label'])


def test_resuming_at_the_end_of_an_epoch_reads_only_what_it_needs(digits_dir):
  config = tiny_config(digits_dir)
  config.input.workers, config.input.prefetch = 2, 2
  split = store_lib.Split(data(config).path)  # A fresh read count.
  per_epoch = 1438 // 16
  stream = input_pipeline.train_stream(split, reading(config), 3,
                                       per_epoch - 1)
  last = next(stream)
  want = split.read(input_pipeline.epoch_order(1438, 0, 3)[
      (per_epoch - 1) * 16:per_epoch * 16])
  np.testing.assert_array_equal(last['image'], want['image'])
  split.records_read -= 16  # The check's own read.
  # The batch itself and at most the prefetched ones after it: nothing of the
  # 89 batches before it.
  assert 16 <= split.records_read <= 16 * (1 + 2), split.records_read
  nxt = next(stream)  # Carries on into epoch 4.
  np.testing.assert_array_equal(nxt['label'], split.read(
      input_pipeline.epoch_order(1438, 0, 4)[:16])['label'])


def test_each_process_reads_only_its_rows_of_the_same_batches(digits_dir):
  # What two hosts of a 2 x 2 mesh (two devices each) read: their halves of
  # the one-process batches, in the same order, for training and evaluation,
  # and nothing else.
  from alexnet_jax import parallel  # pylint: disable=g-import-not-at-top
  config = tiny_config(digits_dir)
  config.input.prefetch = 1
  config.input.workers = 1
  path = data(config).path
  mesh = parallel.create_mesh(2, 2)
  assert parallel.process_rows(mesh, 16) == (0, 16)  # One process: all.
  whole = list(itertools.islice(
      input_pipeline.train_batches(data(config), reading(config), 0), 3))
  splits = [store_lib.Split(path) for _ in range(2)]
  halves = [list(itertools.islice(input_pipeline.train_batches(
      s, reading(config), 0, rows=rows), 3)) for s, rows in zip(splits,
                                                       ((0, 8), (8, 16)))]
  for w, a, b in zip(whole, *halves):
    for k in w:
      np.testing.assert_array_equal(w[k], np.concatenate([a[k], b[k]]))
  for s in splits:  # 3 batches of 8 rows, and at most 2 read ahead.
    assert 24 <= s.records_read <= 40, s.records_read
  val = data(config, 'validation')
  whole = list(input_pipeline.eval_batches(val, reading(config)))
  splits = [store_lib.Split(val.path) for _ in range(2)]
  halves = [list(input_pipeline.eval_batches(s, reading(config), rows=rows))
            for s, rows in zip(splits, ((0, 20), (20, 40)))]
  assert len(whole) == len(halves[0]) == len(halves[1]) == 9
  for w, a, b in zip(whole, *halves):
    for k in w:
      np.testing.assert_array_equal(w[k], np.concatenate([a[k], b[k]]))
  # 359 = 8 full batches and 39 of the last: host 0 reads 8 * 20 + 20,
  # host 1 8 * 20 + 19.
  assert [s.records_read for s in splits] == [180, 179]


def test_eval_batches_cover_the_split_once(digits_dir):
  config = tiny_config(digits_dir)
  split = data(config, 'validation')
  batches = list(input_pipeline.eval_batches(split, reading(config)))
  assert all(len(b['label']) == 40 for b in batches)
  mask = np.concatenate([b['mask'] for b in batches])
  assert mask.sum() == 359 and mask[:359].all() and not mask[359:].any()
  images = np.concatenate([b['image'] for b in batches])
  np.testing.assert_array_equal(images[:359], split.read(range(359))['image'])
  assert not images[359:].any()


def test_dataset_statistics(digits_dir):
  config = tiny_config(digits_dir)
  store = store_lib.get(config)
  stats = stats_lib.load_or_compute(store, 'train')
  images = store.split('train').read(range(1438))['image'].astype(np.float64)
  assert int(stats['num_images']) == 1438
  np.testing.assert_allclose(stats['mean'], images.mean(0), rtol=1e-5)
  cov = np.cov(images.reshape(-1, 3).T / 255.0, bias=True)
  np.testing.assert_allclose(
      stats['eigvecs'] @ np.diag(stats['eigvals']) @ stats['eigvecs'].T, cov,
      atol=1e-6)
  assert stats['eigvals'][0] >= stats['eigvals'][1] >= stats['eigvals'][2]
  # Grey digits: one component (brightness) holds all the variance.
  np.testing.assert_allclose(np.abs(stats['eigvecs'][:, 0]), 3 ** -0.5,
                             rtol=1e-3)
  assert os.path.exists(store.stats_path('train'))
  again = stats_lib.load_or_compute(store, 'train')
  np.testing.assert_array_equal(again['mean'], stats['mean'])


def test_training_statistics_switches(digits_dir):
  config = tiny_config(digits_dir)
  store = store_lib.get(config)
  config.augment.mean = 'none'
  config.augment.pca_lighting = 0.1
  stats = stats_lib.load(store, 'train', config.image_size,
                         config.augment.mean, config.augment.pca_lighting)
  assert not stats.mean.any() and stats.eigvals[0] > 0
  assert stats.mean.shape == (config.image_size, config.image_size, 3)
  config.augment.mean = 'per_pixel'
  config.augment.pca_lighting = 0.0
  with_mean = stats_lib.load(store, 'train', config.image_size,
                             config.augment.mean, config.augment.pca_lighting)
  assert with_mean.mean.any()
  np.testing.assert_array_equal(with_mean.eigvals, stats.eigvals)


def test_unknown_dataset_is_a_clear_error(tmp_path):
  config = tiny_config(str(tmp_path))
  config.dataset = 'no_such_dataset_xyz'
  with pytest.raises(errors.DataError, match='not a tfds dataset'):
    store_lib.get(config)
  config = tiny_config(str(tmp_path))
  config.store.format = 'png'
  with pytest.raises(errors.ConfigError, match="store.format='png'"):
    store_lib.get(config)


@pytest.mark.slow
def test_augmentation_ops():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  images = jnp.arange(2 * 8 * 8 * 3, dtype=jnp.float32).reshape(2, 8, 8, 3)
  keys = augment.example_keys(jax.random.key(0), jnp.arange(2))
  crops = np.asarray(augment.random_crop_flip(images, keys, 5, flip=False))
  assert crops.shape == (2, 5, 5, 3)
  pixels = np.asarray(images)  # Compared in numpy (jax would compile each).
  for i in range(2):  # Each crop is a window of its own image.
    found = any(np.array_equal(crops[i], pixels[i, y:y + 5, x:x + 5])
                for y in range(4) for x in range(4))
    assert found
  centre = augment.random_crop_flip(images, keys, 4, random_crop=False,
                                    flip=False)
  np.testing.assert_array_equal(centre, augment.center_crop(images, 4))
  np.testing.assert_array_equal(np.asarray(centre)[0], pixels[0, 2:6, 2:6])
  # Flips: over many examples about half are mirrored, none otherwise changed.
  many = jnp.broadcast_to(images[:1], (200, 8, 8, 3))
  keys = augment.example_keys(jax.random.key(1), jnp.arange(200))
  out = np.asarray(augment.random_crop_flip(many, keys, 8, random_crop=False))
  flipped = np.array([np.array_equal(o, pixels[0, :, ::-1]) for o in out])
  same = np.array([np.array_equal(o, pixels[0]) for o in out])
  assert (flipped | same).all() and 60 < flipped.sum() < 140
  # Same key and example id, same augmentation: independent of batch layout.
  a = augment.random_crop_flip(many[:4], augment.example_keys(
      jax.random.key(1), jnp.arange(4)), 5)
  b = augment.random_crop_flip(many[2:4], augment.example_keys(
      jax.random.key(1), jnp.arange(2, 4)), 5)
  np.testing.assert_array_equal(a[2:], b)
  with pytest.raises(ValueError, match='larger'):
    augment.center_crop(images, 9)


def test_pca_lighting():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  eigvecs, _ = np.linalg.qr(np.random.RandomState(0).normal(size=(3, 3)))
  eigvals = np.array([0.2, 0.02, 0.002])
  images = jnp.zeros((2000, 4, 4, 3))
  keys = augment.example_keys(jax.random.key(0), jnp.arange(2000))
  out = np.asarray(augment.pca_lighting(images, keys, jnp.asarray(eigvals),
                                        jnp.asarray(eigvecs, jnp.float32),
                                        0.1))
  shift = out[:, 0, 0]
  # One constant RGB shift per image.
  np.testing.assert_allclose(out, np.broadcast_to(shift[:, None, None],
                                                  out.shape), atol=1e-5)
  # Along the eigenvectors the shifts have std 255 * 0.1 * lambda_i.
  coords = shift @ eigvecs
  np.testing.assert_allclose(coords.std(0), 255 * 0.1 * eigvals, rtol=0.1)
  assert abs(coords.mean(0)[0]) < 0.2
  none = augment.pca_lighting(images[:3], keys[:3], jnp.asarray(eigvals),
                              jnp.asarray(eigvecs, jnp.float32), 0.0)
  assert not np.asarray(none).any()


def test_ten_crops():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  images = jnp.arange(2 * 6 * 6, dtype=jnp.float32).reshape(2, 6, 6, 1)
  views = np.asarray(augment.ten_crops(images, 4))
  assert views.shape == (10, 2, 4, 4, 1)
  im = np.asarray(images)
  want = [im[:, :4, :4], im[:, :4, 2:], im[:, 2:, :4], im[:, 2:, 2:],
          im[:, 1:5, 1:5]]
  for i, w in enumerate(want):
    np.testing.assert_array_equal(views[i], w)
    np.testing.assert_array_equal(views[i + 5], w[:, :, ::-1])


@pytest.mark.slow
def test_augmentation_is_the_same_eagerly_and_jitted():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  config.augment.flip = True
  rng = np.random.RandomState(0)
  images = jnp.asarray(rng.randint(0, 256, (4, 72, 72, 3)), jnp.uint8)
  eigvecs, _ = np.linalg.qr(rng.normal(size=(3, 3)))
  stats = stats_lib.Stats(
      mean=jnp.asarray(rng.uniform(0, 255, (72, 72, 3)), jnp.float32),
      eigvals=jnp.array([0.2, 0.02, 0.002]),
      eigvecs=jnp.asarray(eigvecs, jnp.float32))
  key, ids = jax.random.key(3), jnp.arange(10, 14)
  with jax.disable_jit():
    eager = augment.Augment.from_config(config).train_views(
        images, key, ids, stats)
  jitted = jax.jit(augment.Augment.from_config(config).train_views)(
      images, key, ids, stats)
  np.testing.assert_allclose(eager, jitted, rtol=1e-5, atol=1e-3)
  assert eager.shape == (4, 64, 64, 3)
  config.eval_crops = 10
  with jax.disable_jit():
    eager = evaluation.views(images, stats.mean, config.augment.scale,
                             config.model.input_size, 10)
  jitted = jax.jit(lambda i, m: evaluation.views(
      i, m, config.augment.scale, config.model.input_size, 10))(
          images, stats.mean)
  np.testing.assert_allclose(eager, jitted, rtol=1e-6)
  assert eager.shape == (10, 4, 64, 64, 3)


