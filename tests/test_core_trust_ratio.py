"""Trust ratios on the layer plan (lo.scale_by_trust_ratio, lo.lars, lo.lamb) and the two
parts of the factor, layer-relative (relative=True) and layer-uniform (uniform=True).

References (float64 NumPy, written here from the papers): LARS, You et al. arXiv:1708.03888
eq. 6; LAMB, You et al. arXiv:1904.00962 algorithm 2.
"""

import functools
import os
import pickle
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import layerwise_optax as lo
from tests import reference

ROOT = Path(__file__).resolve().parents[1]
PARAMS = {"Conv_0": {"kernel": jnp.array([[0.5, -1.0], [2.0, 0.1]]), "bias": jnp.zeros(2)},
          "Dense_0": {"kernel": jnp.array([[1.0, -2.0, 0.3]]), "bias": jnp.array([0.2])},
          "scale": jnp.array([1.5, 0.5])}
N_BLOCKS = 3
STACK = {"blocks": {"kernel": jnp.arange(1.0, 1.0 + N_BLOCKS * 6).reshape(N_BLOCKS, 2, 3) / 7,
                    "bias": jnp.array([[0.0, 0.0, 0.0], [0.1, -0.2, 0.3], [1.0, 2.0, -2.0]])},
         "head": {"kernel": jnp.array([[0.4], [-0.3], [1.2]])}}
NO_BIAS = {"Conv_0": {"kernel": True, "bias": False},
           "Dense_0": {"kernel": True, "bias": False}, "scale": False}


def not_1d(tree):
  """The usual callable mask: no trust ratio (or no decay) for 1-D arrays."""
  return jax.tree.map(lambda x: x.ndim != 1, tree)


def grads_at(params, k):
  return jax.tree.map(lambda p: (1.0 + k) * (jnp.cos(3 * p + k) + 0.1), params)


def run(tx, params=PARAMS, steps=4):
  """The updates of ``steps`` steps of ``tx`` (the parameters moving), and the last state."""
  state, out = tx.init(params), []
  update = jax.jit(tx.update)
  for k in range(steps):
    updates, state = update(grads_at(params, k), state, params)
    params = optax.apply_updates(params, updates)
    out.append(updates)
  return out, state


def assert_runs_close(ours, theirs, rtol=1e-5):
  """Step by step, leaf by leaf; an entry near 0 (the momentum cancelling the step) is
  compared with a tolerance of its array's scale."""
  for step_ours, step_theirs in zip(ours, theirs, strict=True):
    chex.assert_trees_all_equal_structs(step_ours, step_theirs)
    for a, b in zip(jax.tree.leaves(step_ours), jax.tree.leaves(step_theirs)):
      np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * float(np.max(np.abs(b))))


# --- equality with optax ------------------------------------------------------------------

LARS_CASES = {
    "defaults": {},
    "weight decay, nesterov": {"weight_decay": 1e-2, "nesterov": True, "momentum": 0.8},
    "mask tree": {"trust_ratio_mask": NO_BIAS, "weight_decay": 1e-2,
                  "weight_decay_mask": NO_BIAS, "trust_coefficient": 0.02, "eps": 1e-3},
    "mask callable": {"trust_ratio_mask": not_1d, "weight_decay": 5e-3,
                      "weight_decay_mask": not_1d},
}


@pytest.mark.parametrize("case", LARS_CASES)
def test_lars_equals_optax_lars_step_by_step(case):
  kwargs = LARS_CASES[case]
  ours, state = run(lo.lars(0.5, layers="array", keep_stats=True, **kwargs))
  theirs, _ = run(optax.lars(0.5, **kwargs))
  assert_runs_close(ours, theirs)
  # The ratios matter: far from 1 and different between arrays.
  ratios = np.asarray(optax.tree_utils.tree_get(state, "trust_ratio_stats").ratios)
  assert np.ptp(ratios) > 0.01 * np.max(ratios) and np.min(np.abs(ratios - 1)) > 1e-3


