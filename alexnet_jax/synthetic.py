"""A run's objects on random data of a config's shapes: no dataset needed.

One set-up (mesh -> model -> optimiser -> steps -> state -> batch), shared by
the benchmark, the device check and the tests.
"""

import dataclasses
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import input_pipeline
from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import parallel
from alexnet_jax import steps as steps_lib
from alexnet_jax.datasets import stats as stats_lib


def batch(mesh, size: int, image_size: int, num_classes: int,
          mask: bool = False):
  """`size` random uint8 images and labels, on the mesh."""
  rng = np.random.RandomState(0)
  s = image_size
  host = {'image': rng.randint(0, 256, (size, s, s, 3), np.uint8),
          'label': rng.randint(0, num_classes, (size,)).astype(np.int32)}
  if mask:
    host['mask'] = np.ones((size,), np.float32)
  return input_pipeline.to_global(host, mesh)


def stats(mesh, image_size: int) -> stats_lib.Stats:
  """Plausible dataset statistics of an image size, replicated."""
  s = image_size
  eigvecs, _ = np.linalg.qr(np.random.RandomState(0).normal(size=(3, 3)))
  return jax.device_put(
      stats_lib.Stats(mean=jnp.full((s, s, 3), 110.0, jnp.float32),
                      eigvals=jnp.array([0.2, 0.02, 0.005], jnp.float32),
                      eigvecs=jnp.asarray(eigvecs, jnp.float32)),
      parallel.replicated(mesh))


@dataclasses.dataclass
class Setup:
  """What a train step needs, on synthetic data; `state` moves on as steps
  run."""
  mesh: Any
  model: Any
  steps: steps_lib.Steps
  state: steps_lib.TrainState
  batch: dict
  stats: stats_lib.Stats
  key: jax.Array


def setup(config, devices: Optional[Sequence[Any]] = None,
          steps_per_epoch: int = 1000, mask: bool = False) -> Setup:
  """The config's mesh, model, steps and initial state, and a random batch
  of its global batch size."""
  mesh = parallel.create_mesh(config.mesh.data, config.mesh.model, devices)
  model = model_lib.create_model(config.model)
  tx, _ = optim.create(config, steps_per_epoch=steps_per_epoch)
  steps = steps_lib.create(config, model, tx, mesh)
  return Setup(mesh=mesh, model=model, steps=steps,
               state=steps.init_state(jax.random.key(0)),
               batch=batch(mesh, config.batch_size, config.image_size,
                           config.model.num_classes, mask),
               stats=stats(mesh, config.image_size), key=jax.random.key(1))
