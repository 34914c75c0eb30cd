"""keep_stats=True states of every optimizer through flax.serialization, orbax, pickle and
optax.tree_utils.tree_map_params: the same structure, the same arrays, the same layer names,
and a restored state that trains on exactly like the original."""

import copy
import pathlib
import pickle
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import layerwise_optax as lo

PARAMS = {"Dense_0": {"kernel": jnp.array([[0.5, -1.0], [2.0, 0.1]]), "bias": jnp.zeros(2)},
          "Dense_1": {"kernel": jnp.array([1.0, -2.0])}}
STACKED = {"blocks": {"w": jnp.arange(6.0).reshape(3, 2)}, "head": {"w": jnp.ones(2)}}

# (optimizer, parameters): every optimizer with keep_stats=True, bare and wrapped.
OPTIMIZERS = {
    "sgd": (lambda: lo.sgd(0.1, keep_stats=True), PARAMS),
    "sgd(momentum)": (lambda: lo.sgd(0.1, momentum=0.9, weight_decay=1e-3, keep_stats=True),
                      PARAMS),
    "sgd(nesterov)": (lambda: lo.sgd(0.1, momentum=0.9, nesterov=True, keep_stats=True),
                      PARAMS),
    "adagrad": (lambda: lo.adagrad(0.1, keep_stats=True), PARAMS),
    "adagrad(stacked)": (lambda: lo.adagrad(0.1, stacked="blocks", keep_stats=True), STACKED),
    "with_layerwise_lr(adam)": (
        lambda: lo.with_layerwise_lr(optax.adam(0.01), keep_stats=True), PARAMS),
    "chain(scale_by_layerwise_lr, sgd)": (
        lambda: optax.chain(lo.scale_by_layerwise_lr(keep_stats=True), optax.sgd(0.1)), PARAMS),
    "MultiSteps(sgd)": (
        lambda: optax.MultiSteps(lo.sgd(0.1, momentum=0.9, keep_stats=True), every_k_schedule=2),
        PARAMS),
    "inject_hyperparams(adagrad)": (
        lambda: optax.inject_hyperparams(lo.adagrad)(learning_rate=0.1, keep_stats=True), PARAMS),
}


def _grads(params, k):
  return jax.tree.map(lambda p: (1.0 + k) * (jnp.cos(p) + 0.1 * k), params)


class _Trained(NamedTuple):
  tx: object
  params: dict
  state: object
  update: object  # tx.update, jitted


def _trained(name, steps=3):
  make, params = OPTIMIZERS[name]
  tx = make()
  update = jax.jit(tx.update)
  state = tx.init(params)
  for k in range(steps):
    _, state = update(_grads(params, k), state, params)
  return _Trained(tx, params, state, update)


def _assert_same_state(restored, state):
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    assert np.asarray(a).dtype == np.asarray(b).dtype
    np.testing.assert_array_equal(a, b)
  got, expected = lo.layer_stats(restored), lo.layer_stats(state)
  assert list(got) == list(expected) and len(expected) > 0
  for name in expected:
    np.testing.assert_array_equal(got[name].norm, expected[name].norm)
    np.testing.assert_array_equal(got[name].factor, expected[name].factor)