LAMB_CASES = {
    "defaults": {},
    "weight decay": {"weight_decay": 1e-2, "b1": 0.8, "eps": 1e-4},
    "weight decay mask": {"weight_decay": 1e-1, "mask": NO_BIAS},
    "weight decay mask callable": {"weight_decay": 1e-1, "mask": not_1d, "eps_root": 1e-8},
}


@pytest.mark.parametrize("case", LAMB_CASES)
def test_lamb_equals_optax_lamb_step_by_step(case):
  kwargs = LAMB_CASES[case]
  ours, _ = run(lo.lamb(0.1, **kwargs))
  theirs, _ = run(optax.lamb(0.1, **kwargs))
  assert_runs_close(ours, theirs)


@pytest.mark.parametrize("mask", [NO_BIAS, not_1d], ids=["tree", "callable"])
def test_lamb_trust_ratio_mask_equals_optax_masked_trust_ratio(mask):
  ours, _ = run(lo.lamb(0.1, weight_decay=1e-2, trust_ratio_mask=mask))
  theirs, _ = run(optax.chain(
      optax.scale_by_adam(), optax.add_decayed_weights(1e-2),
      optax.masked(optax.scale_by_trust_ratio(), mask), optax.scale_by_learning_rate(0.1)))
  assert_runs_close(ours, theirs)
  unmasked, _ = run(optax.lamb(0.1, weight_decay=1e-2))
  assert not np.allclose(ours[-1]["scale"], unmasked[-1]["scale"])  # the mask matters


def test_scale_by_trust_ratio_equals_optax_with_min_norm_coefficient_and_eps():
  params = dict(PARAMS, tiny={"w": jnp.array([1e-3, 0.0])})
  grads = dict(grads_at(PARAMS, 0), tiny={"w": jnp.array([0.0, 1e-4])})
  for min_norm, coefficient, eps in [(0.0, 1.0, 0.0), (0.01, 0.3, 1e-2), (1.0, 2.0, 0.0)]:
    ours = lo.scale_by_trust_ratio(min_norm, coefficient, eps)
    theirs = optax.scale_by_trust_ratio(min_norm, coefficient, eps)
    chex.assert_trees_all_close(ours.update(grads, ours.init(params), params)[0],
                                theirs.update(grads, theirs.init(params), params)[0],
                                rtol=1e-6)


# --- the ratio itself, against float64 NumPy -------------------------------------------------

def numpy_ratio(w_arrays, u_arrays, coefficient=1.0, eps=0.0, max_ratio=None):
  """(||w||, ||u||, ratio) of one layer made of several arrays, in float64."""
  w = np.sqrt(sum(np.sum(np.square(np.asarray(a, np.float64))) for a in w_arrays))
  u = np.sqrt(sum(np.sum(np.square(np.asarray(a, np.float64))) for a in u_arrays))
  if w == 0 or u == 0:
    return w, u, 1.0
  ratio = coefficient * w / (u + eps)
  return w, u, ratio if max_ratio is None else min(ratio, max_ratio)


def test_module_layers_share_one_ratio_and_masked_arrays_leave_the_norms():
  grads = grads_at(PARAMS, 1)
  mask = {"Conv_0": True, "Dense_0": {"kernel": True, "bias": False}, "scale": True}
  tx = lo.scale_by_trust_ratio(trust_coefficient=0.5, eps=0.1, layers="module", mask=mask,
                               keep_stats=True)
  updates, state = tx.update(grads, tx.init(PARAMS), PARAMS)
  stats = state.trust_ratio_stats
  assert list(stats) == ["Conv_0", "Dense_0", "scale"]
  expected = {
      "Conv_0": numpy_ratio(jax.tree.leaves(PARAMS["Conv_0"]),
                            jax.tree.leaves(grads["Conv_0"]), 0.5, 0.1),
      "Dense_0": numpy_ratio([PARAMS["Dense_0"]["kernel"]], [grads["Dense_0"]["kernel"]],
                             0.5, 0.1),
      "scale": numpy_ratio([PARAMS["scale"]], [grads["scale"]], 0.5, 0.1)}
  for name, (w, u, ratio) in expected.items():
    np.testing.assert_allclose(stats[name], (w, u, ratio), rtol=1e-6)
  for path in (("Conv_0", "kernel"), ("Conv_0", "bias"), ("Dense_0", "kernel")):
    np.testing.assert_allclose(updates[path[0]][path[1]],
                               expected[path[0]][2] * grads[path[0]][path[1]], rtol=1e-6)
  np.testing.assert_array_equal(updates["Dense_0"]["bias"], grads["Dense_0"]["bias"])


