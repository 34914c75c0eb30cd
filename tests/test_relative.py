"""The layer-relative ablation (experiments/relative.py): r_l = f_l / mean_k f_k, with
f_l = 1 + ln(1 + 1/||g_l||) (Singh et al. 2015, eq. 9), in both placements, and the
harness's "+relative" methods."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import configs, methods, relative

# Two layers with gradient norms 5 and 1.
GRADS = {"a": {"w": jnp.array([3.0, 4.0])}, "b": {"w": jnp.array([0.6]), "bias": jnp.array([0.8])}}
F_A, F_B = 1 + math.log(1.2), 1 + math.log(2.0)
R_A, R_B = F_A / ((F_A + F_B) / 2), F_B / ((F_A + F_B) / 2)
# Two steps: GRADS, then a tenth of it (norms 0.5 and 0.1), each with its relative factors.
F2 = np.array([1 + math.log(3.0), 1 + math.log(11.0)])
TWO_STEPS = ((GRADS, (R_A, R_B)), (jax.tree.map(lambda g: 0.1 * g, GRADS), F2 / F2.mean()))


def test_two_layers_closed_form():
  factors = relative.relative_factors(GRADS)
  assert float(factors["a"]) == pytest.approx(R_A, rel=1e-6)
  assert float(factors["b"]) == pytest.approx(R_B, rel=1e-6)
  assert R_A == pytest.approx(0.82235, abs=1e-5) and R_B == pytest.approx(1.17765, abs=1e-5)


def test_stacked_slices_count_as_layers():
  # blocks: slices of norm 5 and 1; head: norm 0.5 (factor 1 + ln 3).
  grads = {"blocks": {"kernel": jnp.array([[3.0, 4.0], [0.6, 0.8]])},
           "head": {"kernel": jnp.array([0.3, 0.4])}}
  f = np.array([F_A, F_B, 1 + math.log(3.0)])
  expected = f / f.mean()
  factors = relative.relative_factors(grads, stacked="blocks")
  np.testing.assert_allclose(factors["blocks"], expected[:2], rtol=1e-6)
  np.testing.assert_allclose(factors["head"], expected[2], rtol=1e-6)
  updates, _ = relative.scale_by_relative_layerwise_lr(stacked="blocks").update(grads, None)
  np.testing.assert_allclose(updates["blocks"]["kernel"],
                             grads["blocks"]["kernel"] * expected[:2, None], rtol=1e-6)


def test_applied_factors_average_one():
  keys = jax.random.split(jax.random.key(0), 4)
  grads = {f"layer{i}": {"w": 10.0 ** (i - 2) * jax.random.normal(k, (3, 5))}
           for i, k in enumerate(keys)}
  tx = relative.scale_by_relative_layerwise_lr(layers="module")
  updates, _ = tx.update(grads, tx.init(grads))
  ratios = [float(jnp.mean(updates[n]["w"] / grads[n]["w"])) for n in grads]
  assert np.mean(ratios) == pytest.approx(1.0, rel=1e-6)
  assert max(ratios) / min(ratios) > 2  # the small-gradient layers get the larger share


def test_chained_before_sgd_is_momentum_on_relative_gradients():
  lr, mu = 0.1, 0.9
  tx = optax.chain(relative.scale_by_relative_layerwise_lr(), optax.sgd(lr, momentum=mu))
  params = jax.tree.map(jnp.zeros_like, GRADS)
  state = tx.init(params)
  history = {"a": 0.0, "b": 0.0}
  for grads, (ra, rb) in TWO_STEPS:
    updates, state = tx.update(grads, state, params)
    for layer, r in (("a", ra), ("b", rb)):
      history[layer] = mu * history[layer] + r * np.asarray(grads[layer]["w"])
      np.testing.assert_allclose(updates[layer]["w"], -lr * history[layer], rtol=1e-6)


def test_wrapped_adagrad_scales_the_step_of_raw_history():
  lr, eps = 0.5, 1e-16
  tx = relative.with_relative_layerwise_lr(
      optax.adagrad(lr, initial_accumulator_value=0.0, eps=eps))
  params = jax.tree.map(jnp.zeros_like, GRADS)
  state = tx.init(params)
  history = {"a": 0.0, "bias": 0.0}
  for grads, (ra, rb) in TWO_STEPS:
    updates, state = tx.update(grads, state, params)
    g_a, g_bias = np.asarray(grads["a"]["w"]), np.asarray(grads["b"]["bias"])
    history["a"] = history["a"] + g_a ** 2
    history["bias"] = history["bias"] + g_bias ** 2
    np.testing.assert_allclose(updates["a"]["w"], -lr * ra * g_a / np.sqrt(history["a"]),
                               rtol=1e-6)
    np.testing.assert_allclose(updates["b"]["bias"],
                               -lr * rb * g_bias / np.sqrt(history["bias"]), rtol=1e-6)


def test_harness_relative_methods():
  assert methods.method_suffix("nag+relative") == ("nag", "relative")
  assert methods.split_method("adam+relative") == ("adam", True)
  with pytest.raises(ValueError, match=r"optionally with \+layer$"):
    methods.split_method("gd+relative", ("gd", "sgd"))
  solver = configs.Solver(0.1, configs.Schedule("fixed"), 0.9, 0.0)
  params = jax.tree.map(jnp.zeros_like, GRADS)
  ones = jax.tree.map(lambda _: 1.0, GRADS)
  for method in ("sgd+relative", "adagrad+relative"):
    tx = methods.make_optimizer(method, solver, ones, ones)
    updates, _ = tx.update(GRADS, tx.init(params), params)
    # First step: SGD moves by lr r g, AdaGrad by lr r sign(g).
    step_a = GRADS["a"]["w"] if method.startswith("sgd") else jnp.ones(2)
    np.testing.assert_allclose(updates["a"]["w"], -0.1 * R_A * step_a, rtol=1e-6)
