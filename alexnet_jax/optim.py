"""The paper's update rule (Section 5) and its learning-rate schedules.

The paper updates every weight w with velocity v as

    v <- 0.9 v - 0.0005 * lr * w - lr * grad
    w <- w + v

so the learning rate is folded into the velocity. `optax.sgd(momentum=0.9)`
instead keeps v <- 0.9 v + grad and steps w <- w - lr * v, which differs right
after a learning-rate drop (the old velocity gets the new rate). `paper_sgd` is
the exact rule as an optax chain: add the (coupled) weight decay, scale by
-lr, then accumulate with `trace`. The rate is an injected hyperparameter
living in the optimiser state, so the host can change it (plateau drops,
`lr_override`) without recompiling and it is checkpointed with the state.
"""

import dataclasses
from typing import Any, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from alexnet_jax import errors


def paper_sgd(learning_rate: float, momentum: float = 0.9,
              weight_decay: float = 5e-4, decay_mask: Any = None,
              frozen: Sequence[str] = ()) -> optax.GradientTransformation:
  """The paper's momentum + coupled weight-decay update.

  Args:
    learning_rate: the initial rate; change it later through
      `set_learning_rate`.
    momentum: 0.9 in the paper.
    weight_decay: 5e-4 in the paper, applied inside the velocity.
    decay_mask: callable (params -> pytree of bools) choosing which
      parameters are decayed (None: all, as in the paper).
    frozen: top-level layer names never updated (fine-tuning): no decay, and
      their updates are zeroed last, so the velocity stays at index 2 of the
      chain's state as in every earlier checkpoint.
  """
  frozen = frozenset(frozen)

  def is_frozen(params):
    return {k: jax.tree.map(lambda _, f=k in frozen: f, v)
            for k, v in params.items()}

  def decayed(params):
    mask = decay_mask(params) if decay_mask else jax.tree.map(
        lambda _: True, params)
    return jax.tree.map(lambda m, f: m and not f, mask, is_frozen(params))

  def chain(learning_rate, momentum, weight_decay):
    # Runs without freezing keep the paper's three-part state.
    freeze = [optax.masked(optax.set_to_zero(), is_frozen)] if frozen else []
    return optax.chain(
        optax.add_decayed_weights(weight_decay,
                                  mask=decayed if frozen else decay_mask),
        optax.scale_by_learning_rate(learning_rate),
        optax.trace(decay=momentum, nesterov=False),
        *freeze,
    )
  return optax.inject_hyperparams(chain)(
      learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay)