def test_zero_norms_give_ratio_one_and_max_ratio_clips_the_rest():
  params = {"zero": jnp.zeros(3), "big": jnp.full(4, 10.0), "small": jnp.full(4, 0.1)}
  grads = {"zero": jnp.ones(3), "big": jnp.full(4, 0.5), "small": jnp.zeros(4)}
  tx = lo.scale_by_trust_ratio(max_ratio=3.0, keep_stats=True)
  updates, state = tx.update(grads, tx.init(params), params)
  ratios = {name: float(s.ratio) for name, s in state.trust_ratio_stats.items()}
  assert ratios == {"big": 3.0, "small": 1.0, "zero": 1.0}  # 20 clipped to 3; zero norms
  np.testing.assert_allclose(updates["big"], 1.5)
  np.testing.assert_array_equal(updates["zero"], grads["zero"])
  np.testing.assert_array_equal(updates["small"], 0.0)
  # Below the clip the ratio is untouched: max_ratio 30 leaves 20.
  wide = lo.scale_by_trust_ratio(max_ratio=30.0)
  np.testing.assert_allclose(wide.update(grads, wide.init(params), params)[0]["big"], 10.0)


def test_kept_statistics_equal_a_recomputation_every_step():
  tx = lo.lars(0.1, weight_decay=1e-2, trust_coefficient=0.01, eps=1e-3, layers="module",
               stacked="blocks", keep_stats=True)
  params, state = STACK, tx.init(STACK)
  initial = optax.tree_utils.tree_get(state, "trust_ratio_stats")
  np.testing.assert_array_equal(initial.ratios, np.ones(N_BLOCKS + 1))
  for k in range(3):
    grads = grads_at(params, k)
    decayed = jax.tree.map(lambda g, p: g + 1e-2 * p, grads, params)
    updates, state = tx.update(grads, state, params)
    stats = optax.tree_utils.tree_get(state, "trust_ratio_stats")
    assert list(stats) == ["blocks", "head"]
    for i in range(N_BLOCKS):
      block = [x[i] for x in jax.tree.leaves(params["blocks"])]
      block_u = [x[i] for x in jax.tree.leaves(decayed["blocks"])]
      expected = numpy_ratio(block, block_u, 0.01, 1e-3)
      np.testing.assert_allclose([s[i] for s in stats["blocks"]], expected, rtol=1e-6)
    np.testing.assert_allclose(
        stats["head"], numpy_ratio([params["head"]["kernel"]], [decayed["head"]["kernel"]],
                                   0.01, 1e-3), rtol=1e-6)
    params = optax.apply_updates(params, updates)
  assert len(jax.tree.leaves(stats)) == 3  # packed: three vectors, whatever the layers


def test_per_block_ratios_of_a_stack_equal_each_block_alone():
  grads = grads_at(STACK, 2)
  for layers in ("array", "module"):
    tx = lo.scale_by_trust_ratio(trust_coefficient=0.1, layers=layers, stacked="blocks",
                                 keep_stats=True)
    updates, state = tx.update(grads, tx.init(STACK), STACK)
    ratios = state.trust_ratio_stats
    alone = lo.scale_by_trust_ratio(trust_coefficient=0.1, layers=layers, keep_stats=True)
    if layers == "array":  # block 0's bias is zero: it keeps ratio 1
      np.testing.assert_array_equal(updates["blocks"]["bias"][0], grads["blocks"]["bias"][0])
    for i in range(N_BLOCKS):
      block = {"blocks": jax.tree.map(lambda x, i=i: x[i], STACK["blocks"])}
      block_grads = {"blocks": jax.tree.map(lambda x, i=i: x[i], grads["blocks"])}
      block_updates, block_state = alone.update(block_grads, alone.init(block), block)
      chex.assert_trees_all_close(jax.tree.map(lambda x, i=i: x[i], updates["blocks"]),
                                  block_updates["blocks"], rtol=1e-6)
      for name, single in block_state.trust_ratio_stats.items():
        np.testing.assert_allclose([s[i] for s in ratios[name]], single, rtol=1e-6)
  # optax's per-array ratio mixes the three blocks: block 0's zero bias gets a ratio too.
  whole, _ = optax.scale_by_trust_ratio().update(grads, optax.EmptyState(), STACK)
  assert not np.allclose(whole["blocks"]["bias"][0], grads["blocks"]["bias"][0])


