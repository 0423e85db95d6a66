"""The digits tfds builder, host preprocessing, statistics, augmentation."""

import itertools
import os

import numpy as np
import pytest

from alexnet_jax import augment
from alexnet_jax import input_pipeline
from alexnet_jax import train
from alexnet_jax.datasets import digits
from alexnet_jax.datasets import stats as stats_lib
from tests.conftest import tiny_config


def test_digits_builder_splits(digits_dir):
  builder = input_pipeline.get_builder(tiny_config(digits_dir))
  assert builder.info.splits['train'].num_examples == 1438
  assert builder.info.splits['validation'].num_examples == 359
  assert builder.info.features['label'].num_classes == 10
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  labels = datasets.load_digits().target
  train, val = digits.split_indices(labels)
  assert not set(train) & set(val) and len(train) + len(val) == 1797
  # Stratified: every class is about 20% held out.
  for c in range(10):
    frac = (labels[val] == c).sum() / (labels == c).sum()
    assert 0.18 < frac < 0.22


def test_preprocessed_batches(digits_dir):
  config = tiny_config(digits_dir)
  builder = input_pipeline.get_builder(config)
  batch = next(input_pipeline.train_batches(builder, config, epoch=0))
  assert batch['image'].shape == (16, 72, 72, 3)
  assert batch['image'].dtype == np.uint8
  # Grey digits become RGB with equal channels, real strokes, black corners.
  np.testing.assert_array_equal(batch['image'][..., 0], batch['image'][..., 2])
  assert batch['image'].max() > 200 and batch['image'][:, 0, 0].max() < 30
  assert set(batch['label']) <= set(range(10))


def test_order_is_a_function_of_seed_and_epoch(digits_dir):
  config = tiny_config(digits_dir)
  builder = input_pipeline.get_builder(config)
  labels = lambda epoch, start=0, n=5: np.concatenate(
      [b['label'] for b, _ in zip(
          input_pipeline.train_batches(builder, config, epoch, start),
          range(n))])
  e0 = labels(0)
  np.testing.assert_array_equal(e0, labels(0))
  assert not np.array_equal(e0, labels(1))
  # Resuming two batches into the epoch gives the batches that follow.
  np.testing.assert_array_equal(labels(0, start=2, n=3), e0[32:])
  config.seed = 1
  assert not np.array_equal(e0, labels(0))


