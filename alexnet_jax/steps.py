"""The train state and the jitted, sharded train and evaluation steps.

The forward pass (augmentation, model, loss) runs under `jax.shard_map` over the
('data', 'model') mesh; gradients are taken through it, so JAX inserts the
transposed collectives (sums over `data`, and over `model` where the towers
talk) itself. The optimiser update then runs under the same `jit` on the
sharded parameters, with the state's buffers donated.
"""

import functools
from typing import Any, Optional, Tuple

from flax import struct
import jax
from jax.sharding import PartitionSpec as P
import jax.numpy as jnp
import optax

from alexnet_jax import augment as augment_lib
from alexnet_jax import cpu_kernels
from alexnet_jax import errors
from alexnet_jax import evaluation
from alexnet_jax import loss_scale as loss_scale_lib
from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import parallel


@struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  # float16 only (loss_scale.DynamicLossScale); None adds no leaf, so other
  # dtypes' checkpoints hold exactly the three fields above.
  loss_scale: Any = None


def create(config, model, tx, mesh) -> 'Steps':
  """The steps of `config`'s run: its values read once, here."""
  loss_scale = None
  if config.model.dtype == 'float16':
    loss_scale = (float(config.loss_scale.initial),
                  int(config.loss_scale.period))
    # Bad values are refused here in one line, not inside the tracing.
    errors.config_errors(loss_scale_lib.DynamicLossScale.create)(*loss_scale)
  return Steps(model, tx, mesh, batch_size=int(config.batch_size),
               augment=augment_lib.Augment.from_config(config),
               scheme=config.mesh.scheme, loss_scale=loss_scale)