def no_bias_decay_mask(params):
  """Caffe's choice: decay kernels, not biases."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], 'key', None) != 'bias', params)


def get_learning_rate(opt_state) -> jax.Array:
  return opt_state.hyperparams['learning_rate']


def set_learning_rate(opt_state, lr: float):
  """Returns `opt_state` with a new rate, keeping its dtype and sharding."""
  old = opt_state.hyperparams['learning_rate']
  hyper = dict(opt_state.hyperparams)
  hyper['learning_rate'] = jax.device_put(
      jnp.asarray(lr, dtype=old.dtype), old.sharding)
  return opt_state._replace(hyperparams=hyper)


SCHEDULES = ('plateau', 'milestones', 'constant')


@dataclasses.dataclass
class Schedule:
  """Host-side learning-rate schedule; its state goes into every checkpoint.

  plateau: divide by 10 when validation top-1 error has not improved on the
    best so far for `patience` consecutive evaluations, at most `max_drops`
    times (the paper: "divide the learning rate by 10 when the validation error
    rate stopped improving with the current learning rate ... reduced three
    times prior to termination").
  milestones: divide by 10 at each epoch in `milestones`.
  constant: never change.
  `override` (> 0) replaces the base rate from the step it was set on.
  """
  kind: str
  base_lr: float
  steps_per_epoch: int
  patience: int = 3
  max_drops: int = 3
  milestones: Sequence[float] = ()
  override: float = -1.0
  # Mutable state (checkpointed).
  best_error: Optional[float] = None
  bad_evals: int = 0
  drops: int = 0

  def __post_init__(self):
    if self.kind not in SCHEDULES:
      raise ValueError(f'lr_schedule={self.kind!r} is unknown; use one of '
                       f'{SCHEDULES}.')
    if self.base_lr <= 0:
      raise ValueError(f'learning_rate={self.base_lr} must be positive.')

  def lr_at(self, step: int) -> float:
    base = self.override if self.override > 0 else self.base_lr
    drops = self.drops
    if self.kind == 'milestones':
      epoch = step / self.steps_per_epoch
      drops = sum(epoch >= m for m in self.milestones)
    return base * 0.1 ** drops

  def observe(self, eval_error: float) -> bool:
    """Feeds one validation error; returns True when the rate was dropped."""
    if self.kind != 'plateau':
      return False
    if self.best_error is None or eval_error < self.best_error:
      self.best_error, self.bad_evals = eval_error, 0
      return False
    self.bad_evals += 1
    if self.bad_evals >= self.patience and self.drops < self.max_drops:
      self.drops += 1
      self.bad_evals = 0
      return True
    return False

  def state_dict(self) -> Dict[str, Any]:
    return dict(best_error=self.best_error, bad_evals=self.bad_evals,
                drops=self.drops)

  def load_state_dict(self, d: Dict[str, Any]):
    self.best_error = d.get('best_error')
    self.bad_evals = int(d.get('bad_evals', 0))
    self.drops = int(d.get('drops', 0))


LR_SCALINGS = ('none', 'linear', 'sqrt')


def scaled_learning_rate(learning_rate: float, batch_size: int,
                         reference_batch: int = 128,
                         scaling: str = 'none') -> float:
  """`learning_rate` (config.learning_rate, the rate at `reference_batch`,
  config.lr_reference_batch; paper: 0.01 at 128) for a global batch of
  `batch_size`, by the rule `scaling` (config.lr_scaling). For a batch k
  times larger: 'none' keeps it, 'linear' multiplies it by k (Goyal
  et al. 2017), 'sqrt' by sqrt(k), the rule Krizhevsky (2014, "One weird
  trick", Section 5) derives from keeping the variance of the gradient
  estimate constant.
  """
  if scaling not in LR_SCALINGS:
    raise ValueError(f'lr_scaling={scaling!r} is unknown; use one of '
                     f'{LR_SCALINGS}.')
  if reference_batch <= 0:
    raise ValueError(f'lr_reference_batch={reference_batch} must be > 0 '
                     '(paper: 128).')
  k = batch_size / reference_batch
  factor = {'none': 1.0, 'linear': k, 'sqrt': k ** 0.5}[scaling]
  return learning_rate * factor


@errors.config_errors
def create(config, steps_per_epoch: int):
  """(optax transformation, Schedule) from the config."""
  if config.learning_rate <= 0:
    raise ValueError(f'learning_rate={config.learning_rate} must be positive; '
                     'the paper uses 0.01.')
  lr = scaled_learning_rate(config.learning_rate, config.batch_size,
                            config.lr_reference_batch, config.lr_scaling)
  if config.weight_decay < 0 or not 0 <= config.momentum < 1:
    raise ValueError('weight_decay must be >= 0 and momentum in [0, 1) '
                     '(paper: 5e-4 and 0.9).')
  schedule = Schedule(
      kind=config.lr_schedule, base_lr=lr,
      steps_per_epoch=steps_per_epoch, patience=config.plateau_patience,
      max_drops=config.max_lr_drops, milestones=tuple(config.lr_milestones),
      override=config.lr_override)
  mask = None if config.decay_biases else no_bias_decay_mask
  frozen = config.finetune.freeze
  tx = paper_sgd(lr, config.momentum, config.weight_decay, mask, frozen)
  return tx, schedule