def test_dtypes_follow_the_updates_and_the_stats_stay_float32():
  params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), PARAMS)
  grads = jax.tree.map(lambda p: p.astype(jnp.bfloat16), grads_at(PARAMS, 0))
  tx = lo.scale_by_trust_ratio(keep_stats=True)
  state = tx.init(params)
  updates, new_state = jax.jit(tx.update)(grads, state, params)
  chex.assert_trees_all_equal_dtypes(updates, params)
  chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
  assert new_state.trust_ratio_stats.ratios.dtype == jnp.float32


def test_tree_map_params_keeps_the_trust_ratio_stats():
  tx = lo.lars(0.1, keep_stats=True, trust_ratio_mask=not_1d)
  _, state = run(tx, steps=1)
  mapped = optax.tree_utils.tree_map_params(tx, lambda p: p + 100.0, state)
  assert jax.tree.structure(mapped) == jax.tree.structure(state)
  chex.assert_trees_all_equal(lo.trust_ratio_stats(mapped), lo.trust_ratio_stats(state))
  trace = optax.tree_utils.tree_get(mapped, "trace")
  chex.assert_trees_all_close(trace, jax.tree.map(lambda t: t + 100.0,
                                                  optax.tree_utils.tree_get(state, "trace")))
  kinds = optax.tree_utils.tree_map_params(tx, lambda _: "param", state,
                                           transform_non_params=lambda _: "other")
  assert jax.tree.structure(kinds) == jax.tree.structure(state)
  stats = lo.trust_ratio_stats(kinds)
  assert (stats.param_norms, stats.update_norms, stats.ratios) == ("other",) * 3
  assert list(stats) == ["Conv_0/kernel", "Dense_0/kernel"]


@pytest.mark.parametrize("keep_stats", [False, True])
def test_tree_map_params_with_a_label_tree_for_layers(keep_stats):
  labels = {"Conv_0": "conv", "Dense_0": "dense", "scale": "dense"}
  tx = lo.lars(0.1, layers=labels, keep_stats=keep_stats)
  _, state = run(tx, steps=1)
  mapped = optax.tree_utils.tree_map_params(tx, lambda p: 2 * p, state)
  chex.assert_trees_all_close(optax.tree_utils.tree_get(mapped, "trace"), jax.tree.map(
      lambda t: 2 * t, optax.tree_utils.tree_get(state, "trace")))
  if keep_stats:
    assert list(lo.trust_ratio_stats(mapped)) == ["conv", "dense"]
  with pytest.raises(ValueError, match="label tree does not match"):
    tx.init({"Conv_0": PARAMS["Conv_0"], "other": PARAMS["scale"]})


ROUND_TRIPS = {"lars": lambda: lo.lars(0.1, weight_decay=1e-3, layers="module",
                                       keep_stats=True),
               "inject_hyperparams(lamb)": lambda: optax.inject_hyperparams(lo.lamb)(
                   learning_rate=0.01, stacked="blocks", keep_stats=True)}


@pytest.mark.parametrize("name", ROUND_TRIPS)
def test_states_round_trip_through_pickle_and_flax_serialization(name):
  tx = ROUND_TRIPS[name]()
  params = STACK if "lamb" in name else PARAMS
  _, state = run(tx, params, steps=2)
  restored = [pickle.loads(pickle.dumps(state))]
  serialization = None
  try:
    from flax import serialization
  except ImportError:  # the lowest-versions run has no Flax
    pass
  if serialization is not None:
    restored.append(serialization.from_bytes(tx.init(params), serialization.to_bytes(state)))
  for again in restored:
    assert jax.tree.structure(again) == jax.tree.structure(state)
    chex.assert_trees_all_equal(again, state)
    assert list(lo.trust_ratio_stats(again)) == list(lo.trust_ratio_stats(state))
  assert len(lo.trust_ratio_stats(state)) > 0


