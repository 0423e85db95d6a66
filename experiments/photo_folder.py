"""An image folder of real ImageNet photos, for measuring the input pipeline.

  python -m experiments.photo_folder --out /tmp/photos10 [--photos DIR] \
      [--classes 10] [--copies 6]

Makes OUT/train/<class>/ and OUT/val/<class>/ from the photos in
`../shared/photos` (500 ILSVRC-2012 photographs, not part of this project):
photo i goes to class i mod `classes`, `copies` times under different names in
train/ and once in val/ (links, not copies of the bytes). The defaults give
the 10-class, 3,000-image training folder of docs/performance.md. Smooth
synthetic images decode several times faster than photographs, so pipeline
figures are measured on these.
"""

import glob
import os
import shutil

from alexnet_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTOS = os.path.join(ROOT, '..', 'shared', 'photos')


def make(out: str, photos: str = PHOTOS, classes: int = 10,
         copies: int = 6) -> int:
  """Builds the folder; returns the number of training images."""
  files = sorted(glob.glob(os.path.join(photos, '*.JPEG')))
  if not files:
    raise SystemExit(f'no *.JPEG photos in {photos}; pass --photos DIR.')
  shutil.rmtree(out, ignore_errors=True)
  for split, n in (('train', copies), ('val', 1)):
    for i, path in enumerate(files):
      folder = os.path.join(out, split, f'class{i % classes}')
      os.makedirs(folder, exist_ok=True)
      for k in range(n):
        os.symlink(os.path.abspath(path),
                   os.path.join(folder, f'{k}_{os.path.basename(path)}'))
  return len(files) * copies


def main():
  parser = cli.ArgumentParser(prog='python -m experiments.photo_folder',
                                   description=__doc__.splitlines()[0])
  parser.add_argument('--out', required=True)
  parser.add_argument('--photos', default=PHOTOS)
  parser.add_argument('--classes', type=int, default=10)
  parser.add_argument('--copies', type=int, default=6)
  args = parser.parse_args()
  n = make(args.out, args.photos, args.classes, args.copies)
  print(f'{args.out}: {n} training images in {args.classes} classes')


if __name__ == '__main__':
  cli.run_main(main, 'experiments.photo_folder')
