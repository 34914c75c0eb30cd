"""Property tests over random trees, dtypes and magnitudes (0 to 1e30)."""

import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
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


@settings(max_examples=60, deadline=None)
@given(trees())
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
    assert np.all(np.sign(u) == np.sign(g))  # a factor >= 1 never flips or kills a step
    big = np.abs(g) > 1e-30
    ratio = np.abs(u[big]) / np.abs(g[big])
    assert np.all(ratio <= MAX_FACTOR * 1.01) and np.all(ratio >= 0.99)
