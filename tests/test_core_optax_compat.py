"""optax's compatibility battery (after optax/contrib/_common_test.py) for our optimizers."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import layerwise_optax as lo
from tests import reference

PARAMS = {"Dense_0": {"kernel": jnp.array([[0.5, -1.0], [2.0, 0.1]]), "bias": jnp.zeros(2)},
          "Dense_1": {"kernel": jnp.array([1.0, -2.0])}}


def _grads(scale=1.0):
  return jax.tree.map(lambda p: scale * (jnp.cos(p) + 0.1), PARAMS)


FACTORIES = {
    "scale_by_layerwise_lr": (lambda norm_eps=0.0: lo.scale_by_layerwise_lr(norm_eps=norm_eps),
                              {"norm_eps": 0.01}),
    "sgd": (lo.sgd, {"learning_rate": 0.1, "momentum": 0.9, "weight_decay": 1e-3}),
    "adagrad": (lo.adagrad, {"learning_rate": 0.1, "initial_accumulator_value": 0.1}),
    "with_layerwise_lr(adam)": (lambda learning_rate: lo.with_layerwise_lr(
        optax.adam(learning_rate)), {"learning_rate": 0.01}),
    # keep_stats=True: the same battery with the statistics in the state.
    "sgd(keep_stats)": (functools.partial(lo.sgd, keep_stats=True),
                        {"learning_rate": 0.1, "momentum": 0.9, "nesterov": True}),
    "adagrad(keep_stats)": (functools.partial(lo.adagrad, keep_stats=True),
                            {"learning_rate": 0.1, "weight_decay": 1e-3}),
    "with_layerwise_lr(adam, keep_stats)": (lambda learning_rate: lo.with_layerwise_lr(
        optax.adam(learning_rate), keep_stats=True), {"learning_rate": 0.01}),
    # Trust ratios (update needs params, which every test here passes).
    "scale_by_trust_ratio": (lo.scale_by_trust_ratio,
                             {"min_norm": 0.01, "trust_coefficient": 0.5, "eps": 1e-3}),
    "lars": (lo.lars, {"learning_rate": 0.1, "weight_decay": 1e-3, "trust_coefficient": 0.01,
                       "momentum": 0.9}),
    "lamb": (lo.lamb, {"learning_rate": 0.01, "weight_decay": 1e-3, "b1": 0.8}),
    # A mask tree: inject_hyperparams takes a callable for a schedule unless static_args
    # names it, as with optax.lars.
    "lars(module, keep_stats, max_ratio)": (functools.partial(
        lo.lars, layers="module", keep_stats=True,
        trust_ratio_mask={"Dense_0": {"kernel": True, "bias": False}, "Dense_1": True}),
        {"learning_rate": 0.1, "max_ratio": 5.0}),
    "lamb(keep_stats)": (functools.partial(lo.lamb, keep_stats=True),
                         {"learning_rate": 0.01, "eps": 1e-4}),
}

# The trust-ratio aliases against optax's, with the same arguments.
OPTAX_TWINS = {"lars": optax.lars, "lamb": optax.lamb}


@pytest.mark.parametrize("name", FACTORIES)
def test_inject_hyperparams_gives_the_same_updates(name):
  factory, hparams = FACTORIES[name]
  plain = factory(**hparams)
  injected = optax.inject_hyperparams(factory)(**hparams)
  s_plain, s_inj = plain.init(PARAMS), jax.jit(injected.init)(PARAMS)
  update_inj = jax.jit(injected.update)
  for k in range(3):
    u_plain, s_plain = plain.update(_grads(1.0 + k), s_plain, PARAMS)
    u_inj, s_inj = update_inj(_grads(1.0 + k), s_inj, PARAMS)
    chex.assert_trees_all_close(u_inj, u_plain, rtol=1e-5)


def test_inject_hyperparams_can_change_norm_eps_between_steps():
  tx = optax.inject_hyperparams(lo.scale_by_layerwise_lr)(norm_eps=0.0)
  state = tx.init(PARAMS)
  g = {"l": {"w": jnp.array([1e-6])}}
  u0, state = tx.update(g, state)
  state.hyperparams["norm_eps"] = jnp.asarray(1.0)
  u1, _ = tx.update(g, state)
  np.testing.assert_allclose(u0["l"]["w"], 1e-6 * reference.factor(1e-6), rtol=1e-5)
  np.testing.assert_allclose(u1["l"]["w"], 1e-6 * reference.factor(1e-6 + 1.0), rtol=1e-5)


@pytest.mark.parametrize("name", OPTAX_TWINS)
def test_trust_ratio_aliases_equal_optax_step_by_step_and_under_inject_hyperparams(name):
  factory, hparams = FACTORIES[name]
  ours = optax.inject_hyperparams(factory)(**hparams)
  theirs = OPTAX_TWINS[name](**hparams)
  s_ours, s_theirs = jax.jit(ours.init)(PARAMS), theirs.init(PARAMS)
  params = PARAMS
  for k in range(3):
    u_ours, s_ours = jax.jit(ours.update)(_grads(1.0 + k), s_ours, params)
    u_theirs, s_theirs = theirs.update(_grads(1.0 + k), s_theirs, params)
    chex.assert_trees_all_close(u_ours, u_theirs, rtol=1e-5, atol=1e-9)
    params = optax.apply_updates(params, u_theirs)


def test_multisteps_accumulates_then_applies_the_mean_gradient():
  inner = lo.sgd(0.1, momentum=0.9)
  tx = optax.MultiSteps(inner, every_k_schedule=2)
  state = tx.init(PARAMS)
  g1, g2 = _grads(1.0), _grads(3.0)
  u1, state = tx.update(g1, state, PARAMS)
  chex.assert_trees_all_close(u1, jax.tree.map(jnp.zeros_like, PARAMS))
  u2, state = tx.update(g2, state, PARAMS)
  mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
  expected, _ = inner.update(mean, inner.init(PARAMS), PARAMS)
  chex.assert_trees_all_close(u2, expected, rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
@pytest.mark.parametrize("name", ["sgd", "adagrad", "lars", "lamb"])
def test_updates_keep_the_parameter_dtype(name, dtype):
  params = jax.tree.map(lambda p: p.astype(dtype), PARAMS)
  tx = {"sgd": lambda: lo.sgd(0.1, momentum=0.9), "adagrad": lambda: lo.adagrad(0.1),
        "lars": lambda: lo.lars(0.1), "lamb": lambda: lo.lamb(0.01)}[name]()
  state = tx.init(params)
  grads = jax.tree.map(lambda p: p.astype(dtype), _grads())
  updates, _ = jax.jit(tx.update)(grads, state, params)
  chex.assert_trees_all_equal_dtypes(updates, params)
  assert all(np.all(np.isfinite(np.asarray(u, np.float32))) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("name", FACTORIES)
def test_abstract_init_on_shape_dtype_structs(name):
  factory, hparams = FACTORIES[name]
  tx = factory(**hparams)
  abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), PARAMS)
  abstract_state = jax.eval_shape(tx.init, abstract)
  concrete_state = tx.init(PARAMS)
  chex.assert_trees_all_equal_shapes_and_dtypes(abstract_state, concrete_state)
  assert lo.scale_by_layerwise_lr().init(abstract) == optax.EmptyState()


@pytest.mark.parametrize("name", FACTORIES)
def test_no_recompile_on_later_steps_and_extra_args_accepted(name):
  factory, hparams = FACTORIES[name]
  tx = optax.with_extra_args_support(factory(**hparams))
  state = tx.init(PARAMS)
  update = jax.jit(tx.update)
  for k in range(3):
    _, state = update(_grads(1.0 + k), state, PARAMS, unexpected_extra_arg=1)
  assert update._cache_size() == 1


def test_no_added_per_parameter_state():
  def state_bytes(tx):
    return sum(x.nbytes for x in jax.tree.leaves(tx.init(PARAMS)))

  assert state_bytes(lo.sgd(0.1, momentum=0.9)) == state_bytes(optax.sgd(0.1, momentum=0.9))
  assert state_bytes(lo.adagrad(0.1)) == state_bytes(optax.adagrad(0.1))
  assert state_bytes(lo.lars(0.1)) == state_bytes(optax.lars(0.1))
  assert state_bytes(lo.lamb(0.1)) == state_bytes(optax.lamb(0.1))
  assert jax.tree.leaves(lo.scale_by_layerwise_lr().init(PARAMS)) == []
