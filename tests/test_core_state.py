"""Optimizer state: its structure under inject_hyperparams, and keep_stats=True."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.extend.core import Literal

import layerwise_optax as lo

try:  # jax >= 0.8; the floor (0.5.3) has it under jax.experimental
  from jax import enable_x64
except ImportError:
  from jax.experimental import enable_x64

PARAMS = {"Dense_0": {"kernel": jnp.array([[0.5, -1.0], [2.0, 0.1]]), "bias": jnp.zeros(2)},
          "Dense_1": {"kernel": jnp.array([1.0, -2.0])}}
STACKED = {"blocks": {"w": jnp.arange(6.0).reshape(3, 2)}, "head": {"w": jnp.ones(2)}}


def _grads(tree, scale=1.0):
  return jax.tree.map(lambda p: scale * (jnp.cos(p) + 0.1), tree)


def _stats_arrays(stats):
  return {name: (np.asarray(s.norm), np.asarray(s.factor)) for name, s in stats.items()}


def _assert_stats_equal(stats, expected, rtol=1e-6):
  assert set(stats) == set(expected)
  for name in expected:
    np.testing.assert_allclose(stats[name].norm, expected[name].norm, rtol=rtol)
    np.testing.assert_allclose(stats[name].factor, expected[name].factor, rtol=rtol)


# Every numeric argument given or left at its default, and keep_stats both ways.
CONFIGS = {
    "sgd": (lo.sgd, {"learning_rate": 0.1}),
    "sgd(momentum, weight_decay)": (lo.sgd, {"learning_rate": 0.1, "momentum": 0.9,
                                             "weight_decay": 1e-3}),
    "sgd(nesterov, keep_stats)": (lo.sgd, {"learning_rate": 0.1, "momentum": 0.9,
                                           "nesterov": True, "keep_stats": True}),
    "adagrad": (lo.adagrad, {"learning_rate": 0.1}),
    "adagrad(weight_decay, keep_stats)": (lo.adagrad, {"learning_rate": 0.1,
                                                       "weight_decay": 1e-3,
                                                       "keep_stats": True}),
    "scale_by_layerwise_lr(keep_stats)": (lo.scale_by_layerwise_lr, {"keep_stats": True}),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_inject_hyperparams_keeps_the_inner_state_structure(name):
  factory, kwargs = CONFIGS[name]
  plain = factory(**kwargs)
  injected = optax.inject_hyperparams(factory)(**kwargs)
  s_plain, s_inj = plain.init(PARAMS), injected.init(PARAMS)
  assert jax.tree.structure(s_inj.inner_state) == jax.tree.structure(s_plain)
  _, s_plain = plain.update(_grads(PARAMS), s_plain, PARAMS)
  _, s_inj = jax.jit(injected.update)(_grads(PARAMS), s_inj, PARAMS)
  assert jax.tree.structure(s_inj.inner_state) == jax.tree.structure(s_plain)
  if factory is not lo.scale_by_layerwise_lr:  # weight decay is an injected hyperparameter
    assert "weight_decay" in s_inj.hyperparams


@pytest.mark.parametrize("factory", [lo.sgd, lo.adagrad])
def test_weight_decay_does_not_change_the_state_structure(factory):
  structures = {jax.tree.structure(factory(0.1, weight_decay=wd).init(PARAMS))
                for wd in (0, 0.0, 1e-3, jnp.asarray(0.0), jnp.asarray(1e-3))}
  assert len(structures) == 1


def _uses_params(tx):
  grads = _grads(PARAMS)
  jaxpr = jax.make_jaxpr(tx.update)(grads, tx.init(PARAMS), PARAMS).jaxpr
  n_params = len(jax.tree.leaves(PARAMS))
  param_vars = set(jaxpr.invars[-n_params:])
  used = {v for eqn in jaxpr.eqns for v in eqn.invars if not isinstance(v, Literal)}
  used |= {v for v in jaxpr.outvars if not isinstance(v, Literal)}
  return bool(param_vars & used)


@pytest.mark.parametrize("factory", [lo.sgd, lo.adagrad])
def test_literal_zero_weight_decay_reads_no_parameters(factory):
  assert not _uses_params(factory(0.1))
  assert not _uses_params(factory(0.1, weight_decay=0))
  assert _uses_params(factory(0.1, weight_decay=1e-3))
  assert _uses_params(factory(0.1, weight_decay=jnp.asarray(0.0)))  # an array always applies
  # A literal 0 needs no params at all, as before.
  tx = factory(0.1)
  updates, _ = tx.update(_grads(PARAMS), tx.init(PARAMS))
  assert jax.tree.structure(updates) == jax.tree.structure(PARAMS)


@pytest.mark.parametrize("bad", [-1e-3, float("nan"), [0.1, 0.2]])
def test_bad_weight_decay_is_rejected_at_construction(bad):
  for factory in (lo.sgd, lo.adagrad):
    with pytest.raises(ValueError, match="weight_decay must be a scalar >= 0"):
      factory(0.1, weight_decay=bad)


def test_keep_stats_off_leaves_the_state_as_it_was():
  assert lo.scale_by_layerwise_lr().init(PARAMS) == optax.EmptyState()
  inner = optax.adam(0.1)
  assert (jax.tree.structure(lo.with_layerwise_lr(inner).init(PARAMS))
          == jax.tree.structure(inner.init(PARAMS)))
  assert optax.tree_utils.tree_get(lo.sgd(0.1).init(PARAMS), "layer_stats") is None


@pytest.mark.parametrize("tree,stacked", [(PARAMS, None), (STACKED, "blocks")])
def test_scale_by_layerwise_lr_keeps_the_factors_it_applied(tree, stacked):
  tx = lo.scale_by_layerwise_lr(stacked=stacked, keep_stats=True)
  state = tx.init(tree)
  for k in range(2):
    g = _grads(tree, 10.0 ** -k)
    updates, state = tx.update(g, state)
    expected = lo.layer_factors(g, stacked=stacked)
    _assert_stats_equal(optax.tree_utils.tree_get(state, "layer_stats"), expected)
  if stacked:
    assert state.layer_stats["blocks"].norm.shape == (3,)
    np.testing.assert_allclose(updates["blocks"]["w"][1],
                               g["blocks"]["w"][1] * state.layer_stats["blocks"].factor[1],
                               rtol=1e-6)


def test_with_layerwise_lr_keeps_the_raw_gradients_stats():
  inner = optax.adam(0.01)
  tx = lo.with_layerwise_lr(inner, keep_stats=True)
  plain = lo.with_layerwise_lr(inner)
  state, s_plain = tx.init(PARAMS), plain.init(PARAMS)
  for k in range(3):
    g = _grads(PARAMS, 1.0 + k)
    updates, state = tx.update(g, state, PARAMS)
    u_plain, s_plain = plain.update(g, s_plain, PARAMS)
    _assert_stats_equal(state.layer_stats, lo.layer_factors(g))
    np.testing.assert_allclose(optax.tree_utils.tree_get(state, "count"), k + 1)
    for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(u_plain)):
      np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("factory", [lo.sgd, lo.adagrad])
def test_alias_stats_are_those_of_the_decayed_gradients(factory):
  wd = 0.5
  tx = factory(0.1, weight_decay=wd, keep_stats=True)
  state = tx.init(PARAMS)
  g = _grads(PARAMS)
  _, state = tx.update(g, state, PARAMS)
  decayed = jax.tree.map(lambda a, p: a + wd * p, g, PARAMS)
  stats = optax.tree_utils.tree_get(state, "layer_stats")
  _assert_stats_equal(stats, lo.layer_factors(decayed))
  raw = lo.layer_factors(g)
  assert not np.allclose(stats["Dense_1"].norm, raw["Dense_1"].norm)


def test_keep_stats_init_from_abstract_params_gives_zeros_and_ones():
  params = {"bf16": {"w": jnp.ones((3, 4), jnp.bfloat16)}, "blocks": {"w": jnp.ones((5, 2))}}
  abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
  for tx in (lo.scale_by_layerwise_lr(stacked="blocks", keep_stats=True),
             lo.adagrad(0.1, stacked="blocks", keep_stats=True)):
    state = tx.init(abstract)
    stats = optax.tree_utils.tree_get(state, "layer_stats")
    assert stats["bf16"].norm.dtype == jnp.float32 and stats["bf16"].norm.shape == ()
    np.testing.assert_array_equal(stats["blocks"].norm, np.zeros(5))
    np.testing.assert_array_equal(stats["blocks"].factor, np.ones(5))
    _, after = jax.jit(tx.update)(params, tx.init(params), params)
    assert jax.tree.structure(after) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(state)):
      assert (a.shape, a.dtype) == (b.shape, b.dtype)


@pytest.mark.parametrize("factory", [lo.sgd, lo.adagrad])
def test_keep_stats_jits_once_and_works_under_inject_hyperparams(factory):
  tx = optax.inject_hyperparams(factory)(learning_rate=0.1, keep_stats=True)
  state = tx.init(PARAMS)
  update = jax.jit(tx.update)
  for k in range(3):
    g = _grads(PARAMS, 1.0 + k)
    _, state = update(g, state, PARAMS)
    _assert_stats_equal(optax.tree_utils.tree_get(state, "layer_stats"), lo.layer_factors(g),
                        rtol=1e-5)
  assert update._cache_size() == 1


def test_keep_stats_under_multisteps_holds_the_last_applied_step():
  tx = optax.MultiSteps(lo.sgd(0.1, momentum=0.9, keep_stats=True), every_k_schedule=2)
  state = tx.init(PARAMS)
  update = jax.jit(tx.update)
  g1, g2, g3 = _grads(PARAMS, 1.0), _grads(PARAMS, 3.0), _grads(PARAMS, 7.0)
  _, state = update(g1, state, PARAMS)
  np.testing.assert_array_equal(state.inner_opt_state[1].layer_stats["Dense_0"].factor, 1.0)
  _, state = update(g2, state, PARAMS)
  mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
  _assert_stats_equal(optax.tree_utils.tree_get(state, "layer_stats"), lo.layer_factors(mean),
                      rtol=1e-5)
  _, state = update(g3, state, PARAMS)  # accumulating: the stats stay those of the mean
  _assert_stats_equal(optax.tree_utils.tree_get(state, "layer_stats"), lo.layer_factors(mean),
                      rtol=1e-5)
  assert update._cache_size() == 1


def _count_reductions(tx):
  jaxpr = jax.make_jaxpr(tx.update)(_grads(PARAMS), tx.init(PARAMS), PARAMS)
  return str(jaxpr).count("reduce_sum")


@pytest.mark.parametrize("make", [
    lambda keep: lo.scale_by_layerwise_lr(keep_stats=keep),
    lambda keep: lo.with_layerwise_lr(optax.adagrad(0.1), keep_stats=keep),
    lambda keep: lo.sgd(0.1, momentum=0.9, keep_stats=keep),
])
def test_keep_stats_adds_no_norm_pass(make):
  without, with_stats = _count_reductions(make(False)), _count_reductions(make(True))
  assert without == with_stats == 3  # one sum of squares per array, nothing more


def test_keep_stats_update_on_other_layers_than_at_init_is_an_error():
  tx = lo.scale_by_layerwise_lr(keep_stats=True)
  state = tx.init(PARAMS)
  other = {**PARAMS, "Dense_2": {"kernel": jnp.ones(2)}}
  with pytest.raises(ValueError, match="differ from those of the parameters at init"):
    tx.update(other, state)


def test_injected_weight_decay_needs_params_in_update():
  tx = optax.inject_hyperparams(lo.sgd)(learning_rate=0.1)
  with pytest.raises(ValueError, match="params"):
    tx.update(_grads(PARAMS), tx.init(PARAMS))
  updates, _ = tx.update(_grads(PARAMS), tx.init(PARAMS), PARAMS)
  plain, _ = lo.sgd(0.1).update(_grads(PARAMS), lo.sgd(0.1).init(PARAMS))
  for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(plain)):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_layer_stats_is_a_packed_mapping_equal_to_layer_factors():
  params = {"blocks": {"w": jnp.ones((3, 2))}, "head": {"w": jnp.ones(4), "b": jnp.ones(1)}}
  grads = jax.tree.map(lambda p: p * jnp.arange(1.0, p.size + 1).reshape(p.shape), params)
  tx = lo.scale_by_layerwise_lr(stacked="blocks", keep_stats=True)
  _, state = jax.jit(tx.update)(grads, tx.init(params))
  stats = state.layer_stats
  assert isinstance(stats, lo.LayerStats) and list(stats) == ["blocks", "head"]
  assert stats.norms.shape == stats.factors.shape == (4,)  # 3 slices + 1 layer
  expected = lo.layer_factors(grads, stacked="blocks")
  _assert_stats_equal(dict(stats), expected)
  assert stats["blocks"].norm.shape == (3,) and stats["head"].factor.shape == ()
  assert len(stats) == 2 and "head" in stats and "Head" not in stats and 0 not in stats
  assert stats.get("Head") is None and repr(stats).startswith("LayerStats({'blocks': ")
  assert len(jax.tree.leaves(state)) == 2
  leaves, treedef = jax.tree.flatten(stats)
  assert list(jax.tree.unflatten(treedef, leaves)) == ["blocks", "head"]
  with pytest.raises(KeyError):
    stats["Blocks"]


def test_layer_stats_of_no_layers_is_empty():
  tx = lo.scale_by_layerwise_lr(keep_stats=True)
  _, state = tx.update({}, tx.init({}))
  assert len(state.layer_stats) == 0 and state.layer_stats.norms.shape == (0,)


def test_layer_stats_keep_each_layers_dtype_under_x64():
  with enable_x64(True):
    params = {"a": {"w": jnp.ones(2, jnp.float32)}, "b": {"w": jnp.ones(2, jnp.float64)}}
    tx = lo.with_layerwise_lr(optax.sgd(0.1), keep_stats=True)
    _, state = jax.jit(tx.update)(params, tx.init(params), params)
    stats = state.layer_stats
    assert stats.norms.dtype == jnp.float64
    assert stats["a"].norm.dtype == jnp.float32 and stats["b"].factor.dtype == jnp.float64
    np.testing.assert_allclose(stats["b"].norm, np.sqrt(2.0), rtol=1e-12)


def test_layer_stats_finds_the_statistics_in_chained_and_wrapped_states():
  g = _grads(PARAMS)
  expected = lo.layer_factors(g)
  for tx in (lo.sgd(0.1, momentum=0.9, keep_stats=True),
             optax.chain(optax.clip(1e3), lo.with_layerwise_lr(optax.adam(0.1), keep_stats=True)),
             optax.inject_hyperparams(lo.adagrad)(learning_rate=0.1, keep_stats=True),
             optax.MultiSteps(lo.sgd(0.1, keep_stats=True), every_k_schedule=1)):
    _, state = tx.update(g, tx.init(PARAMS), PARAMS)
    stats = lo.layer_stats(state)
    assert isinstance(stats, lo.LayerStats)
    assert stats is optax.tree_utils.tree_get(state, "layer_stats")
    _assert_stats_equal(stats, expected)


def test_layer_stats_of_a_state_without_or_with_two_sets_is_an_error():
  with pytest.raises(ValueError, match="holds no layer statistics: build the optimizer with "
                                       "keep_stats=True"):
    lo.layer_stats(lo.sgd(0.1, momentum=0.9).init(PARAMS))
  two = optax.chain(lo.scale_by_layerwise_lr(keep_stats=True),
                    lo.with_layerwise_lr(optax.sgd(0.1), keep_stats=True))
  with pytest.raises(ValueError, match="holds 2 sets of layer statistics"):
    lo.layer_stats(two.init(PARAMS))


def test_layer_stats_documented_signature_has_no_internal_arguments():
  # The optimizers build it; its layout is internal (the docs show ``class LayerStats``).
  assert str(inspect.signature(lo.LayerStats)) == "()"
  assert [p for p in lo.LayerStats.__new__.__code__.co_varnames[:4]] == [
      "cls", "norms", "factors", "_layout"]  # what flax.serialization's restore passes
