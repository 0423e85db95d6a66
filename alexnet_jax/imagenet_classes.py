"""ILSVRC-2012's 1000 classes: WordNet ids in label order, and their names.

The list ships in the package (`imagenet_classes.txt`, its sources in its
header): imported weights carry it, and figures label bars with the names.
"""

import functools
import importlib.resources
from typing import Sequence, Tuple


@functools.lru_cache(maxsize=None)
def classes() -> Tuple[Tuple[str, str], ...]:
  """((wnid, name), ...) in label order."""
  text = importlib.resources.files('alexnet_jax').joinpath(
      'imagenet_classes.txt').read_text(encoding='utf-8')
  return tuple(tuple(line.split('\t')) for line in text.splitlines()
               if line and not line.startswith('#'))


def wnids() -> Tuple[str, ...]:
  return tuple(w for w, _ in classes())


def readable(names: Sequence[str]) -> Tuple[str, ...]:
  """Each WordNet id replaced by its name; anything else kept."""
  table = dict(classes())
  return tuple(table.get(str(n), str(n)) for n in names)