class Steps:
  """The jitted, sharded train and eval steps of a model on a mesh.

  Everything is known on construction: `state_sharding` (where each leaf of
  the train state lives) and `abstract_state` (its shapes, dtypes and
  shardings), so `init_state` only computes. It takes values, not a config
  (`create` reads one): the global `batch_size`, the `augment` transform, the
  parallel `scheme`, and for float16 the dynamic loss scale's `(initial,
  period)`.
  """

  def __init__(self, model, tx, mesh, *, batch_size: int,
               augment: augment_lib.Augment, scheme: str = 'towers',
               loss_scale: Optional[Tuple[float, int]] = None):
    self.mesh = mesh
    self.tx = tx
    self.model = model
    self.batch_size = batch_size
    self.augment = augment
    self.scheme = parallel.Scheme(scheme, mesh)
    self.loss_scale = loss_scale
    self.batch_spec = self.scheme.batch_spec
    self.batch_axes = self.scheme.batch_axes
    self.sharded_model = self.scheme.shard_model(model)
    self.fc_layers = getattr(model, 'fc_layers', ())
    abstract = jax.eval_shape(self._init, jax.random.key(0))
    self.state_sharding = self.scheme.param_sharding(abstract, self.fc_layers)
    self.abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract, self.state_sharding)

  def _init(self, key) -> TrainState:
    params = self.model.init(key, model_lib.example_images(self.model))[
        'params']
    scale = None
    if self.loss_scale is not None:
      scale = loss_scale_lib.DynamicLossScale.create(*self.loss_scale)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.tx.init(params), loss_scale=scale)

  def init_state(self, key) -> TrainState:
    """A fresh state, initialised directly in its sharded layout."""
    return model_lib.run_once(
        jax.jit(self._init, out_shardings=self.state_sharding), key,
        platform=self.mesh.devices.flat[0].platform)

  def _param_specs(self, params):
    return self.scheme.param_specs(params, self.fc_layers)

  @functools.cached_property
  def train_step(self):
    """(state, batch, stats, key) -> (state, metrics); the state is donated."""
    mesh, global_batch = self.mesh, self.batch_size

    def local_loss(params, images, labels, stats, step, key):
      # Parameters meet the data varying over the batch axes, in float32:
      # the transpose of this cast is the data-parallel gradient psum, so it
      # sums float32 gradients even when the model computes in bfloat16
      # (cast after it).
      params = parallel.vary(params, self.batch_axes)
      b = images.shape[0]
      ids = step * global_batch + self.scheme.shard_index() * b + jnp.arange(b)
      aug_key, drop_key = jax.random.split(jax.random.fold_in(key, step))
      x = self.augment.train_views(images, aug_key, ids, stats)
      logits = self.sharded_model.apply(
          {'params': params}, x, train=True, example_ids=ids,
          rngs={'dropout': drop_key})
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      axes = self.batch_axes
      loss = jax.lax.psum(ce.sum(), axes) / global_batch
      correct = functools.partial(evaluation.topk_correct, logits, labels)
      err1 = jax.lax.psum(b - correct(1).sum(), axes)
      err5 = jax.lax.psum(b - correct(5).sum(), axes)
      return loss, dict(loss=loss, top1_err=err1 / global_batch,
                        top5_err=err5 / global_batch)

    def step_fn(state: TrainState, batch, stats, key):
      scale = state.loss_scale

      def loss_fn(params):
        loss, metrics = jax.shard_map(
            local_loss, mesh=mesh,
            in_specs=(self._param_specs(params), self.batch_spec,
                      self.batch_spec, P(), P(), P()),
            out_specs=(P(), P()),
        )(params, *self.scheme.split(batch['image'], batch['label']), stats,
          state.step, key)
        # float16: the float32 loss scaled before the backward pass, so its
        # float16 cotangents stay above float16's smallest numbers.
        return (scale.scale_loss(loss) if scale is not None else loss), metrics

      grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
      if scale is not None:
        grads = scale.unscale(grads)
      updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      metrics['lr'] = optim.get_learning_rate(state.opt_state)
      # One reduction (one float across towers): researchers watch it, and
      # the loop refuses to save a state whose gradients were inf or NaN,
      # which a finite loss (computed before the update) does not rule out.
      grad_norm = optax.tree.norm(grads)
      metrics['grad_norm'] = grad_norm
      new = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
      if scale is not None:
        # An overflow skips the update (the step still counts: the data
        # moves on) and halves the scale. The loop averages the norm over
        # the steps applied, and stops the run if none of a window's was.
        finite = jnp.isfinite(grad_norm)
        new = new.replace(
            params=loss_scale_lib.select(finite, params, state.params),
            opt_state=loss_scale_lib.select(finite, opt_state,
                                            state.opt_state),
            loss_scale=scale.adjust(finite))
        metrics['grad_norm'] = jnp.where(finite, grad_norm, 0.0)
        metrics['skipped'] = 1.0 - finite.astype(jnp.float32)
        metrics['loss_scale'] = scale.scale
      return new, metrics

    return jax.jit(step_fn, donate_argnums=(0,),
                   out_shardings=(self.state_sharding,
                                  parallel.replicated(mesh)),
                   compiler_options=cpu_kernels.compiler_options())

  @functools.cached_property
  def eval_step(self):
    """(params, batch, stats, crops) -> summed loss, errors and count.

    `crops` (static): 1 (the centre) or 10 (the paper's test).
    """
    mesh = self.mesh

    def local_eval(params, images, labels, mask, stats, crops):
      inputs = evaluation.views(images, stats.mean, self.augment.scale,
                                self.augment.crop, crops)
      # The paper's test: the softmax averaged over the views.
      probs = evaluation.average_over_views(
          lambda x: jax.nn.softmax(self.sharded_model.apply(
              {'params': params}, x, train=False)), inputs)
      ce = -jnp.log(jnp.take_along_axis(probs, labels[:, None], 1)[:, 0] +
                    1e-30)
      sums = dict(
          loss=(ce * mask).sum(),
          top1_err=((1 - evaluation.topk_correct(probs, labels, 1)) *
                    mask).sum(),
          top5_err=((1 - evaluation.topk_correct(probs, labels, 5)) *
                    mask).sum(),
          count=mask.sum())
      return jax.tree.map(lambda v: jax.lax.psum(v, self.batch_axes), sums)

    def step_fn(params, batch, stats, crops):
      return jax.shard_map(
          functools.partial(local_eval, crops=crops), mesh=mesh,
          in_specs=(self._param_specs(params), self.batch_spec,
                    self.batch_spec, self.batch_spec, P()),
          out_specs=P(),
      )(params, *self.scheme.split(batch['image'], batch['label'], batch['mask']),
        stats)

    return jax.jit(step_fn, static_argnames='crops',
                   compiler_options=cpu_kernels.compiler_options())
