"""Your own images, bad files included."""

import io
import json
import os

import numpy as np
import pytest

from alexnet_jax import errors
from alexnet_jax import train
from alexnet_jax.datasets import image_folder
from alexnet_jax.datasets import store
from alexnet_jax.configs import image_folder as image_folder_config
from tests.helpers import bomb_png
from tests.helpers import shrink

CLASSES = ('cat', 'dog', 'eel')


def encode(rng, mode='RGB', fmt='JPEG', size=(40, 56)):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  pixels = rng.randint(0, 256, size + (3,), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).convert(mode).save(buf, format=fmt)
  return buf.getvalue()


def make_folder(root):
  rng = np.random.RandomState(0)
  for split, n in (('train', 5), ('val', 2)):
    for c in CLASSES:
      os.makedirs(os.path.join(root, split, c))
      for i in range(n):
        with open(os.path.join(root, split, c, f'{i}.jpg'), 'wb') as f:
          f.write(encode(rng))
  odd = os.path.join(root, 'train', 'cat')
  good = encode(rng)
  files = {
      'cmyk.jpg': encode(rng, 'CMYK'),           # readable: converted
      'grey.jpg': encode(rng, 'L'),              # readable: converted
      'png_named.JPEG': encode(rng, fmt='PNG'),  # readable: converted
      'truncated.jpg': good[:len(good) // 2],    # unreadable
      'empty.jpg': b'',                          # unreadable
      'notes.txt': b'not an image at all',       # unreadable
      'bomb.png': bomb_png(),                    # 900 Mpixels: refused
  }
  for name, data in files.items():
    with open(os.path.join(odd, name), 'wb') as f:
      f.write(data)
  return 4  # Unreadable or refused files.


def snapshot(root):
  """Every path under root with its size, mtime and content hash."""
  import hashlib  # pylint: disable=g-import-not-at-top
  out = {}
  for dirpath, dirnames, filenames in os.walk(root):
    for d in dirnames:
      out[os.path.join(dirpath, d)] = 'dir'
    for name in filenames:
      path = os.path.join(dirpath, name)
      st = os.stat(path)
      with open(path, 'rb') as f:
        out[path] = (st.st_size, st.st_mtime_ns,
                     hashlib.sha256(f.read()).hexdigest())
  return out


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('images'))
  bad = make_folder(root)
  return root, bad


def small_config(root, store_dir=None):
  config = shrink(image_folder_config.get_config(), batch_size=6,
                  eval_batch_size=6)
  config.data_dir = root
  config.store.dir = str(store_dir or os.path.join(
      os.path.dirname(root), os.path.basename(root) + '_stores'))
  config.model.num_classes = 3
  config.num_train_steps = 2
  config.log_every_steps = 1
  return config


@pytest.mark.slow
def test_bad_images_are_converted_or_skipped(folder):
  root, bad = folder
  data = store.get(small_config(root))
  train_split, val = data.split('train'), data.split('validation')
  assert train_split.classes == val.classes == list(CLASSES)
  # 15 good + 3 readable odd ones in train; 6 in val.
  assert len(train_split) == 18 and len(val) == 6
  report = train_split.meta['skipped']
  assert report['count'] == bad and val.meta['skipped']['count'] == 0
  names = ' '.join(report['files'])
  for name in ('truncated.jpg', 'empty.jpg', 'notes.txt', 'bomb.png'):
    assert name in names
  assert '<_io.BytesIO' not in names and '{{' not in names
  # The decompression bomb is refused from its header, naming the limit.
  assert ('900,000,000 pixels is above the limit of 89,478,485 '
          '(max_image_pixels to raise it)') in names
  images = train_split.read(range(18))
  assert images['image'].shape == (18, 72, 72, 3)
  # Labels follow the sorted classes; cat's 5 good + 3 odd files first.
  np.testing.assert_array_equal(images['label'], [0] * 8 + [1] * 5 + [2] * 5)
  source_meta = train_split.meta['source']
  assert source_meta['folder'] == os.path.abspath(root)
  assert source_meta['num_files'] == 22 and len(source_meta['fingerprint']) == 64