def test_everything_masked_leaves_the_updates_alone():
  tx = lo.scale_by_trust_ratio(mask=False, keep_stats=True)
  grads = grads_at(PARAMS, 0)
  updates, state = tx.update(grads, tx.init(PARAMS), PARAMS)
  chex.assert_trees_all_equal(updates, grads)
  assert len(state.trust_ratio_stats) == 0


# --- errors -------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,message", [
    ({"trust_coefficient": -1.0}, "trust_coefficient must be a finite scalar > 0; got -1.0."),
    ({"trust_coefficient": 0.0}, "trust_coefficient must be a finite scalar > 0; got 0.0."),
    ({"eps": -1e-3}, "eps must be a finite scalar >= 0; got -0.001."),
    ({"min_norm": float("nan")}, "min_norm must be a finite scalar >= 0; got nan."),
    ({"max_ratio": 0.0}, "max_ratio must be a finite scalar > 0; got 0.0."),
    ({"trust_coefficient": np.ones(2)}, "trust_coefficient must be a finite scalar > 0"),
    ({"layers": "modules"}, "layers='modules' is not a known grouping"),
])
def test_bad_arguments_raise_at_construction(kwargs, message):
  with pytest.raises(ValueError) as info:
    lo.scale_by_trust_ratio(**kwargs)
  assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_the_aliases_check_their_arguments_at_construction():
  with pytest.raises(ValueError, match="trust_coefficient must be a finite scalar > 0"):
    lo.lars(0.1, trust_coefficient=-0.001)
  with pytest.raises(ValueError, match="eps must be a finite scalar >= 0"):
    lo.lars(0.1, eps=-1.0)
  with pytest.raises(ValueError, match="max_ratio must be a finite scalar > 0"):
    lo.lamb(0.1, max_ratio=-10.0)


def test_bad_masks_params_and_stacked_raise_one_line_errors():
  with pytest.raises(ValueError, match="mask does not match the parameters"):
    lo.scale_by_trust_ratio(mask={"Conv_0": True}).init(PARAMS)
  tx = lo.scale_by_trust_ratio()
  with pytest.raises(ValueError, match="needs the parameters"):
    tx.update(PARAMS, tx.init(PARAMS))
  with pytest.raises(ValueError, match="stacked prefix 'block' matches no layer"):
    lo.lamb(0.1, stacked="block").init(STACK)
  with pytest.raises(ValueError, match="holds no trust-ratio statistics: build the optimizer "
                     "with keep_stats=True"):
    lo.trust_ratio_stats(lo.lars(0.1).init(PARAMS))


# --- the layer-relative form ----------------------------------------------------------------

def weighted_mean(factors, counts):
  factors, counts = np.asarray(factors, np.float64), np.asarray(counts, np.float64)
  return float(np.sum(factors * counts) / np.sum(counts))