def test_resumed_stream_equals_uninterrupted_batch_for_batch(digits_dir):
  config = tiny_config(digits_dir)
  config.batch_size = 200  # 7 batches an epoch: N=10 crosses an epoch.
  builder = input_pipeline.get_builder(config)
  per_epoch = 1438 // 200
  take = lambda it, n: [next(it) for _ in range(n)]
  straight = take(input_pipeline.train_stream(builder, config), 10)
  k = 5
  first = take(input_pipeline.train_stream(builder, config), k)
  resumed = take(input_pipeline.train_stream(
      builder, config, k // per_epoch, k % per_epoch), 10 - k)
  for a, b in zip(straight, first + resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  # Epoch 1 is a new order, not a repeat of epoch 0.
  assert not np.array_equal(straight[0]['label'], straight[per_epoch]['label'])


def test_eval_batches_cover_the_split_once(digits_dir):
  config = tiny_config(digits_dir)
  builder = input_pipeline.get_builder(config)
  batches = list(input_pipeline.eval_batches(builder, config))
  assert all(len(b['label']) == 40 for b in batches)
  mask = np.concatenate([b['mask'] for b in batches])
  assert mask.sum() == 359 and mask[:359].all() and not mask[359:].any()


def test_dataset_statistics(digits_dir):
  config = tiny_config(digits_dir)
  builder = input_pipeline.get_builder(config)
  stats = stats_lib.load_or_compute(builder, config)
  images = np.concatenate([b['image'] for b in input_pipeline.unshuffled_batches(
      builder, config, 'train')]).astype(np.float64)
  assert len(images) == int(stats['num_images']) == 1438
  np.testing.assert_allclose(stats['mean'], images.mean(0), rtol=1e-5)
  cov = np.cov(images.reshape(-1, 3).T / 255.0, bias=True)
  np.testing.assert_allclose(
      stats['eigvecs'] @ np.diag(stats['eigvals']) @ stats['eigvecs'].T, cov,
      atol=1e-6)
  assert stats['eigvals'][0] >= stats['eigvals'][1] >= stats['eigvals'][2]
  # Grey digits: one component (brightness) holds all the variance.
  np.testing.assert_allclose(np.abs(stats['eigvecs'][:, 0]), 3 ** -0.5,
                             rtol=1e-3)
  assert os.path.exists(stats_lib.stats_path(builder, config))
  again = stats_lib.load_or_compute(builder, config)
  np.testing.assert_array_equal(again['mean'], stats['mean'])


def test_training_statistics_switches(digits_dir):
  config = tiny_config(digits_dir)
  builder = input_pipeline.get_builder(config)
  config.augment.mean = 'none'
  config.augment.pca_lighting = 0.1
  stats = train.load_stats(builder, config)
  assert not stats['mean'].any() and stats['eigvals'][0] > 0


def test_unknown_dataset_is_a_clear_error(tmp_path):
  config = tiny_config(str(tmp_path))
  config.dataset = 'no_such_dataset_xyz'
  with pytest.raises(input_pipeline.DataError, match='not a tfds dataset'):
    input_pipeline.get_builder(config)


def test_augmentation_ops():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  images = jnp.arange(2 * 8 * 8 * 3, dtype=jnp.float32).reshape(2, 8, 8, 3)
  keys = augment.example_keys(jax.random.key(0), jnp.arange(2))
  crops = augment.random_crop_flip(images, keys, 5, flip=False)
  assert crops.shape == (2, 5, 5, 3)
  for i in range(2):  # Each crop is a window of its own image.
    found = any(np.array_equal(crops[i], images[i, y:y + 5, x:x + 5])
                for y in range(4) for x in range(4))
    assert found
  centre = augment.random_crop_flip(images, keys, 4, random_crop=False,
                                    flip=False)
  np.testing.assert_array_equal(centre, augment.center_crop(images, 4))
  np.testing.assert_array_equal(centre[0], images[0, 2:6, 2:6])
  # Flips: over many examples about half are mirrored, none otherwise changed.
  many = jnp.broadcast_to(images[:1], (200, 8, 8, 3))
  keys = augment.example_keys(jax.random.key(1), jnp.arange(200))
  out = augment.random_crop_flip(many, keys, 8, random_crop=False)
  flipped = np.array([np.array_equal(o, images[0, :, ::-1]) for o in out])
  same = np.array([np.array_equal(o, images[0]) for o in out])
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


def test_augmentation_is_the_same_eagerly_and_jitted():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  config.augment.flip = True
  rng = np.random.RandomState(0)
  images = jnp.asarray(rng.randint(0, 256, (4, 72, 72, 3)), jnp.uint8)
  eigvecs, _ = np.linalg.qr(rng.normal(size=(3, 3)))
  stats = {'mean': jnp.asarray(rng.uniform(0, 255, (72, 72, 3)), jnp.float32),
           'eigvals': jnp.array([0.2, 0.02, 0.002]),
           'eigvecs': jnp.asarray(eigvecs, jnp.float32)}
  key, ids = jax.random.key(3), jnp.arange(10, 14)
  with jax.disable_jit():
    eager = augment.train_views(images, key, ids, stats, config)
  jitted = jax.jit(lambda *a: augment.train_views(*a, config))(
      images, key, ids, stats)
  np.testing.assert_allclose(eager, jitted, rtol=1e-5, atol=1e-3)
  assert eager.shape == (4, 64, 64, 3)
  config.eval_crops = 10
  with jax.disable_jit():
    eager = augment.eval_views(images, stats, config)
  jitted = jax.jit(lambda *a: augment.eval_views(*a, config))(images, stats)
  np.testing.assert_allclose(eager, jitted, rtol=1e-6)
  assert eager.shape == (10, 4, 64, 64, 3)


def test_resized_cache(digits_dir):
  config = tiny_config(digits_dir)
  source = input_pipeline.get_builder(config)
  config.cache_resized = True
  cached = input_pipeline.get_builder(config)
  assert cached.name == 'digits_resized' and cached is not source
  for split in ('train', 'validation'):
    assert (cached.info.splits[split].num_examples ==
            source.info.splits[split].num_examples)
  a = next(input_pipeline.unshuffled_batches(source, config, 'train'))
  b = next(input_pipeline.unshuffled_batches(cached, config, 'train'))
  np.testing.assert_array_equal(a['label'], b['label'])
  # The same pixels, up to JPEG's loss.
  diff = np.abs(a['image'].astype(float) - b['image'].astype(float))
  assert diff.mean() < 3, diff.mean()
  # Training batches come from the cache with the same order.
  ta = next(input_pipeline.train_batches(source, config, 0))
  tb = next(input_pipeline.train_batches(cached, config, 0))
  np.testing.assert_array_equal(ta['label'], tb['label'])


def test_each_process_reads_its_rows_of_the_same_batches(digits_dir):
  # What two hosts of a 2 x 2 mesh (two devices each) read: their halves of
  # the one-process batches, in the same order, for training and evaluation.
  from alexnet_jax import parallel  # pylint: disable=g-import-not-at-top
  config = tiny_config(digits_dir)
  builder = input_pipeline.get_builder(config)
  mesh = parallel.create_mesh(2, 2)
  assert parallel.process_rows(mesh, 16) == (0, 16)  # One process: all.
  whole = list(itertools.islice(
      input_pipeline.train_batches(builder, config, 0), 3))
  halves = [list(itertools.islice(input_pipeline.train_batches(
      builder, config, 0, rows=rows), 3)) for rows in ((0, 8), (8, 16))]
  for w, a, b in zip(whole, *halves):
    for k in w:
      np.testing.assert_array_equal(w[k], np.concatenate([a[k], b[k]]))
  whole = list(input_pipeline.eval_batches(builder, config))
  halves = [list(input_pipeline.eval_batches(builder, config, rows=rows))
            for rows in ((0, 20), (20, 40))]
  assert len(whole) == len(halves[0]) == len(halves[1]) == 9
  for w, a, b in zip(whole, *halves):
    np.testing.assert_array_equal(w['label'], np.concatenate(
        [a['label'], b['label']]))
