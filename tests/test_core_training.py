"""Training loops users write: Flax linen TrainState, flax.nnx.Optimizer, equinox filtering."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import layerwise_optax as lo

eqx = pytest.importorskip("equinox")  # the framework loops need the test extra
nn = pytest.importorskip("flax.linen")
nnx = pytest.importorskip("flax.nnx")
train_state = pytest.importorskip("flax.training.train_state")


def _data(n=128, d=8, classes=3):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, d)).astype(np.float32)
  w = rng.normal(size=(d, classes)).astype(np.float32)
  return jnp.asarray(x), jnp.asarray((x @ w).argmax(-1))


X, Y = _data()


def _xent(logits):
  return optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean()


def test_flax_linen_train_state_loop():
  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(3)(nn.relu(nn.Dense(16)(x)))

  model = MLP()
  state = train_state.TrainState.create(
      apply_fn=model.apply, params=model.init(jax.random.key(0), X),
      tx=optax.chain(lo.scale_by_layerwise_lr(), optax.sgd(0.05, momentum=0.9)))

  @jax.jit
  def step(state):
    loss, grads = jax.value_and_grad(lambda p: _xent(state.apply_fn(p, X)))(state.params)
    return state.apply_gradients(grads=grads), loss

  state, first = step(state)
  for _ in range(60):
    state, loss = step(state)
  assert float(loss) < 0.5 * float(first)


def test_nnx_optimizer_loop_and_its_grouping():
  class MLP(nnx.Module):
    def __init__(self, rngs):
      self.hidden = nnx.Linear(8, 16, rngs=rngs)
      self.out = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
      return self.out(nnx.relu(self.hidden(x)))

  model = MLP(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, lo.sgd(0.05, momentum=0.9), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer):
    loss, grads = nnx.value_and_grad(lambda m: _xent(m(X)))(model)
    optimizer.update(model, grads)
    return loss, grads

  first, grads = step(model, optimizer)
  assert set(lo.layer_factors(grads)) == {"hidden", "out"}
  for _ in range(60):
    loss, _ = step(model, optimizer)
  assert float(loss) < 0.5 * float(first)


def test_equinox_filtered_tree_with_none_leaves():
  model = eqx.nn.MLP(8, 3, width_size=16, depth=2, key=jax.random.key(0))
  tx = lo.adagrad(0.1)
  opt_state = tx.init(eqx.filter(model, eqx.is_array))

  @eqx.filter_jit
  def step(model, opt_state):
    loss, grads = eqx.filter_value_and_grad(lambda m: _xent(jax.vmap(m)(X)))(model)
    updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
    return eqx.apply_updates(model, updates), opt_state, loss

  model, opt_state, first = step(model, opt_state)
  grads = eqx.filter_jit(eqx.filter_grad(lambda m: _xent(jax.vmap(m)(X))))(model)
  assert set(lo.layer_factors(grads)) == {"layers/0", "layers/1", "layers/2"}
  for _ in range(60):
    model, opt_state, loss = step(model, opt_state)
  assert float(loss) < 0.5 * float(first)