def test_relative_form_has_parameter_weighted_mean_one_in_both_placements():
  params = {"blocks": {"w": jnp.ones((N_BLOCKS, 4, 5)), "b": jnp.ones((N_BLOCKS, 5))},
            "head": {"w": jnp.ones((5, 2))}}
  counts = [25] * N_BLOCKS + [10]  # each block: 4*5 + 5; the head 5*2
  block_scale = jnp.array([1e-3, 1e-1, 3.0])  # gradient norms far apart: factors 1.4-7.6
  inner = optax.adam(1e-3)
  for k in range(3):
    wave = jax.tree.map(lambda p, k=k: jnp.cos(jnp.arange(p.size).reshape(p.shape) + k) + 0.1,
                        params)
    grads = {"blocks": {"w": wave["blocks"]["w"] * block_scale[:, None, None],
                        "b": wave["blocks"]["b"] * block_scale[:, None]},
             "head": {"w": 0.02 * wave["head"]["w"]}}
    raw = lo.layer_factors(grads, stacked="blocks")
    f = np.concatenate([np.ravel(raw["blocks"].factor), [raw["head"].factor]])
    expected = f / weighted_mean(f, counts)
    for tx, base in ((lo.scale_by_layerwise_lr(stacked="blocks", relative=True), None),
                     (lo.with_layerwise_lr(inner, stacked="blocks", relative=True), inner)):
      updates, _ = tx.update(grads, tx.init(params), params)
      plain = grads if base is None else base.update(grads, base.init(params), params)[0]
      applied = np.concatenate([
          np.asarray(updates["blocks"]["w"][:, 0, 0] / plain["blocks"]["w"][:, 0, 0]),
          [updates["head"]["w"][0, 0] / plain["head"]["w"][0, 0]]])
      np.testing.assert_allclose(applied, expected, rtol=1e-5)
      assert weighted_mean(applied, counts) == pytest.approx(1.0, abs=1e-6)
    assert abs(np.mean(expected) - 1.0) > 1e-2  # the unweighted mean is not 1 here


def test_uniform_form_is_the_weighted_mean_and_times_the_relative_one_gives_eq9():
  params = {"blocks": {"w": jnp.ones((N_BLOCKS, 4, 5)), "b": jnp.ones((N_BLOCKS, 5))},
            "head": {"w": jnp.ones((5, 2))}}
  counts = [25] * N_BLOCKS + [10]
  wave = jax.tree.map(lambda p: jnp.cos(jnp.arange(p.size).reshape(p.shape)) + 0.1, params)
  grads = {"blocks": {"w": wave["blocks"]["w"] * jnp.array([1e-3, 1e-1, 3.0])[:, None, None],
                      "b": wave["blocks"]["b"] * jnp.array([1e-3, 1e-1, 3.0])[:, None]},
           "head": {"w": 0.02 * wave["head"]["w"]}}
  raw = lo.layer_factors(grads, stacked="blocks")
  f = np.concatenate([np.ravel(raw["blocks"].factor), [raw["head"].factor]])
  inner = optax.adagrad(1e-2)

  def applied(tx, base):
    updates, _ = tx.update(grads, tx.init(params), params)
    plain = grads if base is None else base.update(grads, base.init(params), params)[0]
    return np.concatenate([
        np.asarray(updates["blocks"]["w"][:, 0, 0] / plain["blocks"]["w"][:, 0, 0]),
        [updates["head"]["w"][0, 0] / plain["head"]["w"][0, 0]]])

  for base in (None, inner):
    def build(base=base, **part):
      if base is None:
        return lo.scale_by_layerwise_lr(stacked="blocks", **part)
      return lo.with_layerwise_lr(base, stacked="blocks", **part)
    uniform = applied(build(uniform=True), base)
    np.testing.assert_allclose(uniform, np.full(len(f), weighted_mean(f, counts)), rtol=1e-5)
    assert 1.5 < uniform[0] < f.max()  # the factors span 1.4-7.6: the mean is none of them
    np.testing.assert_allclose(uniform * applied(build(relative=True), base),
                               applied(build(), base), rtol=1e-5)


def test_relative_and_uniform_together_are_refused():
  for build in (lo.scale_by_layerwise_lr, functools.partial(lo.with_layerwise_lr,
                                                            optax.sgd(0.1))):
    with pytest.raises(ValueError, match="relative=True and uniform=True together leave "
                       "every layer a factor of 1; pass at most one of them"):
      build(relative=True, uniform=True)


def test_uniform_stats_hold_the_applied_factor():
  tx = lo.scale_by_layerwise_lr(uniform=True, keep_stats=True)
  grads = grads_at(PARAMS, 0)
  updates, state = tx.update(grads, tx.init(PARAMS))
  stats = state.layer_stats
  counts = {"Conv_0": 6, "Dense_0": 4, "scale": 2}
  raw = [reference.factor(stats[n].norm) for n in counts]
  for name in counts:
    assert stats[name].factor == pytest.approx(weighted_mean(raw, list(counts.values())),
                                               rel=1e-5)
  np.testing.assert_allclose(updates["Dense_0"]["kernel"],
                             stats["Dense_0"].factor * grads["Dense_0"]["kernel"], rtol=1e-6)


