"""The paper's update rule and the learning-rate schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alexnet_jax import optim
from alexnet_jax.configs import default


def grad_fn(w):
  # A fixed, nonlinear "gradient" so the trajectories depend on the rule.
  return jax.tree.map(lambda x: jnp.sin(3 * x) + 0.1, w)


def hand_loop(w, lrs, momentum=0.9, wd=5e-4, decay_bias=True):
  """The paper's Section 5, literally: v <- 0.9v - wd*lr*w - lr*g; w <- w + v."""
  w = {k: np.asarray(v, np.float64) for k, v in w.items()}
  v = {k: np.zeros_like(x) for k, x in w.items()}
  for lr in lrs:
    g = {k: np.sin(3 * x) + 0.1 for k, x in w.items()}
    for k in w:
      decay = wd if (decay_bias or k != 'bias') else 0.0
      v[k] = momentum * v[k] - decay * lr * w[k] - lr * g[k]
      w[k] = w[k] + v[k]
  return w


def run_optax(tx, w, lrs, set_lr=True):
  state = tx.init(w)
  for lr in lrs:
    if set_lr:
      state = optim.set_learning_rate(state, lr)
    updates, state = tx.update(grad_fn(w), state, w)
    w = optax.apply_updates(w, updates)
  return w


W0 = {'kernel': jnp.array([[1.0, -2.0], [0.5, 3.0]]), 'bias': jnp.array([0.7])}
LRS = [0.1] * 4 + [0.01] * 4  # A drop in the middle.


def test_paper_sgd_matches_hand_loop_across_a_drop():
  got = run_optax(optim.paper_sgd(0.1), W0, LRS)
  want = hand_loop(W0, LRS)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)


def test_optax_sgd_differs_after_a_drop():
  # Why the paper's rule needs its own chain: optax.sgd applies the new rate
  # to the old velocity.
  w = W0
  sgd = optax.chain(optax.add_decayed_weights(5e-4),
                    optax.sgd(learning_rate=optax.piecewise_constant_schedule(
                        0.1, {4: 0.1}), momentum=0.9))
  got = run_optax(sgd, w, LRS, set_lr=False)
  want = hand_loop(w, LRS)
  assert not np.allclose(got['kernel'], want['kernel'], rtol=1e-4)
  # ...while they agree before any drop.
  same = run_optax(sgd, w, LRS[:4], set_lr=False)
  np.testing.assert_allclose(same['kernel'], hand_loop(w, LRS[:4])['kernel'],
                             rtol=1e-5)


def test_no_bias_decay_mask():
  tx = optim.paper_sgd(0.1, decay_mask=optim.no_bias_decay_mask)
  got = run_optax(tx, W0, LRS)
  want = hand_loop(W0, LRS, decay_bias=False)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
  assert not np.allclose(want['bias'], hand_loop(W0, LRS)['bias'], rtol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize('decay_mask', [None, optim.no_bias_decay_mask])
def test_frozen_layers_are_never_updated(decay_mask):
  params = {'conv1': {'kernel': jnp.ones((2, 3)), 'bias': jnp.ones(3)},
            'fc8': {'kernel': jnp.ones((3, 2)), 'bias': jnp.ones(2)}}
  tx = optim.paper_sgd(0.1, decay_mask=decay_mask, frozen=('conv1',))
  plain = optim.paper_sgd(0.1, decay_mask=decay_mask)
  state, plain_state = tx.init(params), plain.init(params)
  frozen, free = params, params
  grads = jax.tree.map(lambda p: 0.5 * jnp.ones_like(p), params)
  for lr in (0.1, 0.01):
    state = optim.set_learning_rate(state, lr)
    plain_state = optim.set_learning_rate(plain_state, lr)
    updates, state = tx.update(grads, state, frozen)
    frozen = optax.apply_updates(frozen, updates)
    updates, plain_state = plain.update(grads, plain_state, free)
    free = optax.apply_updates(free, updates)
  # The frozen layer: unchanged; the others: as without freezing.
  jax.tree.map(np.testing.assert_array_equal, frozen['conv1'], params['conv1'])
  jax.tree.map(np.testing.assert_array_equal, frozen['fc8'], free['fc8'])
  assert not np.allclose(free['conv1']['kernel'], 1.0)
  assert float(optim.get_learning_rate(state)) == pytest.approx(0.01)


def test_plateau_schedule():
  s = optim.Schedule('plateau', 0.01, steps_per_epoch=10, patience=2,
                     max_drops=3)
  errors = [0.5, 0.4, 0.41, 0.40, 0.39, 0.39, 0.39] + [0.39] * 10
  drops = [s.observe(e) for e in errors]
  # Improves, improves, 2 bad -> drop, improves, 2 bad -> drop, ...
  assert drops[:7] == [False, False, False, True, False, False, True]
  assert s.drops == 3  # Capped at max_drops.
  assert s.lr_at(0) == pytest.approx(0.01 * 1e-3)
  s2 = optim.Schedule('plateau', 0.01, 10)
  s2.load_state_dict(s.state_dict())
  assert s2.lr_at(5) == s.lr_at(5)


def test_milestones_constant_and_override():
  s = optim.Schedule('milestones', 0.01, steps_per_epoch=10,
                     milestones=(2, 3))
  assert [s.lr_at(t) for t in (0, 19, 20, 29, 30)] == pytest.approx(
      [0.01, 0.01, 0.001, 0.001, 0.0001])
  assert not s.observe(0.1)
  c = optim.Schedule('constant', 0.05, 10)
  assert c.lr_at(10**6) == 0.05
  o = optim.Schedule('plateau', 0.01, 10, override=0.003)
  o.drops = 1
  assert o.lr_at(0) == pytest.approx(0.0003)
  with pytest.raises(ValueError, match='lr_schedule'):
    optim.Schedule('cosine', 0.01, 10)


def test_create_from_paper_config():
  config = default.get_config()
  tx, schedule = optim.create(config, steps_per_epoch=10_009)
  assert schedule.kind == 'plateau' and schedule.max_drops == 3
  state = tx.init(W0)
  assert float(optim.get_learning_rate(state)) == pytest.approx(0.01)
  assert float(state.hyperparams['momentum']) == pytest.approx(0.9)
  assert float(state.hyperparams['weight_decay']) == pytest.approx(5e-4)
  config.learning_rate = -1.0
  with pytest.raises(ValueError, match='learning_rate'):
    optim.create(config, 10)


@pytest.mark.parametrize('scaling,batch,expected', [
    ('none', 1024, 0.01),
    ('linear', 1024, 0.08),
    ('sqrt', 1024, 0.01 * 8 ** 0.5),
    ('sqrt', 128, 0.01),  # The paper's batch is the reference: unchanged.
    ('linear', 64, 0.005),
])
def test_learning_rate_scales_with_batch(scaling, batch, expected):
  config = default.get_config()
  config.lr_scaling = scaling
  config.batch_size = batch
  assert optim.scaled_learning_rate(0.01, batch, 128, scaling) == (
      pytest.approx(expected))
  tx, schedule = optim.create(config, steps_per_epoch=10)
  assert schedule.lr_at(0) == pytest.approx(expected)
  assert float(optim.get_learning_rate(tx.init(W0))) == pytest.approx(expected)
  config.lr_scaling = 'cubic'
  with pytest.raises(ValueError, match="'none', 'linear', 'sqrt'"):
    optim.create(config, 10)
