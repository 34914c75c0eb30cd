"""The factor of eq. 9 in closed form, its numerics, and the transformation's guarantees."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import layerwise_optax as lo
from tests import reference

try:  # jax >= 0.8; the floor (0.5.3) has it under jax.experimental
  from jax import enable_x64
except ImportError:
  from jax.experimental import enable_x64


def _apply(tree, **kwargs):
  tx = lo.scale_by_layerwise_lr(**kwargs)
  updates, state = tx.update(tree, tx.init(tree))
  assert isinstance(state, optax.EmptyState)
  return updates


@pytest.mark.parametrize("jit", [False, True])
def test_closed_form_three_four(jit):
  tx = lo.scale_by_layerwise_lr()
  update = jax.jit(tx.update) if jit else tx.update
  g = {"layer": {"w": jnp.array([3.0, 4.0])}}
  out, _ = update(g, tx.init(g))
  f = reference.factor(5.0)  # ||[3,4]|| = 5
  np.testing.assert_allclose(out["layer"]["w"], [3.0 * f, 4.0 * f], rtol=1e-6)


@pytest.mark.parametrize("norm,expected", [(5.0, 1.1823), (1.0, 1.6931), (1e-2, 5.6151),
                                           (1e-3, 7.9088), (1e-8, 19.4207)])
def test_factor_values_in_closed_form(norm, expected):
  g = {"w": jnp.array([norm], jnp.float32)}
  f = lo.layer_factors(g)["w"].factor
  np.testing.assert_allclose(f, expected, rtol=1e-4)


def test_module_vs_array_grouping_on_kernel_and_bias():
  kernel = jnp.array([[3.0, 0.0], [0.0, 0.0]])  # ||kernel|| = 3
  bias = jnp.array([4.0, 0.0])  # ||bias|| = 4, ||layer|| = 5
  grads = {"Dense_0": {"kernel": kernel, "bias": bias}}
  by_module = _apply(grads, layers="module")
  by_array = _apply(grads, layers="array")
  layer, kernel_only, bias_only = (reference.factor(norm) for norm in (5.0, 3.0, 4.0))
  np.testing.assert_allclose(by_module["Dense_0"]["kernel"], kernel * layer, rtol=1e-6)
  np.testing.assert_allclose(by_module["Dense_0"]["bias"], bias * layer, rtol=1e-6)
  np.testing.assert_allclose(by_array["Dense_0"]["kernel"], kernel * kernel_only, rtol=1e-6)
  np.testing.assert_allclose(by_array["Dense_0"]["bias"], bias * bias_only, rtol=1e-6)


def test_layer_factors_reports_norm_and_factor_by_name():
  grads = {"params": {"Conv_0": {"kernel": jnp.full((2, 2), 0.5), "bias": jnp.zeros(2)},
                      "Dense_0": {"kernel": jnp.array([0.3, 0.4])}}}
  out = lo.layer_factors(grads)
  assert set(out) == {"params/Conv_0", "params/Dense_0"}
  np.testing.assert_allclose(out["params/Conv_0"].norm, 1.0, rtol=1e-6)
  np.testing.assert_allclose(out["params/Conv_0"].factor, reference.factor(1.0), rtol=1e-6)
  np.testing.assert_allclose(out["params/Dense_0"].factor, reference.factor(0.5), rtol=1e-6)
  per_array = lo.layer_factors(grads, layers="array")
  assert "params/Conv_0/kernel" in per_array and "params/Conv_0/bias" in per_array


def test_norm_eps_bounds_the_factor():
  g = {"w": jnp.array([1e-12])}
  f = lo.layer_factors(g, norm_eps=0.1)["w"].factor
  np.testing.assert_allclose(f, reference.factor(1e-12 + 0.1), rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
def test_low_precision_leaves_use_float32_norms_and_keep_dtype(dtype):
  # 4096 entries of 100: ||g|| = 6400; sum of squares 4.1e7 overflows float16 (max 65504).
  g = {"w": jnp.full((4096,), 100.0, dtype)}
  out = _apply(g)
  assert out["w"].dtype == dtype
  factor = reference.factor(6400.0)
  np.testing.assert_allclose(np.asarray(out["w"], np.float32), 100.0 * factor, rtol=1e-2)
  assert np.all(np.isfinite(np.asarray(out["w"], np.float32)))
  np.testing.assert_allclose(lo.layer_factors(g)["w"].norm, 6400.0, rtol=1e-5)
  assert lo.layer_factors(g)["w"].factor.dtype == jnp.float32


def test_float64_leaves_use_float64():
  with enable_x64(True):
    g = {"w": jnp.array([1e-100, 0.0], jnp.float64)}  # squares underflow in float32
    stats = lo.layer_factors(g)["w"]
    assert stats.factor.dtype == jnp.float64
    np.testing.assert_allclose(stats.factor, reference.factor(1e-100), rtol=1e-12)
    out = _apply(g)
    assert out["w"].dtype == jnp.float64


def test_complex_leaves_square_the_modulus():
  g = {"w": jnp.array([3.0 + 4.0j], jnp.complex64)}  # |g| = 5
  out = _apply(g)
  assert out["w"].dtype == jnp.complex64
  np.testing.assert_allclose(out["w"], (3.0 + 4.0j) * reference.factor(5.0), rtol=1e-6)


def test_all_zero_layer_gives_zero_update_not_nan():
  g = {"a": {"w": jnp.zeros((3, 3))}, "b": {"w": jnp.array([3.0, 4.0])}}
  out = _apply(g)
  np.testing.assert_array_equal(out["a"]["w"], 0.0)
  np.testing.assert_allclose(out["b"]["w"], np.array([3.0, 4.0]) * reference.factor(5.0),
                             rtol=1e-6)
  assert lo.layer_factors(g)["a"].factor == 1.0  # documented neutral factor


def test_gradients_through_the_transformation_are_finite():
  tx = lo.scale_by_layerwise_lr()

  def loss(x):
    u, _ = tx.update({"a": x, "b": jnp.zeros(3)}, optax.EmptyState())
    return jnp.sum(u["a"]) + jnp.sum(u["b"])

  for x in (jnp.zeros(3), jnp.array([1e-3, 0.0, 2e-3]), jnp.array([3.0, 4.0, 0.0])):
    grad = jax.grad(loss)(x)
    assert np.all(np.isfinite(grad)), grad
  # d/dx of sum(x * f(||x||)) at x = [3, 4, 0]: f + (x.1) f'(n) x/n, f'(n) = -1/(n^2 + n).
  x = np.array([3.0, 4.0, 0.0])
  n = 5.0
  expected = reference.factor(n) + x.sum() * (-1 / (n * n + n)) * x / n
  np.testing.assert_allclose(jax.grad(loss)(jnp.asarray(x, jnp.float32)), expected, rtol=1e-5)


def test_nan_and_inf_stay_visible_for_apply_if_finite():
  g = {"a": {"w": jnp.array([1.0, jnp.nan])}, "b": {"w": jnp.array([jnp.inf, 1.0])}}
  out = _apply(g)
  assert np.isnan(out["a"]["w"][1]) and np.isinf(out["b"]["w"][0])
  tx = optax.apply_if_finite(optax.chain(lo.scale_by_layerwise_lr(), optax.sgd(0.1)), 3)
  params = {"a": {"w": jnp.ones(2)}, "b": {"w": jnp.ones(2)}}
  state = tx.init(params)
  updates, state = tx.update(g, state, params)
  assert int(state.notfinite_count) == 1
  np.testing.assert_array_equal(updates["a"]["w"], 0.0)  # the step was skipped


def test_overflowing_sum_of_squares_gives_factor_one():
  g = {"w": jnp.array([1e30, 1e30], jnp.float32)}  # squares overflow float32
  out = _apply(g)
  np.testing.assert_allclose(out["w"], [1e30, 1e30], rtol=1e-6)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_invalid_norm_eps_is_rejected_at_construction(bad):
  with pytest.raises(ValueError, match="norm_eps"):
    lo.scale_by_layerwise_lr(norm_eps=bad)
  with pytest.raises(ValueError, match="norm_eps"):
    lo.with_layerwise_lr(optax.adagrad(0.1), norm_eps=bad)