def test_relative_stats_hold_the_applied_factor():
  tx = lo.scale_by_layerwise_lr(relative=True, keep_stats=True)
  grads = grads_at(PARAMS, 0)
  updates, state = tx.update(grads, tx.init(PARAMS))
  stats = state.layer_stats
  np.testing.assert_allclose(updates["Conv_0"]["kernel"],
                             stats["Conv_0"].factor * grads["Conv_0"]["kernel"], rtol=1e-6)
  counts = {"Conv_0": 6, "Dense_0": 4, "scale": 2}
  assert weighted_mean([stats[n].factor for n in counts], list(counts.values())) == \
      pytest.approx(1.0, abs=1e-6)
  norms = [stats[n].norm for n in counts]
  raw = [reference.factor(n) for n in norms]
  np.testing.assert_allclose([stats[n].factor for n in counts],
                             np.array(raw) / weighted_mean(raw, list(counts.values())),
                             rtol=1e-5)


# --- shard_map with axis_name (8 simulated devices, in a subprocess) ------------------------

def check_shard_map_ratios_equal_unsharded():
  """Run in a process with 8 CPU devices: lars under shard_map with axis_name gives the
  single-device updates and statistics; without axis_name each device has its own."""
  from jax.sharding import Mesh, NamedSharding
  from jax.sharding import PartitionSpec as P

  shard_map = getattr(jax, "shard_map", None)
  if shard_map is None:  # older jax
    from jax.experimental.shard_map import shard_map
  assert jax.device_count() == 8
  rng = np.random.default_rng(0)
  params = {"Dense_0": {"kernel": rng.standard_normal((16, 32), np.float32),
                        "bias": rng.standard_normal(32).astype(np.float32)},
            "blocks": {"kernel": rng.standard_normal((4, 16, 16), np.float32)}}
  grads = [jax.tree.map(lambda p, s=s: (0.01 * s * p + 0.003).astype(np.float32), params)
           for s in (1, 2)]
  specs = {"Dense_0": {"kernel": P("x"), "bias": P("x")}, "blocks": {"kernel": P(None, "x")}}
  by_shape = {p.shape: s for p, s in zip(jax.tree.leaves(params), jax.tree.leaves(specs))}
  mesh = Mesh(np.array(jax.devices()), ("x",))
  shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)

  def run_steps(axis_name, sharded, keep_stats=True):
    tx = lo.lars(0.1, weight_decay=1e-3, trust_coefficient=0.01, layers="module",
                 stacked="blocks", axis_name=axis_name, keep_stats=keep_stats)

    def step(p, state, g):
      updates, state = tx.update(g, state, p)
      return optax.apply_updates(p, updates), updates, state

    state, p = tx.init(params), params
    if sharded:  # the momentum is split like its parameter, the statistics replicated
      state_specs = jax.tree.map(lambda x: by_shape.get(x.shape, P()), state)
      step = shard_map(step, mesh=mesh, in_specs=(specs, state_specs, specs),
                       out_specs=(specs, specs, state_specs))
      p = jax.device_put(params, shardings)
    step = jax.jit(step)
    for g in grads:
      p, updates, state = step(p, state, jax.device_put(g, shardings) if sharded else g)
    stats = optax.tree_utils.tree_get(state, "trust_ratio_stats") if keep_stats else None
    return jax.device_get((updates, stats))

  single = run_steps(None, sharded=False)
  chex.assert_trees_all_close(run_steps("x", sharded=True), single, rtol=2e-5, atol=1e-8)
  # Without axis_name each device takes the ratios of its own shards: other updates.
  local, _ = run_steps(None, sharded=True, keep_stats=False)
  assert not np.allclose(local["blocks"]["kernel"], single[0]["blocks"]["kernel"], rtol=1e-2)


def test_shard_map_with_axis_name_gives_the_unsharded_ratios():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
  code = ("from tests import test_core_trust_ratio as t; "
          "t.check_shard_map_ratios_equal_unsharded(); print('checked')")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0 and "checked" in proc.stdout, proc.stdout + proc.stderr
