"""Property tests over random trees, dtypes and magnitudes (0 to 1e30)."""

import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import example, given, settings
from hypothesis import strategies as st

import layerwise_optax as lo

# The largest factor float32 arithmetic can produce: the smallest positive sum of squares.
MAX_FACTOR = 1 + np.log1p(1 / np.sqrt(np.finfo(np.float32).smallest_subnormal))

DTYPES = [np.float16, jnp.bfloat16, np.float32]


@st.composite
def trees(draw):
  n_layers = draw(st.integers(1, 4))
  tree = {}
  for i in range(n_layers):
    dtype = draw(st.sampled_from(DTYPES))
    exponent = draw(st.floats(-30, 30))
    zero = draw(st.booleans())
    size = draw(st.integers(1, 6))
    values = draw(st.lists(st.floats(-1, 1), min_size=size, max_size=size))
    arr = np.zeros(size) if zero else np.asarray(values) * 10.0 ** exponent
    arr = np.clip(arr, -float(jnp.finfo(dtype).max), float(jnp.finfo(dtype).max))
    tree[f"layer{i}"] = {"w": jnp.asarray(arr, dtype)}
  return tree


# Subnormal float32 input (found by hypothesis in CI): XLA flushes it to zero on CPU and GPU.
SUBNORMAL = {"layer0": {"w": jnp.asarray([1e-45], jnp.float32)}}


@settings(max_examples=60, deadline=None, derandomize=True)
@given(trees())
@example(SUBNORMAL)
def test_finite_in_finite_out_bounded_factor_zero_preserved(tree):
  tx = lo.scale_by_layerwise_lr()
  out, _ = tx.update(tree, tx.init(tree))
  stats = lo.layer_factors(tree)
  for name, layer in tree.items():
    g = np.asarray(layer["w"], np.float64)
    u = np.asarray(out[name]["w"], np.float64)
    assert out[name]["w"].dtype == layer["w"].dtype
    assert np.all(np.isfinite(u))
    factor = float(stats[name].factor)
    assert 1.0 <= factor <= MAX_FACTOR
    np.testing.assert_array_equal(u[g == 0], 0.0)  # zero in, zero out
    # A factor >= 1 never flips or kills a step, except that XLA flushes float32 subnormals
    # (below 1.2e-38; float16's are normal once upcast) to zero, as in optax's own arithmetic.
    normal = np.abs(g) >= np.finfo(np.float32).tiny
    assert np.all(np.sign(u[normal]) == np.sign(g[normal]))
    assert np.all(u[~normal] * g[~normal] >= 0)
    big = np.abs(g) > 1e-30
    ratio = np.abs(u[big]) / np.abs(g[big])
    assert np.all(ratio <= MAX_FACTOR * 1.01) and np.all(ratio >= 0.99)


def test_subnormal_gradients_are_flushed_like_optax():
  g = {"w": jnp.asarray([1e-45, -1e-39, 2e-38, 3.0], jnp.float32)}
  ours = lo.sgd(1.0)
  theirs = optax.sgd(1.0)
  u_ours, _ = ours.update(g, ours.init(g))
  u_theirs, _ = theirs.update(g, theirs.init(g))
  flushed = np.asarray(u_theirs["w"]) == 0
  np.testing.assert_array_equal(flushed, [True, True, False, False])
  np.testing.assert_array_equal(np.asarray(u_ours["w"])[flushed], 0.0)
  assert np.all(np.isfinite(np.asarray(u_ours["w"])))
