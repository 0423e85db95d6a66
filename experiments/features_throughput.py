"""Images per second of `features.extract` on a folder of image files.

  python -m experiments.features_throughput --workdir RUN --images DIR \
      [--crops 1] [--out result.json]

Loads the network once, compiles on a first batch, then times the
extraction of every image in DIR (decoding, preprocessing and the network;
the result is on the host when the clock stops).
"""

import json
import os
import platform
import sys
import time

from alexnet_jax import cli


def main(argv=None):
  parser = cli.ArgumentParser(prog='python -m experiments.features_throughput',
                              description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--images', required=True)
  parser.add_argument('--layer', default='fc7')
  parser.add_argument('--crops', type=int, default=1, choices=(1, 10))
  parser.add_argument('--batch_size', type=int, default=64)
  parser.add_argument('--out', default='')
  args = parser.parse_args(argv)
  import jax  # pylint: disable=g-import-not-at-top
  from alexnet_jax import features  # pylint: disable=g-import-not-at-top
  net = features.load(args.workdir)
  paths = features.image_files(args.images)
  net.extract(paths[:args.batch_size], args.layer, crops=args.crops,
              batch_size=args.batch_size)  # Compiles this shape.
  start = time.perf_counter()
  out = net.extract(paths, args.layer, crops=args.crops,
                    batch_size=args.batch_size)
  seconds = time.perf_counter() - start
  result = {
      'command': 'python -m experiments.features_throughput ' + ' '.join(
          sys.argv[1:] if argv is None else argv),
      'code': os.path.dirname(os.path.abspath(features.__file__)),
      'images': len(paths), 'shape': list(out.shape), 'crops': args.crops,
      'seconds': seconds, 'img_per_sec': len(paths) / seconds,
      'devices': len(getattr(net, 'devices', [None])),
      'platform': jax.devices()[0].platform, 'cpus': os.cpu_count(),
      'machine': platform.node(),
  }
  print(json.dumps(result))
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(result, f, indent=1)


if __name__ == '__main__':
  main()
