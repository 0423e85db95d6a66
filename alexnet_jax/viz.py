"""The paper's figures from a trained network, as PNG files (and Figure 4
without its photos as figure4.json).

  Figure 3        conv1's kernels, one block per tower (the paper saw
                  colour-agnostic kernels on one GPU, colour-specific on the
                  other).
  Figure 4 left   images with their top-5 classes and probability bars.
  Figure 4 right  query images and their nearest neighbours by fc7 distance.
  curves          loss, top-1 and top-5 error per epoch from metrics.jsonl,
                  learning-rate drops marked.

  python -m alexnet_jax.viz --workdir runs/digits --out runs/digits/figures \
      [--images DIR] [--gallery DIR2 --neighbours 6]
"""

import json
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

from alexnet_jax import cli
from alexnet_jax import errors
from alexnet_jax import imagenet_classes



def _plt():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')  # Files only; no display needed.
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save(fig, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120, bbox_inches='tight')
  _plt().close(fig)
  return path


def kernel_grid(kernels: np.ndarray, cols: int = 8,
                pad: int = 1) -> np.ndarray:
  """`(kh, kw, 3, n)` kernels -> one RGB image, each kernel scaled to [0, 1]."""
  kh, kw, _, n = kernels.shape
  rows = -(-n // cols)
  grid = np.ones((rows * (kh + pad) + pad, cols * (kw + pad) + pad, 3))
  for i in range(n):
    k = kernels[..., i]
    k = (k - k.min()) / max(k.max() - k.min(), 1e-12)
    r, c = divmod(i, cols)
    top, left = pad + r * (kh + pad), pad + c * (kw + pad)
    grid[top:top + kh, left:left + kw] = k
  return grid


def colour_index(kernel: np.ndarray) -> float:
  """How coloured one `(kh, kw, 3)` kernel is: 0 grey, 1 no grey at all.

  With w's scalar mean subtracted (one number for all three channels) and
  u = (1, 1, 1) / sqrt(3): the sum over pixels of |p - (p.u) u|^2 over the
  sum of |p|^2, i.e. the share of the kernel's energy off the grey axis.
  """
  p = np.asarray(kernel, np.float64).reshape(-1, 3)
  p = p - p.mean()
  grey = p.mean(1, keepdims=True)  # (p.u) u has every channel at the mean.
  total = float((p ** 2).sum())
  return float(((p - grey) ** 2).sum() / total) if total > 0 else 0.0


def colour_indices(params) -> Dict[str, object]:
  """Each tower's conv1 colour indices, medians and quartiles (Section 6.1:
  one tower's kernels largely colour-agnostic, the other's colour-specific).
  `shows_it`: one tower's median is at least twice the other's."""
  kernels = np.asarray(params['conv1']['kernel'])  # (towers, kh, kw, 3, n)
  if kernels.ndim == 4:  # One tower (the four-layer net): (kh, kw, 3, n).
    kernels = kernels[None]
  out = {}
  for t in range(kernels.shape[0]):
    values = [colour_index(kernels[t, ..., i])
              for i in range(kernels.shape[-1])]
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    out[f'tower{t + 1}'] = {'median': float(median), 'q1': float(q1),
                            'q3': float(q3), 'values': values}
  medians = [v['median'] for v in out.values()]
  if len(medians) == 2:
    low, high = sorted(medians)
    out['ratio'] = high / low if low > 0 else float('inf')
    out['shows_it'] = bool(high >= 2 * low)
  return out


def conv1_kernels(params, path: str) -> str:
  """Figure 3: conv1's kernels, one block per tower, upper block tower 1,
  each titled with its median colour index."""
  plt = _plt()
  kernels = np.asarray(params['conv1']['kernel'])  # (towers, kh, kw, 3, n)
  if kernels.ndim == 4:  # One tower (the four-layer net).
    kernels = kernels[None]
  index = colour_indices(params)
  towers, n = kernels.shape[0], kernels.shape[-1]
  cols = 8 if n % 8 == 0 else int(np.ceil(np.sqrt(n)))
  fig, axes = plt.subplots(towers, 1, figsize=(cols * 0.9, towers * 0.9 *
                                                 -(-n // cols) + 0.6),
                           squeeze=False)
  for t in range(towers):
    ax = axes[t, 0]
    ax.imshow(kernel_grid(kernels[t], cols), interpolation='nearest')
    ax.set_title(f'tower {t + 1} (GPU {t + 1}): {n} kernels '
                 f'{kernels.shape[1]}x{kernels.shape[2]}x3, median colour '
                 f'index {index[f"tower{t + 1}"]["median"]:.2f}', fontsize=9)
    ax.axis('off')
  return _save(fig, path)


def _show(ax, image):
  ax.imshow(np.asarray(image, np.uint8))
  ax.set_xticks([])
  ax.set_yticks([])


def top5(images: Sequence[np.ndarray], probs: np.ndarray,
         class_names: Sequence[str], path: str,
         labels: Optional[Sequence[int]] = None, cols: int = 4) -> str:
  """Figure 4 left: each image over its five most probable classes.

  The bar of the correct label (when `labels` are given) is red, as in the
  paper. ImageNet's WordNet ids are shown by their names.
  """
  plt = _plt()
  class_names = imagenet_classes.readable(class_names)
  n = len(images)
  rows = -(-n // cols)
  fig, axes = plt.subplots(rows * 2, cols, figsize=(cols * 2.4, rows * 3.6),
                           gridspec_kw={'height_ratios': [3, 2] * rows},
                           squeeze=False)
  for ax in axes.ravel():
    ax.axis('off')
  k = min(5, probs.shape[1])
  for i in range(n):
    r, c = divmod(i, cols)
    img_ax, bar_ax = axes[2 * r, c], axes[2 * r + 1, c]
    img_ax.axis('on')
    _show(img_ax, images[i])
    label = None if labels is None else labels[i]
    if label is not None:
      img_ax.set_title(class_names[label], fontsize=8)
    order = np.argsort(-probs[i])[:k]
    bar_ax.axis('on')
    colours = ['tab:red' if label is not None and j == label else
               'tab:blue' for j in order]
    bar_ax.barh(range(k), probs[i][order], color=colours)
    bar_ax.set_yticks(range(k))
    bar_ax.set_yticklabels([class_names[j] for j in order], fontsize=7)
    bar_ax.invert_yaxis()
    bar_ax.set_xlim(0, 1)
    bar_ax.tick_params(axis='x', labelsize=6)
  fig.tight_layout()
  return _save(fig, path)


def retrieval(queries: Sequence[np.ndarray],
              neighbours: Sequence[Sequence[np.ndarray]], path: str) -> str:
  """Figure 4 right: each row a query (first column) and its neighbours."""
  plt = _plt()
  rows, k = len(queries), max(len(n) for n in neighbours)
  fig, axes = plt.subplots(rows, k + 1, figsize=((k + 1) * 1.3, rows * 1.3),
                           squeeze=False)
  for r in range(rows):
    _show(axes[r, 0], queries[r])
    for c in range(k):
      if c < len(neighbours[r]):
        _show(axes[r, c + 1], neighbours[r][c])
      else:
        axes[r, c + 1].axis('off')
  axes[0, 0].set_title('query', fontsize=8)
  for c in range(k):
    axes[0, c + 1].set_title(f'{c + 1}', fontsize=8)
  fig.subplots_adjust(wspace=0.05, hspace=0.05)
  return _save(fig, path)


def read_metrics(path: str) -> List[Dict]:
  if not os.path.exists(path):
    raise errors.UserError(f'{path} does not exist; pass the --workdir of a '
                           'training run.')
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except ValueError:  # A line cut short by a crash (repaired on resume).
        continue
  return records


def lr_drops(records: Sequence[Dict]) -> List[float]:
  """Epochs of the training records where the learning rate went down."""
  train = [r for r in records if r['split'] == 'train']
  return [b['epoch'] for a, b in zip(train, train[1:]) if b['lr'] < a['lr']]


def curves(metrics_path: str, path: str) -> str:
  """Loss, top-1 and top-5 error against epochs; LR drops as dashed lines."""
  plt = _plt()
  records = read_metrics(metrics_path)
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
  for split, style in (('train', '-'), ('eval', 'o-')):
    # A float16 window whose steps all overflowed has no loss: left out.
    rs = [r for r in records if r['split'] == split and
          r.get('loss') is not None]
    if not rs:
      continue
    epochs = [r['epoch'] for r in rs]
    for ax, key in zip(axes, ('loss', 'top1_err', 'top5_err')):
      values = [r[key] * (1 if key == 'loss' else 100) for r in rs]
      ax.plot(epochs, values, style, markersize=3,
              label='validation' if split == 'eval' else 'training')
  drops = lr_drops(records)
  for ax, title in zip(axes, ('loss', 'top-1 error (%)', 'top-5 error (%)')):
    for e in drops:
      ax.axvline(e, color='grey', linestyle='--', linewidth=0.8)
    ax.set_title(title)
    ax.set_xlabel('epoch')
    ax.grid(alpha=0.3)
  axes[0].legend()
  if drops:
    axes[1].text(drops[0], axes[1].get_ylim()[1], ' lr / 10', fontsize=7,
                 va='top', color='grey')
  fig.tight_layout()
  return _save(fig, path)


def labels_from_folders(paths: Sequence[str], class_names: Sequence[str]):
  """Each image's class from its folder's name (DIR/<class>/<file>, as an
  image folder's val/ is laid out), or None where a folder is no class."""
  index = {str(name): i for i, name in enumerate(class_names)}
  labels = [index.get(os.path.basename(os.path.dirname(p))) for p in paths]
  return labels if any(l is not None for l in labels) else None


def spread_over_classes(paths: Sequence[str], n: int) -> List[str]:
  """`n` of the sorted `paths`, taken in turn from each folder (class), so
  that a sorted val/ gives one image of each of n classes, not n of the
  first class."""
  groups = {}
  for p in paths:
    groups.setdefault(os.path.dirname(p), []).append(p)
  out = []
  for rank in range(max(map(len, groups.values()), default=0)):
    out += [g[rank] for g in groups.values() if rank < len(g)]
  return out[:n]


def figure4_table(paths, probs, class_names, labels=None, neighbours=None,
                  images_root='', gallery_root='', gallery_labels=None) -> Dict:
  """Figure 4 without its photos (committable, as the datasets' images are
  not): each query's file, true class, top-5 and, with a gallery, its
  nearest gallery files by fc7 distance with their classes. `neighbours`:
  per query, (gallery file, gallery index, distance) tuples."""
  names = [str(n) for n in class_names]
  rel = lambda p, root: os.path.relpath(p, root) if root else p
  queries = []
  for i, p in enumerate(paths):
    order = np.argsort(-probs[i])[:min(5, probs.shape[1])]
    q = {'image': rel(p, images_root),
         'label': None if labels is None or labels[i] is None
                  else names[labels[i]],
         'top5': [[names[j], round(float(probs[i][j]), 4)] for j in order]}
    if neighbours is not None:
      q['neighbours'] = [
          {'image': rel(path, gallery_root),
           'label': None if gallery_labels is None or
                    gallery_labels[j] is None else names[gallery_labels[j]],
           'fc7_distance': round(float(d), 3)}
          for path, j, d in neighbours[i]]
      if q['label'] is not None:
        q['same_class'] = sum(n['label'] == q['label']
                              for n in q['neighbours'])
    queries.append(q)
  out = {'images': images_root, 'gallery': gallery_root or None,
         'queries': queries}
  if labels is not None:
    out['labelled'] = sum(q['label'] is not None for q in queries)
    out['top1_correct'] = sum(q['label'] == q['top5'][0][0] for q in queries)
    out['top5_correct'] = sum(q['label'] in [t[0] for t in q['top5']]
                              for q in queries)
  if neighbours is not None and all('same_class' in q for q in queries):
    out['neighbours_same_class'] = sum(q['same_class'] for q in queries)
    out['neighbours'] = sum(len(q['neighbours']) for q in queries)
  return out


def main(argv=None):
  from alexnet_jax import features  # pylint: disable=g-import-not-at-top
  from alexnet_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  parser = cli.ArgumentParser(
      prog='python -m alexnet_jax.viz',
      description="The paper's figures for a trained AlexNet, as PNG files.")
  parser.add_argument('--workdir', required=True,
                      help='a training workdir, or WORKDIR/checkpoints/STEP')
  parser.add_argument('--out', required=True,
                      help='directory for the PNGs and JSON files')
  parser.add_argument('--images', help='images for Figure 4 (top-5 bars, '
                      'and the queries of the retrieval figure)')
  parser.add_argument('--max_images', type=int, default=8)
  parser.add_argument('--pick', choices=('spread', 'first'), default='spread',
                      help="which --images: 'spread' takes them in turn from "
                      "each class folder, 'first' the first in sorted order")
  parser.add_argument('--gallery', help='gallery images for retrieval')
  parser.add_argument('--neighbours', type=int, default=6)
  args = parser.parse_args(argv)
  try:
    net = features.load(args.workdir)
    workdir = net.path
    written = [conv1_kernels(net.params, os.path.join(args.out,
                                                      'conv1_kernels.png'))]
    index_path = os.path.join(args.out, 'colour_index.json')
    with open(index_path, 'w') as f:
      json.dump(colour_indices(net.params), f, indent=1)
    written.append(index_path)
    metrics = os.path.join(workdir, workdir_lib.METRICS_FILE)
    if os.path.exists(metrics):
      written.append(curves(metrics, os.path.join(args.out, 'curves.png')))
    if args.images:
      paths = features.image_files(args.images)
      paths = (spread_over_classes(paths, args.max_images)
               if args.pick == 'spread' else paths[:args.max_images])
      size = net.config.image_size
      shown = [features.load_image(p, size) for p in paths]
      probs = net.extract(shown, layer='probs')
      names = workdir_lib.class_names(workdir, probs.shape[1])
      labels = labels_from_folders(paths, names)
      written.append(top5(shown, probs, names,
                          os.path.join(args.out, 'top5.png'), labels=labels))
      found = gallery_labels = None
      if args.gallery:
        gallery_paths = features.image_files(args.gallery)
        gallery_labels = labels_from_folders(gallery_paths, names)
        gallery = net.extract(gallery_paths, progress=True)
        idx, dist = features.nearest(net.extract(shown), gallery,
                                     args.neighbours)
        found = [[(gallery_paths[j], j, d) for j, d in zip(row, ds)]
                 for row, ds in zip(idx, dist)]
        neighbours = [[features.load_image(gallery_paths[j], size)
                       for j in row] for row in idx]
        written.append(retrieval(shown, neighbours,
                                 os.path.join(args.out, 'retrieval.png')))
      table = os.path.join(args.out, 'figure4.json')
      with open(table, 'w') as f:
        json.dump(figure4_table(paths, probs, names, labels, found,
                                images_root=args.images,
                                gallery_root=args.gallery or '',
                                gallery_labels=gallery_labels), f, indent=1)
      written.append(table)
  except errors.UserError as e:
    return cli.error(str(e), prog='alexnet_jax.viz')
  print('wrote ' + ', '.join(written))
  return 0


if __name__ == '__main__':
  sys.exit(main())