@pytest.mark.slow
def test_training_reads_the_folder_and_writes_nothing_in_it(tmp_path):
  root = str(tmp_path / 'images')
  make_folder(root)
  before = snapshot(root)
  config = small_config(root, tmp_path / 'stores')
  result = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert result['num_examples'] == 6
  assert snapshot(root) == before  # Root is root: write bits stop nothing.
  with open(os.path.join(str(tmp_path / 'run'), 'metrics.jsonl')) as f:
    assert [json.loads(l)['split'] for l in f][-1] == 'eval'
  # The store is under store.dir, keyed by the folder's path.
  path = store.Spec.from_config(config).directory
  assert path.startswith(str(tmp_path / 'stores'))
  assert os.path.exists(os.path.join(path, 'train', store.SPLIT_FILE))
  other = small_config(str(tmp_path / 'elsewhere' / 'images'),
                       tmp_path / 'stores')
  assert store.Spec.from_config(other).directory != path


def _count_writes(monkeypatch):
  calls = []
  real = store._write_split  # pylint: disable=protected-access

  def counted(spec, split, path, src):
    calls.append(split)
    return real(spec, split, path, src)
  monkeypatch.setattr(store, '_write_split', counted)
  return calls


def test_a_changed_folder_is_prepared_again(tmp_path, monkeypatch):
  root = str(tmp_path / 'images')
  rng = np.random.RandomState(0)
  for split in ('train', 'val'):
    for c in CLASSES:
      os.makedirs(os.path.join(root, split, c))
      for i in range(2):
        (tmp_path / 'images' / split / c / f'{i}.jpg').write_bytes(
            encode(rng))
  config = small_config(root)
  config.image_size, config.model.input_size = 40, 32
  writes = _count_writes(monkeypatch)
  assert len(store.get(config).split('train')) == 6
  assert writes == ['train', 'validation']
  store.get(config)
  assert writes == ['train', 'validation']  # Unchanged: nothing rewritten.
  (tmp_path / 'images' / 'train' / 'dog' / 'new.jpg').write_bytes(encode(rng))
  assert len(store.get(config).split('train')) == 7
  assert writes == ['train', 'validation', 'train']
  # A file rewritten in place (same name) changes its mtime and size.
  (tmp_path / 'images' / 'val' / 'eel' / '0.jpg').write_bytes(
      encode(rng, size=(30, 30)))
  store.get(config)
  assert writes[-1] == 'validation'
  # The check can be skipped.
  (tmp_path / 'images' / 'train' / 'dog' / 'newer.jpg').write_bytes(
      encode(rng))
  config.store.check_source = False
  assert len(store.get(config).split('train')) == 7
  assert len(writes) == 4


def _read_only(*args, **kwargs):
  raise PermissionError(13, 'Permission denied')


