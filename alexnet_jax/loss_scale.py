"""Dynamic loss scaling for float16 compute (T4, V100: no bfloat16 units).

float16's exponent is too small for small gradients: they flush to zero in
the backward pass. So the loss is multiplied by a scale before
differentiation and the gradients divided by it after, in float32. A step
whose gradients are not finite (the scale was too large) is skipped, and the
scale halved; after `period` finite steps in a row it is doubled. This is
jmp's `DynamicLossScale` (github.com/google-deepmind/jmp), with its
defaults, and PyTorch's `GradScaler` policy; it is written out here because
jmp is no longer maintained and the rule is a few lines.

The scale lives in the train state, so checkpoints keep it and a resumed run
continues with the scale it stopped at. bfloat16 has float32's exponent and
needs none of this.
"""

from typing import Any

from flax import struct
import jax
import jax.numpy as jnp

# jmp's and PyTorch's defaults: 2**15 at first, doubled after 2000 good
# steps, halved on an overflow, never below 1.
INITIAL_SCALE = 2.0 ** 15
PERIOD = 2000
FACTOR = 2.0
MIN_SCALE = 1.0


@struct.dataclass
class DynamicLossScale:
  """The current scale and the finite steps in a row since it changed."""
  scale: jax.Array  # float32 scalar.
  good_steps: jax.Array  # int32 scalar.
  period: int = struct.field(pytree_node=False, default=PERIOD)
  factor: float = struct.field(pytree_node=False, default=FACTOR)
  min_scale: float = struct.field(pytree_node=False, default=MIN_SCALE)

  @classmethod
  def create(cls, initial: float = INITIAL_SCALE, period: int = PERIOD):
    if not initial >= MIN_SCALE or period < 1:
      raise ValueError(f'loss_scale.initial={initial} and loss_scale.period='
                       f'{period}: the scale must be at least {MIN_SCALE} and '
                       'the period at least 1 step.')
    return cls(scale=jnp.asarray(initial, jnp.float32),
               good_steps=jnp.zeros((), jnp.int32), period=period)

  def scale_loss(self, loss: jax.Array) -> jax.Array:
    return loss * self.scale

  def unscale(self, grads: Any) -> Any:
    """The gradients of the unscaled loss, in their own (float32) dtype."""
    inv = 1.0 / self.scale
    return jax.tree.map(lambda g: (g * inv).astype(g.dtype), grads)

  def adjust(self, finite: jax.Array) -> 'DynamicLossScale':
    """The scale after a step whose gradients were (not) all finite."""
    grown = self.good_steps + 1 >= self.period
    scale = jnp.where(
        finite,
        jnp.where(grown, self.scale * self.factor, self.scale),
        jnp.maximum(self.scale / self.factor, self.min_scale))
    good = jnp.where(finite & ~grown, self.good_steps + 1, 0)
    return self.replace(scale=scale.astype(jnp.float32),
                        good_steps=good.astype(jnp.int32))


def select(finite: jax.Array, new: Any, old: Any) -> Any:
  """`new` where the step's gradients were finite, else `old` (skipped)."""
  return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