def _assert_trains_on_alike(trained, restored):
  """One more step from the restored state gives what it gives from the original."""
  g = _grads(trained.params, 7)
  u_restored, s_restored = trained.update(g, restored, trained.params)
  u_state, s_state = trained.update(g, trained.state, trained.params)
  for a, b in zip(jax.tree.leaves((u_restored, s_restored)), jax.tree.leaves((u_state, s_state))):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_flax_serialization_round_trip(name):
  serialization = pytest.importorskip("flax.serialization")
  trained = _trained(name)
  tx, params, state, _ = trained
  data = serialization.to_bytes(state)
  restored = serialization.from_bytes(tx.init(params), data)
  _assert_same_state(restored, state)
  _assert_trains_on_alike(trained, restored)
  # The state dict names the statistics' two vectors like any other arrays of the state.
  as_dict = serialization.to_state_dict(state)
  assert "'norms'" in repr(as_dict) and "'factors'" in repr(as_dict)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_orbax_save_and_restore(name, tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  trained = _trained(name)
  tx, params, state, _ = trained
  abstract = jax.eval_shape(tx.init, params)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(tmp_path / "state", state)
    checkpointer.wait_until_finished()
    restored = checkpointer.restore(tmp_path / "state", abstract)
  _assert_same_state(restored, state)
  _assert_trains_on_alike(trained, restored)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_pickle_and_copy_round_trip(name):
  trained = _trained(name)
  tx, params, state, _ = trained
  for restored in (pickle.loads(pickle.dumps(state)), copy.deepcopy(state), copy.copy(state)):
    _assert_same_state(restored, state)
  _assert_trains_on_alike(trained, pickle.loads(pickle.dumps(state)))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_tree_map_params_with_transform_non_params_gives_the_states_structure(name):
  tx, params, state, _ = _trained(name)
  mapped = optax.tree_utils.tree_map_params(tx, lambda _: "param", state,
                                           transform_non_params=lambda _: "other")
  assert jax.tree.structure(mapped) == jax.tree.structure(state)
  stats = lo.layer_stats(mapped)
  assert (stats.norms, stats.factors) == ("other", "other")  # one value per vector
  assert list(stats) == list(lo.layer_stats(state))
  kinds = jax.tree.leaves(mapped)
  n_params = len(jax.tree.leaves(params))
  n_param_trees = {"sgd": 0, "chain(scale_by_layerwise_lr, sgd)": 0, "with_layerwise_lr(adam)": 2,
                   "MultiSteps(sgd)": 2}.get(name, 1)
  assert kinds.count("param") == n_param_trees * n_params
  assert kinds.count("other") == len(kinds) - n_param_trees * n_params
  # Zipped leaf by leaf with the state, as a tree of shardings is.
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("x",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  shardings = jax.tree.map(lambda _: sharding, mapped)
  placed = jax.tree.map(jax.device_put, state, shardings)
  _assert_same_state(placed, state)
  jitted = jax.jit(lambda s: s, out_shardings=shardings)(state)
  _assert_same_state(jitted, state)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_tree_map_params_maps_the_parameter_shaped_state_and_keeps_the_stats(name):
  tx, params, state, _ = _trained(name)
  mapped = optax.tree_utils.tree_map_params(tx, lambda p: p + 100.0, state)
  assert jax.tree.structure(mapped) == jax.tree.structure(state)
  got, expected = lo.layer_stats(mapped), lo.layer_stats(state)
  assert list(got) == list(expected)
  np.testing.assert_array_equal(got.norms, expected.norms)
  np.testing.assert_array_equal(got.factors, expected.factors)


def test_states_of_different_layers_keep_different_structures():
  tx = lo.adagrad(0.1, keep_stats=True)
  renamed = {"other": PARAMS["Dense_0"], "Dense_1": PARAMS["Dense_1"]}
  assert jax.tree.structure(tx.init(PARAMS)) != jax.tree.structure(tx.init(renamed))
  with pytest.raises(ValueError):
    jax.tree.map(lambda a, b: a, tx.init(PARAMS), tx.init(renamed))


def test_state_of_a_tree_without_arrays_has_no_layers_and_steps():
  tx = lo.scale_by_layerwise_lr(keep_stats=True)
  state = tx.init({})
  assert len(lo.layer_stats(state)) == 0
  _, state = jax.jit(tx.update)({}, state)
  assert len(lo.layer_stats(state)) == 0 and lo.layer_stats(state).norms.shape == (0,)
  with pytest.raises(ValueError, match="differ from those of the parameters at init"):
    tx.update(PARAMS, tx.init({}))


def test_the_library_uses_no_private_optax_names():
  source = pathlib.Path(lo.__file__).parent
  for path in sorted(source.glob("*.py")):
    text = path.read_text()
    assert "_ParamsPlaceholder" not in text, path.name
    assert not re.search(r"(?<![\w.])optax\.(\w+\.)*_\w", text), path.name


@pytest.mark.parametrize("keep_stats", [False, True])
def test_tree_map_params_with_a_label_tree(keep_stats):
  # tree_map_params initialises with a stand-in without arrays, which no label tree matches.
  for tx in (lo.scale_by_layerwise_lr(layers={"Dense_0": "a", "Dense_1": "b"},
                                      keep_stats=keep_stats),
             lo.adagrad(0.1, layers={"Dense_0": "a", "Dense_1": "a"}, keep_stats=keep_stats)):
    _, state = tx.update(_grads(PARAMS, 1), tx.init(PARAMS), PARAMS)
    mapped = optax.tree_utils.tree_map_params(tx, lambda p: p, state,
                                             transform_non_params=lambda _: 0)
    assert jax.tree.structure(mapped) == jax.tree.structure(state)
  with pytest.raises(ValueError, match="label tree does not match"):
    lo.scale_by_layerwise_lr(layers={"Dense_0": "a"}, keep_stats=keep_stats).init(
        {"other": jnp.ones(2)})