def test_a_copy_with_new_mtimes_keeps_its_store(tmp_path, monkeypatch,
                                                capsys):
  """A fresh copy of a folder (same names, sizes and contents, new mtimes)
  keeps its store, and training resumes on it as on the same images; a file
  whose bytes change at the same size is prepared again."""
  root = tmp_path / 'images'
  rng = np.random.RandomState(0)
  for split in ('train', 'val'):
    for c in CLASSES:
      os.makedirs(root / split / c)
      for i in range(2):
        (root / split / c / f'{i}.jpg').write_bytes(encode(rng))
  (root / 'train' / 'cat' / 'bad.jpg').write_bytes(b'not an image')
  config = small_config(str(root))
  config.image_size, config.model.input_size = 40, 32
  writes = _count_writes(monkeypatch)
  before = store.get(config).split('train').meta['source']
  assert writes == ['train', 'validation']

  def copy():  # What cp without -p does: new mtimes.
    for path in root.rglob('*.jpg'):
      os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)

  copy()
  # A store that cannot record the new fingerprint is kept all the same.
  with monkeypatch.context() as m:
    m.setattr(store.tempfile, 'mkstemp', _read_only)
    assert store.get(config).split('train').meta['source'] == before
  assert writes == ['train', 'validation']
  capsys.readouterr()
  after = store.get(config).split('train').meta['source']
  assert writes == ['train', 'validation']  # Kept: nothing rewritten.
  out = capsys.readouterr().out
  assert "train: the files' times changed, not their contents (7 files" in out
  assert "validation: the files' times changed" in out
  assert after['content'] == before['content']
  assert after['fingerprint'] != before['fingerprint']
  path = store.Spec.from_config(config).directory
  assert sorted(os.listdir(os.path.join(path, 'train'))) == [
      'data-00000.array_record', store.SPLIT_FILE]  # No temporary file left.
  # The new fingerprint is recorded: the next open reads no file.
  with monkeypatch.context() as m:
    m.setattr(image_folder, 'read_content', None)
    assert store.get(config).split('train').meta['source'] == after
  assert writes == ['train', 'validation']
  # A store written before the digest of contents is prepared again.
  meta_path = os.path.join(path, 'validation', store.SPLIT_FILE)
  with open(meta_path) as f:
    meta = json.load(f)
  del meta['source']['content'], meta['source']['layout']
  with open(meta_path, 'w') as f:
    json.dump(meta, f)
  copy()
  store.get(config)
  assert writes == ['train', 'validation', 'validation']
  assert 'the store predates the digest of contents' in capsys.readouterr().out
  after = store.get(config).split('train').meta['source']
  # A tfds store records neither: nothing to compare, no warning.
  assert not train.images_changed({'store_fingerprint': None}, None, None)
  # A checkpoint trained on `before` resumes as on the same images.
  meta = {'store_fingerprint': before['fingerprint'],
          'store_content': before['content']}
  assert not train.images_changed(meta, after['fingerprint'],
                                  after['content'])
  # Only the fingerprint to go by (older checkpoints): a change.
  assert train.images_changed({'store_fingerprint': before['fingerprint']},
                              after['fingerprint'], after['content'])
  # One byte changed, the size kept: prepared again, a changed content.
  path = root / 'train' / 'dog' / '1.jpg'
  data = bytearray(path.read_bytes())
  data[-3] ^= 0xFF
  path.write_bytes(bytes(data))
  changed = store.get(config).split('train').meta['source']
  assert writes[3:] == ['train']
  assert 'their contents differ' in capsys.readouterr().out
  assert changed['content'] != before['content']
  assert changed['layout'] == before['layout']
  assert train.images_changed(meta, changed['fingerprint'],
                              changed['content'])


@pytest.mark.slow
def test_a_store_whose_folder_is_gone_still_trains(tmp_path, monkeypatch):
  root = str(tmp_path / 'images')
  make_folder(root)
  config = small_config(root, tmp_path / 'stores')
  store.get(config)
  os.rename(root, str(tmp_path / 'moved'))
  writes = _count_writes(monkeypatch)
  result = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert result['num_examples'] == 6 and not writes


