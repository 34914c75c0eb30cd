"""What counts as a layer: module, array, labels, callables, stacked layers, odd leaves."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import layerwise_optax as lo
from tests import reference


def _update(tree, **kwargs):
  tx = lo.scale_by_layerwise_lr(**kwargs)
  return tx.update(tree, tx.init(tree))[0]


def test_leaves_directly_under_root_are_one_layer_each():
  grads = [jnp.array([3.0]), jnp.array([4.0])]
  out = _update(grads)
  np.testing.assert_allclose(out[0], 3.0 * reference.factor(3.0), rtol=1e-6)
  np.testing.assert_allclose(out[1], 4.0 * reference.factor(4.0), rtol=1e-6)
  assert list(lo.layer_factors(grads)) == ["0", "1"]
  assert list(lo.layer_factors(jnp.array([3.0, 4.0]))) == ["<root>"]
  np.testing.assert_allclose(_update(jnp.array([3.0, 4.0])),
                             np.array([3.0, 4.0]) * reference.factor(5.0), rtol=1e-6)


def test_label_tree_groups_across_modules():
  grads = {"a": {"w": jnp.array([3.0])}, "b": {"w": jnp.array([4.0])}, "c": {"w": jnp.ones(1)}}
  labels = {"a": "x", "b": "x", "c": "y"}  # a prefix of the gradient tree
  out = _update(grads, layers=labels)
  np.testing.assert_allclose(out["a"]["w"], 3.0 * reference.factor(5.0), rtol=1e-6)
  np.testing.assert_allclose(out["b"]["w"], 4.0 * reference.factor(5.0), rtol=1e-6)
  np.testing.assert_allclose(out["c"]["w"], reference.factor(1.0), rtol=1e-6)
  assert set(lo.layer_factors(grads, layers=labels)) == {"x", "y"}


def test_callable_label_of_path():
  grads = {"enc": {"w": jnp.array([3.0])}, "dec": {"w": jnp.array([4.0])}}
  one_group = _update(grads, layers=lambda path, leaf: "all")
  np.testing.assert_allclose(one_group["enc"]["w"], 3.0 * reference.factor(5.0), rtol=1e-6)
  by_top = _update(grads, layers=lambda path, leaf: path[0].key)
  np.testing.assert_allclose(by_top["enc"]["w"], 3.0 * reference.factor(3.0), rtol=1e-6)


def test_stacked_layers_get_one_factor_per_slice():
  kernel = jnp.stack([jnp.array([3.0, 4.0]), jnp.array([0.3, 0.4])])  # 2 scanned layers
  bias = jnp.zeros((2, 1))
  grads = {"ScanBlock": {"Dense_0": {"kernel": kernel, "bias": bias}},
           "Head": {"kernel": jnp.array([1.0])}}
  out = _update(grads, stacked="ScanBlock")
  np.testing.assert_allclose(out["ScanBlock"]["Dense_0"]["kernel"][0],
                             kernel[0] * reference.factor(5.0), rtol=1e-6)
  np.testing.assert_allclose(out["ScanBlock"]["Dense_0"]["kernel"][1],
                             kernel[1] * reference.factor(0.5), rtol=1e-6)
  stats = lo.layer_factors(grads, stacked=lambda name: name.startswith("ScanBlock"))
  np.testing.assert_allclose(stats["ScanBlock/Dense_0"].norm, [5.0, 0.5], rtol=1e-6)
  # Unstacked, the whole stack is one layer.
  flat = _update(grads)
  np.testing.assert_allclose(flat["ScanBlock"]["Dense_0"]["kernel"][1],
                             kernel[1] * reference.factor(np.sqrt(25.25)), rtol=1e-6)


def test_stacked_flax_linen_scan_gets_one_factor_per_scanned_layer():
  nn = pytest.importorskip("flax.linen")

  class Block(nn.Module):
    @nn.compact
    def __call__(self, x, _):
      return nn.tanh(nn.Dense(4)(x)), None

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      scanned = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True},
                        length=3)
      x, _ = scanned(name="blocks")(x, None)
      return x

  params = Net().init(jax.random.key(0), jnp.ones((2, 4)))
  assert params["params"]["blocks"]["Dense_0"]["kernel"].shape == (3, 4, 4)
  stats = lo.layer_factors(params, stacked="params/blocks")
  kernel = params["params"]["blocks"]["Dense_0"]["kernel"]
  bias = params["params"]["blocks"]["Dense_0"]["bias"]
  norms = np.sqrt(np.sum(np.square(kernel), axis=(1, 2)) + np.sum(np.square(bias), axis=1))
  np.testing.assert_allclose(stats["params/blocks/Dense_0"].norm, norms, rtol=1e-5)
  out = _update(params, stacked="params/blocks")
  np.testing.assert_allclose(out["params"]["blocks"]["Dense_0"]["kernel"][2],
                             kernel[2] * reference.factor(norms[2]), rtol=1e-5)


def test_stacked_prefix_matches_whole_path_components_only():
  grads = {"layers_1": {"w": jnp.ones((2, 2))}, "layers_10": {"w": jnp.ones((3, 2))}}
  stats = lo.layer_factors(grads, stacked="layers_1")
  assert stats["layers_1"].norm.shape == (2,)
  assert stats["layers_10"].norm.shape == ()


def test_stacked_layer_with_mismatched_leading_axis_is_an_error():
  grads = {"Scan": {"a": jnp.ones((2, 3)), "b": jnp.ones((3,))}}
  with pytest.raises(ValueError, match="leading"):
    lo.scale_by_layerwise_lr(stacked="Scan").init(grads)


def test_none_and_masked_nodes_pass_through():
  grads = {"a": {"w": jnp.array([3.0, 4.0]), "frozen": None}, "b": None}
  out = _update(grads)
  assert out["a"]["frozen"] is None and out["b"] is None
  np.testing.assert_allclose(out["a"]["w"], np.array([3.0, 4.0]) * reference.factor(5.0),
                             rtol=1e-6)

  params = {"a": {"w": jnp.array([3.0, 4.0])}, "b": {"w": jnp.ones(2)}}
  tx = optax.masked(lo.scale_by_layerwise_lr(), {"a": True, "b": False})
  updates, _ = tx.update(params, tx.init(params))
  np.testing.assert_allclose(updates["a"]["w"], params["a"]["w"] * reference.factor(5.0), rtol=1e-6)
  np.testing.assert_array_equal(updates["b"]["w"], params["b"]["w"])


def test_empty_trees_and_scalar_leaves():
  assert _update({}) == {}
  assert _update(None) is None
  out = _update({"scale": jnp.array(2.0), "py": 0.5})
  np.testing.assert_allclose(out["scale"], 2.0 * reference.factor(2.0), rtol=1e-6)
  np.testing.assert_allclose(out["py"], 0.5 * reference.factor(0.5), rtol=1e-6)


def test_nnx_variables_at_init_and_arrays_at_update_group_alike():
  nnx = pytest.importorskip("flax.nnx")
  class Net(nnx.Module):
    def __init__(self, rngs):
      self.l1 = nnx.Linear(3, 4, rngs=rngs)

  state = nnx.state(Net(nnx.Rngs(0)), nnx.Param)
  arrays = jax.tree.map(lambda v: v, nnx.to_pure_dict(state))
  with_variables = lo.make_plan(state)
  with_arrays = lo.make_plan(arrays)
  assert with_variables == with_arrays
  assert with_variables.names == ("l1",)


def test_unknown_grouping_and_bad_label_trees_raise():
  with pytest.raises(ValueError, match="not a known grouping"):
    lo.scale_by_layerwise_lr(layers="layer")
  with pytest.raises(ValueError, match="not a known grouping"):
    lo.sgd(0.1, layers="modules")
  params = {"a": {"w": jnp.ones(2)}, "b": {"w": jnp.ones(2)}}
  with pytest.raises(ValueError, match="label tree does not match"):
    lo.scale_by_layerwise_lr(layers={"a": "x"}).init(params)
  with pytest.raises(ValueError, match="label tree does not match"):
    lo.with_layerwise_lr(optax.adagrad(0.1), layers={"a": "x", "c": "y"}).init(params)
  with pytest.raises(ValueError, match="prefixes"):
    lo.scale_by_layerwise_lr(stacked=[1])


def test_stacked_prefix_that_matches_no_layer_raises_naming_the_layers():
  grads = {"params": {"blocks": {"Dense_0": {"kernel": jnp.ones((3, 2))}},
                      "head": {"kernel": jnp.ones(2)}}}
  message = ("stacked prefix 'params/block' matches no layer; the layers are "
             "'params/blocks/Dense_0', 'params/head'.")
  for tx in (lo.scale_by_layerwise_lr(stacked="params/block"),
             lo.with_layerwise_lr(optax.adam(0.1), stacked=["params/head", "params/block"]),
             lo.sgd(0.1, stacked="params/block"), lo.adagrad(0.1, stacked="params/block")):
    with pytest.raises(ValueError) as raised:
      tx.init(grads)
    assert str(raised.value) == message
  with pytest.raises(ValueError, match="^stacked prefix 'blocks' matches no layer"):
    lo.layer_factors(grads, stacked="blocks")
  # Whole path components only: "params/blocks/Dense" is not a prefix of ".../Dense_0".
  with pytest.raises(ValueError, match="matches no layer"):
    lo.layer_factors(grads, stacked="params/blocks/Dense")
  stats = lo.layer_factors(grads, stacked="params/blocks")
  assert stats["params/blocks/Dense_0"].norm.shape == (3,)
  # A predicate is the caller's to check; an empty tree has no layer to match.
  assert lo.layer_factors(grads, stacked=lambda name: False)["params/head"].norm.shape == ()
  assert lo.layer_factors({}, stacked="blocks") == {}


def test_stacked_prefix_error_lists_at_most_twelve_layers():
  grads = {f"layer{i:02d}": {"w": jnp.ones(1)} for i in range(15)}
  with pytest.raises(ValueError) as raised:
    lo.make_plan(grads, stacked="blocks")
  text = str(raised.value)
  assert "\n" not in text
  assert text.endswith("'layer10', 'layer11', ... (3 more).")
