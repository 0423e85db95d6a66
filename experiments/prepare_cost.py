"""What preparing an image folder's store costs: img/s per core and bytes.

  python -m experiments.prepare_cost --out experiments/results/bench/prepare_cost.json \
      [--photos ../shared/photos] [--imagenette ../shared/data/imagenette]

Prepares the training split of each folder into a fresh store, in each
format (raw pixels and JPEG), with every core decoding (the store's thread
pool), and records the wall time, img/s, img/s per core and the store's
bytes per image. The 500 ILSVRC-2012 photos (../shared/photos, not part of
this project) are put into a 10-class folder of links by
experiments/photo_folder.py (each photo 4 times, 2,000 in all), after an
untimed warm-up preparation; Imagenette (9,469 training photos, 224 x 224
already) is read as it is. Stores go to a
temporary directory, deleted afterwards. Then, as arithmetic from those
figures (not a measurement), the disk and hours the full ILSVRC-2012
(1,281,167 training and 50,000 validation images) would need on a 16-core
host.
"""

import json
import os
import tempfile
import time

from alexnet_jax import cli

ILSVRC_IMAGES = 1_281_167 + 50_000
HOST_CORES = 16


def _store_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f))
             for d, _, files in os.walk(path) for f in files)


def measure(folder: str, fmt: str, store_dir: str, classes: int):
  """One preparation of `folder`'s training split; its figures."""
  from alexnet_jax.configs import image_folder  # pylint: disable=g-import-not-at-top
  from alexnet_jax.datasets import store  # pylint: disable=g-import-not-at-top
  config = image_folder.get_config()
  config.data_dir = folder
  config.model.num_classes = classes
  config.store.dir = store_dir
  config.store.format = fmt
  start = time.perf_counter()
  prepared = store.get(config, splits=['train'])
  seconds = time.perf_counter() - start
  split = prepared.split('train')
  n = len(split)
  cores = os.cpu_count()
  return {'folder': folder, 'format': fmt, 'images': n,
          'image_size': config.image_size, 'seconds': seconds,
          'img_per_sec': n / seconds, 'cores': cores,
          'img_per_sec_per_core': n / seconds / cores,
          'bytes_per_image': _store_bytes(prepared.root) / n}


def arithmetic(rows):
  """Full ILSVRC-2012 on a 16-core host, from the per-core rates measured."""
  out = {}
  for fmt in sorted({r['format'] for r in rows}):
    mine = [r for r in rows if r['format'] == fmt]
    per_core = min(r['img_per_sec_per_core'] for r in mine)
    size = max(r['bytes_per_image'] for r in mine)
    out[fmt] = {'per_core_used': per_core, 'bytes_per_image_used': size,
                'store_gb': ILSVRC_IMAGES * size / 1e9,
                'hours_on_16_cores': ILSVRC_IMAGES / (per_core * HOST_CORES)
                                     / 3600}
  return out


def main(argv=None):
  parser = cli.ArgumentParser(prog='python -m experiments.prepare_cost',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('--out', required=True)
  here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  parser.add_argument('--photos', default=os.path.join(here, '..', 'shared',
                                                       'photos'))
  parser.add_argument('--imagenette', default=os.path.join(
      here, '..', 'shared', 'data', 'imagenette'))
  args = parser.parse_args(argv)
  from experiments import photo_folder  # pylint: disable=g-import-not-at-top
  cli.quiet_libraries()
  rows = []
  with tempfile.TemporaryDirectory(prefix='prepare_cost_') as tmp:
    photos = os.path.join(tmp, 'photos10')
    photo_folder.make(photos, args.photos, classes=10, copies=4)
    # Untimed: TensorFlow's import and first decodes (several seconds).
    measure(photos, 'jpeg', os.path.join(tmp, 'warm_up'), 10)
    for folder, classes in ((photos, 10), (args.imagenette, 10)):
      for fmt in ('raw', 'jpeg'):
        row = measure(folder, fmt, os.path.join(tmp, f'store_{fmt}'), classes)
        rows.append(row)
        print(json.dumps(row), flush=True)
  result = {'rows': rows, 'ilsvrc2012_16_cores_arithmetic': arithmetic(rows),
            'note': ('hours and GB for ILSVRC-2012 are arithmetic from the '
                     'slowest per-core rate and the largest bytes per image '
                     'measured here, not a measurement')}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(result, f, indent=1)
  print(json.dumps(result['ilsvrc2012_16_cores_arithmetic'], indent=1))


if __name__ == '__main__':
  main()