def test_same_pixels_as_the_tfds_route(tmp_path):
  """An RGB JPEG gives the same stored pixels through the folder as through
  a tfds dataset of the same files (tfds' own ImageFolder builder)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from alexnet_jax import preprocess  # pylint: disable=g-import-not-at-top
  root = tmp_path / 'images'
  rng = np.random.RandomState(1)
  for split in ('train', 'val'):
    for c in CLASSES[:2]:
      os.makedirs(root / split / c)
      for i, size in enumerate(((60, 90), (97, 41))):
        (root / split / c / f'{i}.jpg').write_bytes(encode(rng, size=size))
  config = small_config(str(root))
  config.model.num_classes = 2
  ours = store.get(config, splits=['train']).split('train').read(range(4))
  builder = tfds.ImageFolder(str(root))
  ds = builder.as_dataset(split='train', shuffle_files=False,
                          decoders={'image': tfds.decode.SkipDecoding()})
  theirs = {}
  for e in ds:
    name = os.path.basename(e['image/filename'].numpy().decode())
    label = builder.info.features['label'].int2str(int(e['label']))
    out = preprocess.example(e, config.image_size)
    theirs[(label, name)] = out['image'].numpy()
  assert len(theirs) == 4
  for k, key in enumerate([(c, f'{i}.jpg') for c in CLASSES[:2]
                           for i in range(2)]):
    np.testing.assert_array_equal(ours['image'][k], theirs[key])


def test_wrong_class_count_names_the_fix(folder, tmp_path):
  root, _ = folder
  config = small_config(root)
  config.model.num_classes = 5
  with pytest.raises(errors.ConfigError, match='num_classes=3'):
    train.train_and_evaluate(config, str(tmp_path))


@pytest.mark.slow
def test_resuming_on_other_classes_names_the_fix(tmp_path):
  root = str(tmp_path / 'images')
  _folder(root, {'train': {'cat': 3, 'dog': 3}, 'val': {'cat': 1, 'dog': 1}})
  config = small_config(root, tmp_path / 'stores')
  config.model.num_classes = 2
  config.batch_size = config.eval_batch_size = 2
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  # Same count, other classes: the checkpoint's labels would mean others.
  for split in ('train', 'val'):
    os.rename(os.path.join(root, split, 'dog'),
              os.path.join(root, split, 'fox'))
  before = snapshot(workdir)
  config.num_train_steps = 4
  with pytest.raises(errors.DataError, match=r"classes.json: 'dog' is now "
                     r"'fox'\); resume with the data it trained on, train in "
                     r'a new --workdir, or, if it did train on this store, '
                     r'delete classes.json\.') as e:
    train.train_and_evaluate(config, workdir)
  assert '\n' not in str(e.value)
  assert snapshot(workdir) == before  # Nothing of the run is lost.
  # A fresh start trains on them and names them, over a stale classes.json
  # (an attempt that failed before its first checkpoint).
  (tmp_path / 'new').mkdir()
  (tmp_path / 'new' / 'classes.json').write_text('["cat", "dog"]')
  train.train_and_evaluate(config, str(tmp_path / 'new'))
  with open(tmp_path / 'new' / 'classes.json') as f:
    assert json.load(f) == ['cat', 'fox']


def _folder(root, layout):
  rng = np.random.RandomState(0)
  for split, classes in layout.items():
    for c, n in classes.items():
      os.makedirs(os.path.join(root, split, c))
      for i in range(n):
        with open(os.path.join(root, split, c, f'{i}.jpg'), 'wb') as f:
          f.write(encode(rng, size=(8, 8)))


@pytest.mark.parametrize('layout,message', [
    ({'train': {'a': 1, 'b': 1}, 'val': {'a': 1}},
     r"lacks class\(es\) b that train/ has; add their validation images, or "
     r'remove them from train/\.'),
    ({'train': {'a': 1}, 'val': {'a': 1, 'z': 1}},
     r"has class\(es\) z that train/ lacks"),
    ({'train': {'a': 1, 'b': 0}, 'val': {'a': 1, 'b': 1}},
     r"train/b' is empty; add images to it, or remove the class 'b' from "
     r'both train/ and val/\.'),
    ({'train': {'a': 1, 'b': 1}, 'val': {'a': 1, 'b': 0}},
     r"val/b' is empty"),
])
def test_bad_layouts_are_one_line_naming_the_fix(tmp_path, layout, message):
  root = str(tmp_path / 'images')
  _folder(root, layout)
  before = snapshot(root)
  config = small_config(root)
  with pytest.raises(errors.DataError, match=message) as e:
    store.get(config)
  assert '\n' not in str(e.value)
  assert snapshot(root) == before
  assert not os.path.exists(config.store.dir)  # Nothing half-written.


def test_a_read_only_store_dir_names_the_fix(tmp_path, monkeypatch):
  import errno  # pylint: disable=g-import-not-at-top
  root = str(tmp_path / 'images')
  _folder(root, {'train': {'a': 1}, 'val': {'a': 1}})
  config = small_config(root)

  def read_only(path, *args, **kwargs):
    del args, kwargs
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
  # As root, write bits do not stop writes: fail the way a read-only mount
  # does.
  monkeypatch.setattr(store.os, 'makedirs', read_only)
  with pytest.raises(errors.DataError) as e:
    store.get(config)
  assert str(e.value).startswith('cannot write the store in ')
  assert str(e.value).endswith('(Read-only file system); set '
                               '--config.store.dir=DIR to a writable '
                               'directory.')


def test_layout_errors(tmp_path):
  config = small_config(str(tmp_path / 'nothing'))
  with pytest.raises(errors.DataError, match='train/<class>'):
    store.get(config)
  os.makedirs(tmp_path / 'half' / 'train' / 'a')
  (tmp_path / 'half' / 'train' / 'a' / 'x.jpg').write_bytes(b'x')
  config = small_config(str(tmp_path / 'half'))
  with pytest.raises(errors.DataError, match="val' is missing"):
    store.get(config)
  config.data_dir = None
  with pytest.raises(errors.DataError, match='data_dir'):
    store.get(config)


# As on a host without them: importing either fails, and find_spec (which
# libraries such as etils use to look for TensorFlow) answers None.
BLOCK_TF = '\n'.join([
    'import runpy, sys',
    "sys.modules['tensorflow'] = sys.modules['tensorflow_datasets'] = None",
    'module = sys.argv[1]',
    "sys.argv = ['main'] + sys.argv[2:]",
    "runpy.run_module(module, run_name='__main__')"])


@pytest.mark.slow
def test_a_prepared_store_trains_and_resumes_without_tensorflow(tmp_path):
  """Once prepared, neither TensorFlow nor tfds is imported: the store is
  found from the config, and training, resuming and evaluating read it."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from tests.helpers import ROOT  # pylint: disable=g-import-not-at-top
  root = str(tmp_path / 'images')
  make_folder(root)
  config = small_config(root, tmp_path / 'stores')
  store.get(config)  # Prepared with TensorFlow.
  from alexnet_jax.datasets import stats  # pylint: disable=g-import-not-at-top
  stats.load_or_compute(store.get(config), config.train_split)
  env = dict(os.environ, XLA_FLAGS='', TF_CPP_MIN_LOG_LEVEL='2')
  args = ['--config', 'configs/image_folder.py:toy', '--workdir',
          str(tmp_path / 'run'), f'--config.data_dir={root}',
          f'--config.store.dir={tmp_path / "stores"}',
          '--config.model.num_classes=3', '--config.batch_size=6',
          '--config.eval_batch_size=6', '--config.mesh.data=1',
          '--config.log_every_steps=1']
  def run(module, *more):
    proc = subprocess.run(
        [sys.executable, '-c', BLOCK_TF, module, *more], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc
  for steps in (2, 4):  # A run, then its resumption.
    proc = run('alexnet_jax.main', *args, f'--config.num_train_steps={steps}')
    assert f'Done: {steps} steps' in proc.stderr
  assert 'Resuming from step 2' in proc.stderr
  # The finished run evaluated again, with the paper's 10 crops.
  run('alexnet_jax.main', *args, '--config.num_train_steps=4',
      '--config.eval_crops=10')
  evals = [json.loads(l) for l in open(tmp_path / 'run' / 'metrics.jsonl')]
  assert evals[-1]['split'] == 'eval' and evals[-1]['crops'] == 10
  # The synthetic benchmark needs no dataset at all.
  proc = run('alexnet_jax.bench', '--config', 'configs/image_folder.py:toy',
             '--config.mesh.data=1', '--steps', '1')
  assert json.loads(proc.stdout)['train_img_per_sec'] > 0


def test_a_class_with_no_readable_image_names_its_folder(tmp_path):
  root = tmp_path / 'images'
  _folder(str(root), {'train': {'a': 1, 'b': 1}, 'val': {'a': 1, 'b': 1}})
  (root / 'train' / 'b' / '0.jpg').write_bytes(b'not an image')
  config = small_config(str(root))
  with pytest.raises(errors.DataError, match=r"train/b' holds no readable "
                     r'image \(1 class\(es\) like it') as e:
    store.get(config)
  assert '\n' not in str(e.value)
  train_dir = os.path.join(store.Spec.from_config(config).directory, 'train')
  assert not os.path.exists(train_dir)
  assert not os.path.exists(train_dir + store.INCOMPLETE)


def _imagenet_folder(root, wnids, per_class=2):
  """An extracted ILSVRC-2012 as clusters keep it: train/<wnid>/ and a flat
  val/ of ILSVRC2012_val_NNNNNNNN.JPEG files (real numbers of these classes,
  by tfds' validation labels). Returns {val file: wnid}."""
  from alexnet_jax.datasets import image_folder  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(2)
  labels = image_folder._validation_labels()  # pylint: disable=protected-access
  val = {}
  for wnid in wnids:
    os.makedirs(os.path.join(root, 'train', wnid))
    for i in range(per_class):
      with open(os.path.join(root, 'train', wnid, f'{wnid}_{i}.JPEG'),
                'wb') as f:
        f.write(encode(rng, size=(30, 40)))
    numbers = [n + 1 for n, w in enumerate(labels) if w == wnid][:per_class]
    val.update({f'ILSVRC2012_val_{n:08d}.JPEG': wnid for n in numbers})
  os.makedirs(os.path.join(root, 'val'))
  for name in val:
    with open(os.path.join(root, 'val', name), 'wb') as f:
      f.write(encode(rng, size=(30, 40)))
  return val


def test_extracted_imagenet_with_a_flat_val_is_labelled_by_tfds(tmp_path):
  from alexnet_jax import imagenet_classes  # pylint: disable=g-import-not-at-top
  from alexnet_jax.datasets import image_folder  # pylint: disable=g-import-not-at-top
  wnids = ['n01443537', 'n01440764', 'n15075141']  # goldfish, tench, last
  root = str(tmp_path / 'ilsvrc')
  val = _imagenet_folder(root, wnids)
  before = snapshot(root)
  # The class order is tfds imagenet2012's (labels.txt: sorted WordNet ids),
  # so with all 1000 folders the labels are the tars route's.
  classes = image_folder.class_names(root)
  order = list(imagenet_classes.wnids())
  assert classes == sorted(wnids, key=order.index) == sorted(wnids)
  listing = image_folder.listing(root, 'validation')
  assert [(os.path.basename(p), classes[l]) for p, l in listing.files] == (
      sorted(val.items()))
  config = small_config(root)
  config.model.num_classes = 3
  split = store.get(config).split('validation')
  got = split.read(range(len(split)))
  assert [classes[l] for l in got['label']] == [w for _, w in
                                                sorted(val.items())]
  assert snapshot(root) == before  # Only read.
  # A flat val image of a class train/ lacks: one line, nothing written.
  os.rename(os.path.join(root, 'train', 'n15075141'),
            str(tmp_path / 'moved'))
  with pytest.raises(errors.DataError, match=r'2 images of the flat .* are '
                     r'of classes that train/ lacks; remove them') as e:
    image_folder.class_names(root)
  assert '\n' not in str(e.value)
  # Files of another name in a flat val/ cannot be labelled.
  os.rename(str(tmp_path / 'moved'), os.path.join(root, 'train', 'n15075141'))
  with open(os.path.join(root, 'val', 'holiday.jpg'), 'wb') as f:
    f.write(encode(np.random.RandomState(3)))
  with pytest.raises(errors.DataError, match="'holiday.jpg'.*are not "
                     'ILSVRC-2012 validation images'):
    image_folder.class_names(root)
